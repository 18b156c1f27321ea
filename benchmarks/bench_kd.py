"""Notebooks 03-04's distillation comparison over seeds: AP of baseline and KD students, gap closed.

    python benchmarks/bench_kd.py                          # workshop mode, seeds 0 and 1
    python benchmarks/bench_kd.py --seeds 0 1 2 --student mobilenetv3
    python benchmarks/bench_kd.py --mode quick             # seconds: checks that everything runs

Every setting (``baseline`` and the tags of ``experiments.KD_SETTINGS``) is trained with the
mode's budget (same steps, batch, data, augmentation, learning rate; only the loss and the seed
change) through ``experiments.train_student``, so runs the notebooks already made are reused from
the cache and missing ones are trained (in workshop mode ~5 min per run on 2 cores). For each
setting it prints COCO AP (flip test, GT boxes), AP50, AP75 and PCK@0.2 as mean ± half the range
over the seeds, and the fraction of the teacher-baseline AP gap closed, computed per seed against
that seed's baseline and then averaged.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from posekd_lib.config import get_mode  # noqa: E402
from posekd_lib.distill import freeze  # noqa: E402
from posekd_lib.experiments import KD_SETTINGS, evaluate_teacher, kd_recipe, train_student  # noqa: E402
from posekd_lib.teachers import load_teacher  # noqa: E402

METRICS = ("AP", "AP50", "AP75", "PCK@0.2")


def gap_closed(ap: float, baseline_ap: float, teacher_ap: float) -> float:
    """``(AP - AP_baseline) / (AP_teacher - AP_baseline)``; NaN when the teacher is not better."""
    gap = teacher_ap - baseline_ap
    return (ap - baseline_ap) / gap if gap > 0 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None, help="quick | workshop | full (default: $POSEKD_MODE, else workshop)")
    ap.add_argument("--student", default="mobilenetv3")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--settings", nargs="+", default=list(KD_SETTINGS), help=f"of {list(KD_SETTINGS)}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    mode = get_mode(args.mode)
    torch.set_num_threads(args.threads)

    t = evaluate_teacher(mode, progress=False)
    teacher, _ = load_teacher(mode=mode)
    freeze(teacher)
    metrics: dict[str, list[dict]] = {"baseline": []}
    for seed in args.seeds:
        metrics["baseline"].append(train_student(args.student, mode=mode, seed=seed, tag="baseline",
                                                 progress=False).metrics)
        for tag in args.settings:
            run = train_student(args.student, mode=mode, seed=seed, tag=tag, progress=False,
                                kd=kd_recipe(tag, teacher, args.student, mode))
            metrics.setdefault(tag, []).append(run.metrics)
            torch.set_num_threads(args.threads)

    t_ap = t.metrics["AP"]
    print(f"mode {mode}, student {args.student}, seeds {args.seeds}; teacher {t.name} AP {t_ap:.3f} "
          f"(AP50 {t.metrics['AP50']:.3f}, PCK@0.2 {t.metrics['PCK@0.2']:.3f})")
    print(f"{'setting':10s}" + "".join(f"{m:>16s}" for m in METRICS) + f"{'gap closed':>18s}")
    for tag, ms in metrics.items():
        cells = []
        for m in METRICS:
            v = np.array([x[m] for x in ms])
            cells.append(f"{v.mean():8.4f} ± {np.ptp(v) / 2:.4f}")
        closed = np.array([gap_closed(x["AP"], b["AP"], t_ap) for x, b in zip(ms, metrics["baseline"])])
        gc = "" if tag == "baseline" else f"{100 * closed.mean():7.1f} % ± {50 * np.ptp(closed):.1f}"
        print(f"{tag:10s}" + "".join(f"{c:>16s}" for c in cells) + f"{gc:>18s}")
    print("per seed AP: " + "; ".join(f"{tag} " + ", ".join(f"{x['AP']:.4f}" for x in ms)
                                      for tag, ms in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
