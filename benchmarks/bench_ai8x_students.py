"""MAX78000 pose students: size, MACs, MAX78000 resources (izer's rules) and CPU speed of the
float model, per variant (plus a 50 % channel-pruned tiny); prints a table, asserts nothing.

    python benchmarks/bench_ai8x_students.py [--batch 8] [--threads 1] [--repeat 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from posekd_lib.mcu import ai8x, max78000, pruning
from posekd_lib.models import ai8x_models as am


def conv_macs(model, input_shape) -> int:
    """Multiply-accumulates of the ai8x layers, counted as izer does: output pixels x C_in x
    C_out x k^2 (transposed convolutions over their zero-stuffed output too)."""
    total = 0
    hooks = []

    def hook(m, args, out):
        nonlocal total
        if m.op is not None:
            k = 1 if isinstance(m.op, torch.nn.Linear) else m.op.kernel_size[0] ** 2
            total += out[0].numel() // out.shape[1] * m.op.in_channels * m.op.out_channels * k \
                if out.dim() == 4 else m.op.in_features * m.op.out_features

    for _, m in ai8x.ai8x_layers(model):
        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    return total


def img_per_s(model, x, repeat: int) -> float:
    with torch.no_grad():
        model(x)
        t = time.perf_counter()
        for _ in range(repeat):
            model(x)
    return repeat * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = am.input_shape(am.AI8X_STUDENT_INPUT)
    models = {v: am.ai85posenet(v) for v in am.VARIANTS}
    models["tiny, 50% channels pruned"] = pruning.prune_channels(models["tiny"], shape, 0.5)
    cap = max78000.limits(85)
    print(f"input {shape[0]}x{shape[1]}x{shape[2]} ({am.AI8X_DATA_FORMAT} first layer), "
          f"{args.threads} thread(s), batch {args.batch}\n")
    cols = ["variant", "params", "MACs", "weight bytes", "of 442,368", "bias bytes",
            "max data/instance", "latency ms", "fits", "CPU img/s"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    x = torch.rand(args.batch, *shape) * 2 - 1
    for name, m in models.items():
        r = max78000.resource_report(m, shape, data_format=am.AI8X_DATA_FORMAT)
        t = r.totals
        params = sum(p.numel() for p in m.parameters() if p.requires_grad)
        row = [name, f"{params:,}", f"{conv_macs(m, shape) / 1e6:.1f}M", f"{t['weight_bytes']:,}",
               f"{100 * t['weight_bytes'] / cap.weight_memory_bytes:.1f}%", f"{t['bias_bytes']:,}",
               f"{t['max_data_bytes']:,}", f"{t['cycles'] / cap.cnn_clock_hz * 1e3:.2f}",
               "yes" if r.fits else "NO", f"{img_per_s(m.eval(), x, args.repeat):.0f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
