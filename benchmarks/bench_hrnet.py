"""Size and speed of every HRNet config: params, MACs, fp16 file size, CPU throughput.

    python benchmarks/bench_hrnet.py [--threads 2] [--batch 8] [--configs w8_128x96 w16_256x192]

MACs come from ``posekd_lib.models.students.complexity`` (calflops) (one image at the config's input size). Throughput
is images/s of eval-mode inference at batch 8 on CPU, timed over a few iterations after one
warm-up (fewer for the big models, whose numbers are therefore rougher); the training column
times full Adam steps (forward, 0.5·MSE on heatmaps, backward, update) the same way. This table is what
the demo teacher config was chosen from; figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


from hrnet_pose.checkpoint import fp16_size_bytes
from hrnet_pose.configs import available_configs, load_configs
from hrnet_pose.hrnetpose_model import count_parameters, get_pose_net
from posekd_lib.models.students import complexity


def throughput(model: torch.nn.Module, height: int, width: int, batch: int, seconds: float) -> float:
    """Images/s: one warm-up batch, then batches until ``seconds`` have passed (at least 2)."""
    x = torch.randn(batch, 3, height, width)
    with torch.inference_mode():
        model(x)
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < seconds:
            model(x)
            n += 1
    return n * batch / (time.perf_counter() - start)


def train_throughput(model: torch.nn.Module, height: int, width: int, batch: int, seconds: float) -> float:
    """Images/s of training steps on random data (one warm-up step, then as in :func:`throughput`)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, height, width)
    target = torch.rand(batch, model.final_layer.out_channels, height // 4, width // 4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()

    step()
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
    model.eval()
    return n * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=available_configs())
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per config")
    parser.add_argument("--max-gmacs", type=float, default=20.0,
                        help="skip the inference timing of configs above this many GMACs per image")
    parser.add_argument("--max-train-gmacs", type=float, default=3.0,
                        help="skip the training timing of configs above this many GMACs per image")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print("| config | input (w×h) | heatmap | params | GMACs | fp16 MB | CPU infer img/s | CPU train img/s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.configs:
        cfg = load_configs(name)
        w, h = cfg.MODEL.IMAGE_SIZE
        hw, hh = cfg.MODEL.HEATMAP_SIZE
        torch.manual_seed(0)
        model = get_pose_net(cfg, is_train=False).eval()
        gmacs = complexity(model, (w, h))["macs"] / 1e9
        size_mb = fp16_size_bytes(model) / 1e6
        speed = (f"{throughput(model, h, w, args.batch, args.seconds):.1f}"
                 if gmacs <= args.max_gmacs else "skipped")
        train = (f"{train_throughput(model, h, w, args.batch, args.seconds):.1f}"
                 if gmacs <= args.max_train_gmacs else "skipped")
        print(f"| {name} | {w}×{h} | {hw}×{hh} | {count_parameters(model) / 1e6:.2f}M | {gmacs:.2f} "
              f"| {size_mb:.1f} | {speed} | {train} |", flush=True)


if __name__ == "__main__":
    main()
