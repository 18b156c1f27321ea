"""How much does the heatmap decoder move each top-down model's AP? (E40, issue 39)

    python benchmarks/bench_decoding.py [--teachers demo demo_w16_128x96_x5] [--runs ref_kl_squeezenet_s0 ...]
                                        [--mode workshop] [--threads 1]

Every model is scored twice on the mode's whole validation split (GT boxes, flip test, COCOeval),
once per decoder of ``HeatmapCodec.decode``: ``official`` (argmax + a quarter-cell step towards the
higher neighbour, HRNet's; what every number of the series uses) and ``dark`` (DARK's Taylor
refinement of the blurred log-heatmap, Zhang et al., CVPR 2020: test time only, no training).
Models: shipped teachers of the demo line by name, and shipped top-down reference runs
(``reference/``: SqueezeNet students in float, MAX78000 students as float and as the integer
simulation of the chip). Each run's ``official`` AP is printed beside its card's (they differ only by
the card's rounding of stored results and fp16 weights; a gap over 0.005 stops the script: a
different model). Prints one line per model.
"""
from __future__ import annotations

import argparse
import time

import torch

from posekd_lib.data.datasets import dataset_splits
from posekd_lib.evaluation.coco import evaluate_topdown
from posekd_lib.models import ai8x_models as am
from posekd_lib.models.teachers import load_teacher
from posekd_lib.runs import runconfig as rc
from posekd_lib.runs.reference import REFERENCE_DIR, load_reference_ai8x, load_reference_student, reference_table
from posekd_lib.train.budgets import budget

DECODERS = ("official", "dark")


def top_down_runs(table=None) -> list[str]:
    """The shipped top-down runs: every SqueezeNet/MobileNet run, and each MAX78000 run's QAT folder
    (the rows of ``reference_table()``, which lists a MAX78000 run once, by that folder)."""
    table = reference_table() if table is None else table
    return [run for run, student in zip(table["run"], table["student"]) if student != rc.BOTTOM_UP_STUDENT]


def models_of_run(run: str, mode: str):
    """``[(label, model, input_size, heatmap_size, sigma, card metric key)]`` of one shipped run."""
    b = budget(mode)
    cfg = rc.from_yaml(REFERENCE_DIR / run / "config.yaml")
    if cfg.model.student in rc.MCU_STUDENTS:
        nets = load_reference_ai8x(run)
        size = (am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP, b.sigma)
        return [(f"{run} float", am.HeatmapView(nets["float"]), *size, "float.AP"),
                (f"{run} int8", am.HeatmapView(am.simulate_copy(nets["qat"])), *size, "int8.AP")]
    return [(run, load_reference_student(run), b.input_size, b.heatmap_size, b.sigma, "AP")]


def score(model, split, input_size, heatmap_size, sigma) -> dict:
    out = {}
    for dec in DECODERS:
        m = evaluate_topdown(model, split, input_size, heatmap_size, sigma, flip_test=True, decode=dec)
        out[dec] = {k: m[k] for k in ("AP", "AP50", "AP75")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", nargs="*", default=["demo", "demo_w16_128x96_x5"])
    ap.add_argument("--runs", nargs="*", default=None, help="shipped runs (default: every top-down one)")
    ap.add_argument("--mode", default="workshop")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = dataset_splits(args.mode).val
    table = reference_table()
    cards = table.set_index("run")

    print(f"{'model':44s}{'card AP':>8s}" + "".join(f"{d + ' AP':>13s}" for d in DECODERS)
          + f"{'gain':>8s}{'AP75 gain':>10s}{'s':>5s}")

    def line(label, card, res, t0):
        gain = res["dark"]["AP"] - res["official"]["AP"]
        gain75 = res["dark"]["AP75"] - res["official"]["AP75"]
        print(f"{label:44s}{'-' if card is None else f'{card:.4f}':>8s}"
              + "".join(f"{res[d]['AP']:13.4f}" for d in DECODERS)
              + f"{gain:+8.4f}{gain75:+10.4f}{time.perf_counter() - t0:5.0f}", flush=True)

    for name in args.teachers:
        t0 = time.perf_counter()
        model, info = load_teacher(name, mode=args.mode)
        card = info.val_ap if args.mode == "workshop" else None          # the card scores the workshop split
        line(f"teacher {info.name}", card, score(model, split, info.input_size, info.heatmap_size, info.sigma), t0)
    for run in (top_down_runs(table) if args.runs is None else args.runs):
        for label, model, inp, hm, sigma, key in models_of_run(run, args.mode):
            t0 = time.perf_counter()
            res = score(model.eval(), split, inp, hm, sigma)
            card = float(cards.loc[run, key]) if args.mode == "workshop" and run in cards.index else None
            if card is not None and abs(res["official"]["AP"] - card) > 0.005:
                raise SystemExit(f"{label}: official AP {res['official']['AP']:.4f} is not its card's {key} {card:.4f} "
                                 f"(reference/{run}): a different model or split")
            line(label, card, res, t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
