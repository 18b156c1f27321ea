"""Does averaging the heatmaps of several HRNet teachers beat the best one? (E32, issue 39)

    python benchmarks/bench_teacher_ensemble.py --weights x5=hrnet_pose/weights/demo_w16_128x96_x5.pt \
        x3=hrnet_pose/weights/demo_w16_128x96_x3.pt --combos x5 x5+x3 [--mode workshop] [--threads 1]

Each member is a demo-config HRNet loaded strictly from its weights file (``teachers.load_teacher``,
its card gives the config); an ensemble is the mean of its members' heatmaps (each flip-tested
by ``evaluate_topdown``, which flips the ensemble's input). Scored on the mode's whole validation
split with GT boxes, COCOeval. Prints one line per combination: AP, AP50, AP75 and seconds.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from posekd_lib.data.datasets import dataset_splits
from posekd_lib.evaluation.coco import evaluate_topdown
from posekd_lib.models.teachers import load_teacher


class MeanHeatmaps(nn.Module):
    """The mean of several heatmap models' outputs (same input and heatmap size)."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", required=True, help="NAME=weights file, one per member")
    ap.add_argument("--combos", nargs="+", required=True, help="members joined by '+', e.g. x5+x3")
    ap.add_argument("--mode", default="workshop")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    models, info = {}, None
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--weights {item!r}: expected NAME=path")
        models[name], info = load_teacher("demo", mode=args.mode, path=path)
    for combo in args.combos:
        missing = [k for k in combo.split("+") if k not in models]
        if missing:
            ap.error(f"--combos {combo!r}: no --weights for {', '.join(missing)}")
    split = dataset_splits(args.mode).val
    for combo in args.combos:
        members = [models[k] for k in combo.split("+")]
        model = members[0] if len(members) == 1 else MeanHeatmaps(members)
        t0 = time.perf_counter()
        m = evaluate_topdown(model, split, info.input_size, info.heatmap_size, info.sigma, flip_test=True)
        print(f"{combo:24s} AP {m['AP']:.4f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
