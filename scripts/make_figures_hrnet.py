"""Draw images/hrnet_<config>.png: HRNet's parallel branches, read from the built network.

Used by notebook 02. Run: ``python scripts/make_figures_hrnet.py [--config w16_128x96] [--out PATH]``.
The figure is measured, not drawn by hand: the network is built from its config (``hrnet_pose``), one
zero crop goes through ``forward_features``, and every box is labelled with the channels and size
of the tensor that part really outputs, every stage with its modules and parameters.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyBboxPatch

from hrnet_pose import get_pose_net, load_configs

REPO = Path(__file__).resolve().parent.parent
BRANCH_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a")


def measure(config: str) -> dict:
    """Shapes and parameter counts of every part of the HRNet ``config`` (one zero crop)."""
    cfg = load_configs(config)
    net = get_pose_net(cfg).eval()
    w, h = (int(v) for v in cfg.MODEL.IMAGE_SIZE)
    inputs = {}
    for n in (2, 3, 4):                    # what each stage's branches carry (the last one outputs one)
        getattr(net, f"stage{n}").register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0]))
    with torch.no_grad():
        feats = net.forward_features(torch.zeros(1, 3, h, w))
    params = {name: sum(p.numel() for p in child.parameters()) for name, child in net.named_children()}
    stages = {n: cfg.MODEL.EXTRA[f"STAGE{n}"]["NUM_MODULES"] for n in (2, 3, 4)}
    return {"input": (3, h, w), "feats": {k: [tuple(t.shape[1:]) for t in (v if isinstance(v, list) else [v])]
                                          for k, v in feats.items()},
            "branches": {n: [tuple(t.shape[1:]) for t in xs] for n, xs in inputs.items()},
            "params": params, "modules": stages, "total": sum(params.values())}


def make_figure(config: str):
    m = measure(config)
    fig, ax = plt.subplots(figsize=(12.5, 4.6))
    row_y = lambda b: 3.2 - 1.05 * b          # noqa: E731: branch b's row, high resolution on top
    x = 0.0

    def box(x0, b, text, width=0.8, color=None):
        ax.add_patch(FancyBboxPatch((x0, row_y(b) - 0.32), width, 0.64, boxstyle="round,pad=0.02",
                                    fc=color or BRANCH_COLORS[b], ec="none", alpha=0.85))
        ax.text(x0 + width / 2, row_y(b), text, ha="center", va="center", fontsize=7.5, color="white")

    def shape(s):
        return f"{s[0]}×{s[1]}×{s[2]}"

    box(x, 0, f"crop\n{shape(m['input'])}", 0.9, "0.45")
    x += 1.2
    box(x, 0, f"stem\n2 conv s2\n{shape(m['feats']['stem'][0])}", 0.95, "0.3")
    x += 1.25
    box(x, 0, f"layer1\n4 bottlenecks\n{shape(m['feats']['layer1'][0])}", 1.05)
    ax.annotate("", (x - 0.05, row_y(0)), (x - 0.3, row_y(0)), arrowprops=dict(arrowstyle="->", lw=1))
    x += 1.4
    prev_end, prev_rows = x - 0.35, 1
    for n in (2, 3, 4):
        shapes = m["branches"][n]
        x_start = x
        for b in range(n):                       # the transition: a new, lower branch from the lowest
            src = min(b, prev_rows - 1)
            ax.annotate("", (x, row_y(b)), (prev_end, row_y(src)),
                        arrowprops=dict(arrowstyle="->", lw=1, color="0.35", ls="-" if b < prev_rows else "--"))
        for k in range(m["modules"][n]):
            for b in range(n):
                box(x, b, "4 basic" if k else "4 basic\nblocks", 0.62)
            last = n == 4 and k == m["modules"][n] - 1    # the very last exchange feeds the 1/4 branch only
            for b in range(n):                             # the exchange unit after every module
                for c in ((0,) if last else range(n)):
                    if b != c:
                        ax.plot([x + 0.62, x + 0.86], [row_y(b), row_y(c)], color="0.65", lw=0.6)
            x += 0.88
        for b, s in enumerate(shapes):
            ax.text(x_start + (x - x_start) / 2 - 0.13, row_y(b) + 0.45, shape(s), ha="center", fontsize=7.5,
                    color=BRANCH_COLORS[b])
        label = (f"stage{n}: {m['modules'][n]} module{'s' if m['modules'][n] > 1 else ''}, {n} branches\n"
                 f"{(m['params'][f'stage{n}'] + m['params'][f'transition{n - 1}']) / 1e6:.2f} M parameters")
        ax.text(x_start + (x - x_start) / 2 - 0.13, row_y(3) - 0.75, label, ha="center", fontsize=8)
        prev_end, prev_rows = x - 0.26, n
        x += 0.35
    box(x, 0, f"1×1 conv\n{shape(m['feats']['heatmaps'][0])}\nheatmaps", 1.05, "0.3")
    ax.annotate("", (x, row_y(0)), (prev_end, row_y(0)), arrowprops=dict(arrowstyle="->", lw=1))
    for b in range(4):
        ax.text(-0.25, row_y(b), f"1/{4 * 2 ** b}", ha="right", va="center", fontsize=8, color=BRANCH_COLORS[b])
    ax.set_xlim(-0.9, x + 1.2)
    ax.set_ylim(row_y(3) - 1.1, row_y(0) + 0.8)
    ax.set_axis_off()
    ax.set_title(f"HRNet {config}: {m['total'] / 1e6:.2f} M parameters. Branches at 1/4 … 1/32 of the crop run in "
                 "parallel; grey lines: the exchange after every module (each branch gets the sum of all)",
                 fontsize=9.5)
    fig.tight_layout()
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="w16_128x96")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or REPO / "images" / f"hrnet_{args.config}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_figure(args.config).savefig(out, dpi=120, bbox_inches="tight", facecolor="white",
                                     metadata={"Software": None})  # no version stamp: reproducible
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
