"""Notebook 02's baseline in numbers: teacher and student AP, training time per epoch, inference speed.

    python benchmarks/bench_baseline.py                   # workshop mode (trains the baselines if not cached)
    python benchmarks/bench_baseline.py --mode quick      # seconds: checks that everything runs

AP is COCO AP (flip test, ground-truth boxes) on the mode's validation split, from the same cached
runs as the notebooks (``configs/baseline_<student>.yaml`` through ``run.launch`` / ``evaluate_teacher``; a missing run is
trained first, which in workshop mode takes minutes); the teacher is also scored in one pass, without
the flip test, as a distillation target computed in one forward sees it. Training speed times real
steps (data loading with augmentation, forward, joints MSE, backward, Adam) on the mode's training
loader after one warm-up step; the epoch time is the training persons divided by that rate.
Inference is eval-mode images/s on random crops at ``--batch`` (default 32). Figures depend on the
machine and its load.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


from posekd_lib.config import get_mode
from posekd_lib.data.datasets import TopDownDataset, dataset_splits
from posekd_lib.evaluation.coco import evaluate_topdown
from posekd_lib.train.experiments import budget, build_student_model, evaluate_teacher
from posekd_lib.run import launch
from posekd_lib.distill.losses import joints_mse
from posekd_lib.models.teachers import load_teacher

STUDENTS = ("squeezenet", "mobilenetv3", "mobilenetv3_os16")


def train_rate(model: torch.nn.Module, loader, steps: int) -> float:
    """Training crops/s over ``steps`` Adam steps after one warm-up step (data loading included)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    it = iter(loader)
    n, start = 0, None
    for i in range(steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss = joints_mse(model(batch["image"]), batch["target"], batch["target_weight"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 0:
            start = time.perf_counter()
        else:
            n += len(batch["image"])
    return n / (time.perf_counter() - start)


def infer_rate(model: torch.nn.Module, input_size, batch: int, seconds: float) -> float:
    """Eval-mode images/s on random crops: one warm-up batch, then batches until ``seconds`` (at least 2)."""
    w, h = input_size
    x = torch.randn(batch, 3, h, w)
    model.eval()
    with torch.inference_mode():
        model(x)
        n, start = 0, time.perf_counter()
        while n < 2 * batch or time.perf_counter() - start < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None, help="quick | workshop | full (default: $POSEKD_MODE, else workshop)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="inference batch size")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 20, quick 2)")
    ap.add_argument("--seconds", type=float, default=None, help="inference timing per model (default 5, quick 0.5)")
    ap.add_argument("--no-ap", action="store_true", help="skip AP (no training or evaluation)")
    args = ap.parse_args(argv)
    mode = get_mode(args.mode)
    quick = mode == "quick"
    steps = args.train_steps or (2 if quick else 20)
    seconds = args.seconds or (0.5 if quick else 5.0)
    torch.set_num_threads(args.threads)
    b = budget(mode)
    print(f"mode {mode}, {args.threads} threads, crop {b.input_size[0]}x{b.input_size[1]} (w x h), "
          f"train batch {b.batch_size}, inference batch {args.batch}")

    splits = dataset_splits(mode)
    try:
        teacher, t_info = load_teacher(mode=mode)   # on the CPU, for its input size and the timings
    except FileNotFoundError as e:
        teacher = None
        print(f"teacher skipped: {e}")
    ap_rows = {}
    if not args.no_ap:
        if teacher is not None:
            t = evaluate_teacher(mode, progress=False)
            ap_rows[t.name] = t.metrics
            ap_rows[f"{t.name}, 1 pass"] = evaluate_topdown(   # t.model sits on the budget's device
                t.model, splits.val, t_info.input_size, t_info.heatmap_size, t_info.sigma, flip_test=False,
                batch_size=b.eval_batch_size, device=next(t.model.parameters()).device)
        for name in STUDENTS[:2]:
            ap_rows[name] = launch(f"baseline_{name}", mode=mode, progress=False, show=False).metrics
            torch.set_num_threads(args.threads)
        print(f"\n{'model':24s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'PCK@0.2':>8s}   (val, flip test, GT boxes)")
        for name, m in ap_rows.items():
            pck = f"{m['PCK@0.2']:8.3f}" if "PCK@0.2" in m else f"{'-':>8s}"
            print(f"{name:24s} {m['AP']:6.3f} {m['AP50']:6.3f} {m['AP75']:6.3f} {pck}")

    train_ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, b.input_size, b.heatmap_size, b.sigma,
                              train=True)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=b.batch_size, shuffle=True, drop_last=True)
    models = {name: build_student_model(name) for name in STUDENTS}
    if mode != "full":
        models["teacher"] = teacher
    print(f"\n{'model':16s} {'train crops/s':>13s} {'epoch (s)':>10s} {'infer img/s':>12s}   "
          f"({len(train_ds)} training persons)")
    for name, model in models.items():
        if model is None:
            continue
        torch.manual_seed(0)
        rate = train_rate(model, loader, steps)
        print(f"{name:16s} {rate:13.1f} {len(train_ds) / rate:10.1f} {infer_rate(model, b.input_size, args.batch, seconds):12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
