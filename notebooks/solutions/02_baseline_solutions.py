"""Solutions to the exercises of notebook 02 (baseline).

Run from the repository root:  python notebooks/solutions/02_baseline_solutions.py
(quick mode unless POSEKD_MODE says otherwise; in quick mode the runs are a few steps long, so the
numbers only show that the code works — run in workshop mode for meaningful ones).
Every training run is notebook 02's config (``configs/baseline_squeezenet.yaml``) with ``--set``
items, trained by ``run.launch`` as the notebook trains it.
"""
from __future__ import annotations

import os

import numpy as np
import torch


from posekd_lib.data.datasets import TopDownDataset, dataset_splits
from posekd_lib.evaluation.coco import evaluate_topdown, pck
from posekd_lib.train.experiments import budget, build_student_model, evaluate_teacher, example_batch
from posekd_lib.distill.losses import adaptive_wing, joints_mse
from posekd_lib.run import launch


def _baseline(student: str, mode, name: str | None = None, steps: int | None = None, *sets: str):
    """Notebook 02's baseline config for ``student``, renamed ``name`` when it is another run."""
    sets = [f"model.student={student}", *([f"name={name}"] if name else []),
            *([f"optim.steps={steps}"] if steps else []), *sets]
    return launch("baseline_squeezenet", sets, mode=mode, progress=False, show=False)


def exercise_1(mode: str | None = None, steps: int | None = None) -> dict[str, dict]:
    """MobileNetV3 at output stride 16 vs 32: AP, MACs, training time.

    At a 128x96 crop the stride-32 backbone ends at 4x3 cells: its last blocks see almost the whole
    crop at once and add parameters (576 channels) without adding spatial detail, so cutting at
    stride 16 (8x6 cells, 48 channels) loses little accuracy while saving compute and time.
    """
    out = {}
    for name in ("mobilenetv3", "mobilenetv3_os16"):
        r = _baseline(name, mode, None if steps is None else f"ex1_{steps}", steps).row
        out[name] = {k: r[k] for k in ("AP", "MACs", "params", "train_time_s")}
    return out


def exercise_2(mode: str | None = None, steps: int | None = None) -> dict[str, dict]:
    """SqueezeNet trained with joints MSE vs Adaptive Wing.

    Adaptive Wing keeps a steep gradient for small errors on the Gaussian's foreground, which tends to
    sharpen the peaks: any gain shows mostly at the strict threshold (AP75), not at AP50.
    """
    suffix = "" if steps is None else f"_{steps}"
    out = {}
    for loss, tag in (("mse", "baseline" if steps is None else f"ex2mse{suffix}"), ("awing", f"awing{suffix}")):
        m = _baseline("squeezenet", mode, None if tag == "baseline" else tag, steps, f"optim.loss={loss}").metrics
        out[loss] = {k: m[k] for k in ("AP", "AP50", "AP75")}
    return out


def exercise_3(mode: str | None = None, seed: int = 0) -> dict[str, list[float]]:
    """joints_mse and adaptive_wing on one batch as more and more joints are masked.

    joints_mse divides by all N*K*H*W pixels, masked or not, so it (and its gradient) shrinks in
    proportion to the labelled fraction: a batch of half-visible people trains with half the step
    size. adaptive_wing averages over the labelled joints only and stays on the same scale.
    """
    batch = example_batch(mode, batch_size=8, seed=seed)
    with torch.no_grad():
        pred = build_student_model("squeezenet").eval()(batch["image"])
    tw = torch.ones_like(batch["target_weight"])
    out = {"masked": [], "joints_mse": [], "adaptive_wing": []}
    for n in range(0, 17, 2):
        w = tw.clone()
        w[:, :n] = 0
        out["masked"].append(n)
        out["joints_mse"].append(float(joints_mse(pred, batch["target"], w)))
        out["adaptive_wing"].append(float(adaptive_wing(pred, batch["target"], w)))
    return out


def exercise_4(mode: str | None = None) -> dict[str, dict]:
    """AP of each baseline with and without the flip test (the cached metrics use it).

    Averaging with the mirrored input cancels part of the left/right and sub-cell noise of the
    heatmaps; on small models it is typically worth a few AP points, for twice the inference cost.
    """
    b = budget(mode)
    splits = dataset_splits(mode)
    out = {}
    for name in ("squeezenet", "mobilenetv3"):
        run = _baseline(name, mode)
        no_flip = evaluate_topdown(run.model, splits.val, b.input_size, b.heatmap_size, b.sigma, flip_test=False,
                                   batch_size=b.eval_batch_size)
        out[name] = {"flip": run.metrics["AP"], "no_flip": no_flip["AP"]}
    return out


def exercise_5(mode: str | None = None, thresholds=np.linspace(0.05, 0.5, 10)) -> dict[str, list[float]]:
    """PCK against the threshold for the teacher and the two baselines.

    The curves usually separate most at low thresholds (fine localisation, where resolution and
    capacity matter) and converge at high ones (coarse mistakes such as a swapped side are rarer).
    """
    b = budget(mode)
    splits = dataset_splits(mode)
    ds = TopDownDataset(splits.val.ann_file, splits.val.img_dir, b.input_size, b.heatmap_size, b.sigma)
    gt = np.stack([s["joints"] for s in ds.samples])
    boxes = np.stack([s["box"] for s in ds.samples])
    models = {"teacher": evaluate_teacher(mode, progress=False).results,
              **{n: _baseline(n, mode).results for n in ("squeezenet", "mobilenetv3")}}
    out = {"threshold": [float(t) for t in thresholds]}
    for name, results in models.items():
        pred = np.asarray([r["keypoints"] for r in results], dtype=np.float64).reshape(len(results), -1, 3)
        out[name] = [pck(pred, gt, boxes, float(t)) for t in thresholds]
    return out


if __name__ == "__main__":
    os.environ.setdefault("POSEKD_MODE", "quick")
    quick = os.environ["POSEKD_MODE"] == "quick"
    print("1:", exercise_1(steps=2 if quick else None))
    print("2:", exercise_2(steps=2 if quick else None))
    print("3:", exercise_3())
    print("4:", exercise_4())
    try:
        print("5:", exercise_5())
    except FileNotFoundError as e:  # no teacher weights in this checkout
        print("5: skipped:", e)
