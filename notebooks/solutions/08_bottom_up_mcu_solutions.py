"""Solutions to the exercises of notebook 08 (the bottom-up MAX78000 student).

Run from the repository root:  python notebooks/solutions/08_bottom_up_mcu_solutions.py
(quick mode unless POSEKD_MODE says otherwise; quick-mode numbers only show that the code works).
"""
from __future__ import annotations

import os
from pathlib import Path


from posekd_lib import ai8x_models as am
from posekd_lib import bottom_up
from posekd_lib.data import dataset_splits
from posekd_lib.distill import freeze
from posekd_lib.evaluation import bottom_up_results, coco_evaluate, evaluate_bottom_up
from posekd_lib.teachers import load_teacher


def _teacher_kp(mode):
    return bottom_up.teacher_keypoints(freeze(load_teacher(mode=mode)[0]), mode)


def _aps(run) -> dict:
    return {k: round(run.metrics[k]["AP"], 4) for k in ("float", "qat", "int8")}


def exercise_1(mode: str | None = None) -> dict:
    """The small variant, with and without KD.

    The small student adds depth at 16x16 (more receptive field for linking joints through the
    PAFs) and width at 32x32; whether it helps at this budget is what the four runs show."""
    kp = _teacher_kp(mode)
    return {f"small_{name}": _aps(bottom_up.train_bottom_up("small", mode, teacher_kp=k, progress=False))
            for name, k in (("gt", None), ("kd", kp))}


def exercise_2(mode: str | None = None) -> dict:
    """α = 0.25 and α = 0.9: a little teacher, or almost only the teacher.

    With α near 1 the student learns the teacher's placements and loses the labels' corrections of
    the teacher's mistakes; with α small KD barely changes the targets."""
    kp = _teacher_kp(mode)
    return {a: _aps(bottom_up.train_bottom_up("tiny", mode, teacher_kp=kp, alpha=a,
                                              tag=f"bottom_up_tiny_kd_a{int(a * 100)}_s0", progress=False))
            for a in (0.25, 0.9)}


def exercise_3(mode: str | None = None, seeds=(1, 2)) -> dict:
    """Seeds 1 and 2 of section 6: KD's effect against the spread between seeds."""
    kp = _teacher_kp(mode)
    return {seed: {name: _aps(bottom_up.train_bottom_up("tiny", mode, seed=seed, teacher_kp=k, progress=False))
                   for name, k in (("gt", None), ("kd", kp))} for seed in seeds}


def exercise_4(mode: str | None = None, thresholds=(0.1, 0.05)) -> dict:
    """The decoder's peak threshold on the distilled student's maps (float model, whole frames).

    A lower threshold finds weaker peaks: more joints of hard persons, but also more spurious
    candidates for the grouping; COCO AP counts both."""
    import torch

    from posekd_lib.data import BottomUpDataset

    run = bottom_up.train_bottom_up("tiny", mode, teacher_kp=_teacher_kp(mode), progress=False)
    val = dataset_splits(mode).val
    ds = BottomUpDataset(val.ann_file, val.img_dir, am.BOTTOM_UP_INPUT, bottom_up.STRIDE)
    net = am.HeatmapView(run.float_model).eval()
    out = {}
    with torch.no_grad():
        maps = [(net(ds[i]["image"][None])[0].numpy(), ds[i]["meta"]) for i in range(len(ds))]
    for thr in thresholds:
        results = []
        for m, meta in maps:
            results += bottom_up_results(m[None, :19], m[None, 19:], [meta["affine"]], [meta["image_id"]], ds.codec,
                                         threshold=thr)
        out[thr] = {"people": len(results), "AP": round(coco_evaluate(val.ann_file, results)["AP"], 4)}
    return out


if __name__ == "__main__":
    mode = os.environ.get("POSEKD_MODE", "quick")
    for fn in (exercise_1, exercise_2, exercise_3, exercise_4):
        print(fn.__name__, fn(mode))
