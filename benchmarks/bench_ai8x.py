"""Time the ai8x emulation of the golden AI85PoseLike net (float / QAT / simulate forward,
QAT training step) and the export tools on this CPU; prints a table, asserts nothing.

    python benchmarks/bench_ai8x.py [--batch 8] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import torch

from posekd_lib.mcu import ai8x, export, max78000


def timed(fn, repeat: int = 5) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 64, 64) - 0.5

    model = ai8x.ai85poselike().eval()
    rows = []
    with torch.no_grad():
        rows.append(("float forward (BN)", timed(lambda: model(x))))
    policy = {"start_epoch": 0, "weight_bits": 8, "overrides": {"conv3": {"weight_bits": 4}}}
    ai8x.initiate_qat(model, policy)
    with torch.no_grad():
        rows.append(("QAT forward", timed(lambda: model(x))))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    target = torch.rand(args.batch, 17, 16, 16)

    def step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model.train()(x), target).backward()
        opt.step()

    rows.append(("QAT train step (Adam, MSE)", timed(step)))
    model.eval()
    q = export.quantize_checkpoint(export.lean_checkpoint(model, 0, "ai85poselike"))
    rows.append(("quantize_checkpoint", timed(lambda: export.quantize_checkpoint(
        export.lean_checkpoint(model, 0, "ai85poselike")))))
    ai8x.apply_device(model, ai8x.Device(85, simulate=True))
    model.load_state_dict(q["state_dict"])
    xi = export.sample_input(x[:1])
    with torch.no_grad():
        rows.append(("simulate forward", timed(lambda: model(x * 128))))
    ai8x.apply_device(model, ai8x.Device(85))
    rows.append(("network_yaml", timed(lambda: export.network_yaml(model, (3, 64, 64), "a", "d"), 3)))
    rows.append(("resource_report", timed(lambda: max78000.resource_report(model, (3, 64, 64)), 3)))
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, input 3x64x64, sample {xi.shape}")
    print(f"{'step':32s} {'ms':>9s}")
    for name, ms in rows:
        print(f"{name:32s} {ms:9.2f}")
    print()
    print(max78000.resource_report(model, (3, 64, 64)))


if __name__ == "__main__":
    main()
