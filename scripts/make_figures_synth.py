"""Write images/embedded_samples.png: a grid of embedded-dataset samples with their annotations.

Skeleton edges of the person's left side are orange, right side blue, centre green; visible
keypoints are filled, occluded ones (v=1) hollow, unlabelled ones (v=0) absent; the dashed box is
the annotation ``bbox``.

    python scripts/make_figures_synth.py [--difficulty 0.5] [--out images/embedded_samples.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from posekd_lib.data.keypoints import COCO_KEYPOINTS, COCO_SKELETON  # noqa: E402
from posekd_lib.data.synth import render_sample  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _side_colour(name: str) -> str:
    return "tab:orange" if name.startswith("left") else "tab:blue" if name.startswith("right") else "tab:green"


def draw_annotations(ax, anns: list[dict]):
    """Skeletons, keypoints and boxes of COCO annotations on a matplotlib axis."""
    for ann in anns:
        k = np.asarray(ann["keypoints"], float).reshape(-1, 3)
        x, y, w, h = ann["bbox"]
        ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ls="--", lw=0.6, ec="white", alpha=0.7))
        for a, b in COCO_SKELETON:
            if k[a, 2] > 0 and k[b, 2] > 0:
                name = COCO_KEYPOINTS[a] if COCO_KEYPOINTS[a][:4] in ("left", "righ") else COCO_KEYPOINTS[b]
                ls = "-" if k[a, 2] == 2 and k[b, 2] == 2 else ":"
                ax.plot(k[[a, b], 0], k[[a, b], 1], ls, color=_side_colour(name), lw=1.2)
        for (px, py, v), name in zip(k, COCO_KEYPOINTS):
            if v > 0:
                c = _side_colour(name)
                ax.plot(px, py, "o", ms=3.2, mew=0.9, mec=c, mfc=c if v == 2 else "none")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--cols", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "images" / "embedded_samples.png")
    args = ap.parse_args(argv)

    fig, axes = plt.subplots(args.rows, args.cols, figsize=(3.2 * args.cols, 2.4 * args.rows + 0.3))
    for i, ax in enumerate(np.ravel(axes)):
        img, anns, _ = render_sample(args.seed + i, difficulty=args.difficulty)
        ax.imshow(img)
        draw_annotations(ax, anns)
        ax.set_xlim(0, img.shape[1])
        ax.set_ylim(img.shape[0], 0)
        ax.set_axis_off()
        ax.set_title(f"seed {args.seed + i}: {len(anns)} persons, "
                     f"{sum(a['num_keypoints'] for a in anns)} kps", fontsize=7)
    fig.suptitle(f"Embedded synthetic COCO-17 samples (difficulty {args.difficulty}): filled = visible, "
                 "hollow = occluded, orange = left, blue = right", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
