"""Solutions to the exercises of notebook 08 (the bottom-up MAX78000 student).

Run from the repository root:  python notebooks/solutions/08_bottom_up_mcu_solutions.py
(quick mode unless POSEKD_MODE says otherwise; quick-mode numbers only show that the code works).
Every run is one of the ``tiny_s4`` configs (``configs/bottomup_s4_gt.yaml``, ``bottomup_s4_kd.yaml``:
the design ``bottom_up.RECIPE`` of section 4, the pair section 7 trained long) with one thing changed
by ``--set`` items, trained by ``run.launch`` as the notebook trains its runs; runs are cached by
name, so a run one exercise trained is reused by the next.
"""
from __future__ import annotations

import os

from posekd_lib.train import bottom_up
from posekd_lib.data.datasets import dataset_splits
from posekd_lib.evaluation.coco import first_images
from posekd_lib.run import launch

RECIPE = bottom_up.RECIPE


def _run(kd: bool, mode, name: str | None = None, *sets: str):
    """The `tiny_s4` ground-truth or KD config with ``sets`` applied, renamed ``name`` when it is another
    run (the runner loads the KD config's teacher)."""
    return launch("bottomup_s4_kd" if kd else "bottomup_s4_gt", [*([f"name={name}"] if name else []), *sets],
                  mode=mode, progress=False, show=False)


def _aps(run) -> dict:
    return {k: round(run.metrics[k]["AP"], 4) for k in ("float", "qat", "int8")}


def _diagnosis(run, mode, sigma) -> dict:
    """Section 6's diagnosis for one run: the four decoded mixes and the peaks (100 fixed frames)."""
    val = dataset_splits(mode).val
    d = bottom_up.map_diagnosis(run.float_model, val, first_images(val.ann_file, 100), sigma=sigma)
    return {k: round(v, 4) for k, v in d.items() if k.startswith(("AP_", "peak_", "paf_on_limbs_student"))}


def exercise_1(mode: str | None = None) -> dict:
    """Stride 8 with the same loss (and LW-OpenPose's σ 7: σ 3.5 would be under half a cell).

    Compares the two strides on the same loss: the stride-8 student has 5 cells per median person,
    so its peaks land at best within half a cell (4 px) — as coarse as OKS's tolerance (~3 px)."""
    out = {}
    for name, sets, sigma in (("stride 4 (RECIPE)", (), RECIPE["sigma"]),
                              ("stride 8", ("model.options.variant=tiny", "data.sigma=null"), None)):
        run = _run(False, mode, "bottomup_s8_gt" if sets else None, *sets)
        out[name] = {**_aps(run), **_diagnosis(run, mode, sigma)}
    return out


def exercise_2(mode: str | None = None) -> dict:
    """σ 7 (LW-OpenPose's) against the recipe's 3.5, ground truth only: the peaks' recall and precision."""
    out = {}
    for sigma in (RECIPE["sigma"], None):
        run = _run(False, mode, None if sigma else "bottomup_s4_gt_sig7", *([] if sigma else ["data.sigma=null"]))
        out[f"sigma {sigma or 7}"] = {**_aps(run), **_diagnosis(run, mode, sigma)}
    return out


def exercise_3(mode: str | None = None) -> dict:
    """α = 0.25 and α = 0.9: a little teacher, or almost only the teacher.

    With α near 1 the student learns the teacher's placements and loses the labels' corrections of
    the teacher's mistakes; with α small KD barely changes the targets."""
    return {a: _aps(_run(True, mode, f"bottomup_s4_kd_a{int(a * 100)}", f"distill.terms.0.weight={a}"))
            for a in (0.25, 0.9)}


def exercise_4(mode: str | None = None, seeds=(0, 1, 2)) -> dict:
    """The `tiny_s4` pair at seeds 0, 1 and 2: KD's effect against the spread between seeds."""
    return {seed: {name: _aps(_run(kd, mode, None, f"seed={seed}")) for name, kd in (("gt", False), ("kd", True))}
            for seed in seeds}


def exercise_5(mode: str | None = None, thresholds=(0.05, 0.1, 0.2, 0.4)) -> dict:
    """The decoder's peak threshold on the distilled student's maps (float model, 100 fixed frames).

    A higher threshold drops weak peaks: fewer spurious people, but also fewer joints of hard
    persons. On the curve runs (docs/experiments.md, E17) AP hardly moved between 0.1 and 0.4:
    the student's peaks are imprecise, not too many."""
    import numpy as np
    import torch

    from posekd_lib.models.ai8x_models import HeatmapView
    from posekd_lib.data.datasets import BottomUpDataset
    from posekd_lib.evaluation.coco import bottom_up_results, coco_evaluate

    run = _run(True, mode)
    val = dataset_splits(mode).val
    ids = first_images(val.ann_file, 100)
    ds = BottomUpDataset(val.ann_file, val.img_dir, run.model.input_size, run.model.stride, train=False)
    ds.image_ids = [i for i in ds.image_ids if i in set(ids)]
    net = HeatmapView(run.float_model).eval()
    with torch.no_grad():
        batches = [(net(b["image"]).numpy(), b["meta"]) for b in torch.utils.data.DataLoader(ds, batch_size=50)]
    maps = np.concatenate([m for m, _ in batches])
    affines = [a for _, meta in batches for a in meta["affine"].numpy()]
    image_ids = [i for _, meta in batches for i in meta["image_id"].tolist()]
    out = {}
    for thr in thresholds:
        results = bottom_up_results(maps[:, :19], maps[:, 19:], affines, image_ids, ds.codec, threshold=thr)
        out[thr] = {"people": len(results), "AP": round(coco_evaluate(val.ann_file, results, img_ids=ids)["AP"], 4)}
    return out


if __name__ == "__main__":
    mode = os.environ.get("POSEKD_MODE", "quick")
    for fn in (exercise_1, exercise_2, exercise_3, exercise_4, exercise_5):
        print(fn.__name__, fn(mode))
