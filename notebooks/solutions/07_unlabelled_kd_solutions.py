"""Solutions to the exercises of notebook 07 (KD on unlabelled images).

Run from the repository root:  python notebooks/solutions/07_unlabelled_kd_solutions.py
(quick mode unless POSEKD_MODE says otherwise; in quick mode the runs are a few steps long, so the
numbers only show that the code works — run in workshop mode for meaningful ones).

Every run here is one of the notebook's configs with ``--set`` items, trained by ``run.launch`` as
the notebook trains them (``python -m posekd_lib.run configs/feature_squeezenet.yaml --set ...`` is
the same run). Where an answer quotes a measurement it says with which teacher and budget it was
made; the ones made with the earlier HRNet-W8 teacher (AP 0.050, 500 steps) are kept in
``docs/history.md`` and only their direction is repeated here.
"""
from __future__ import annotations

import os

from posekd_lib.train.experiments import label_tag
from posekd_lib.run import launch

KEYS = ("AP", "AP50", "AP75", "PCK@0.2")
WORKSHOP_STEPS = 800      # the notebook's label-budget runs


def _run(config: str, labelled: float, unlabelled: bool, mode, steps, seed: int = 0) -> dict:
    """``config`` on ``labelled`` of the training images' keypoints (and the others' crops without
    them when ``unlabelled``), named as the notebook and ``bench_kd.py --labelled`` name it."""
    name = ("baseline" if config.startswith("baseline") else config.split("_")[0]) + label_tag(labelled, unlabelled)
    steps = steps or (WORKSHOP_STEPS if (mode or os.environ.get("POSEKD_MODE")) == "workshop" else None)
    sets = [f"name={name}" + ("" if steps in (None, WORKSHOP_STEPS) else f"_{steps}"), f"seed={seed}",
            f"data.labelled={labelled}", *([f"optim.steps={steps}"] if steps else []),
            *(["data.unlabelled=true"] if unlabelled else [])]
    m = launch(config, sets, mode=mode, progress=False, show=False).metrics   # the runner loads the teacher
    return {k: m[k] for k in KEYS}


def exercise_1(mode: str | None = None, steps: int | None = None, seed: int = 1) -> dict:
    """The control and the mixed run again with another seed.

    Subtract as the notebook does: the control minus the baseline is the hint's gain on labelled
    crops, the mixed run minus the control the unlabelled images'. Two seeds of a run at this budget
    differ by about 0.005–0.01 AP (notebook 04's three seeds of the long runs differ by up to 0.01),
    so an unlabelled-images' gain smaller than that is not yet a measured gain. Expect the hint's
    part to be the larger one at 800 steps: the student has not run out of labelled crops (it sees
    each of the 1,180 labelled persons about 20 times), so new crops add less than new targets do.
    """
    return {"hints_labelled_only": _run("feature_squeezenet", 0.1, False, mode, steps, seed),
            "hints_plus_unlabelled": _run("feature_squeezenet", 0.1, True, mode, steps, seed)}


def exercise_2(mode: str | None = None, steps: int | None = None, labelled: float = 0.01) -> dict:
    """Section 3 and the control with 1 % of the images labelled (37 in workshop mode).

    In 800 steps the baseline sees each of the 106 labelled persons about 240 times. Compare its
    training loss with its validation AP for overfitting, and the hinted run with the unlabelled
    crops against the one without them: where the labelled set runs out, the teacher's targets on new
    images are what the student can still learn from.

    With the earlier W8 teacher at 500 steps (``docs/history.md``) the 1 % baseline stayed at the
    floor without overfitting yet, the hinted student on the 1 % kept most of what it reached on
    every label, and the unlabelled crops improved the placement (mean OKS, PCK) before the AP.
    """
    return {"baseline": _run("baseline_squeezenet", labelled, False, mode, steps),
            "hints_labelled_only": _run("feature_squeezenet", labelled, False, mode, steps),
            "hints_plus_unlabelled": _run("feature_squeezenet", labelled, True, mode, steps)}


def exercise_3(mode: str | None = None, steps: int | None = None) -> dict:
    """FPD alone (notebook 03's heatmap MSE to the teacher, no hint) on the 10 % + unlabelled data.

    On an unlabelled crop the teacher's heatmaps are then the only target, and notebook 03 showed
    the demo teacher's maps are lower and wider than the labels. Compare the run's AP and the height
    of its peaks (``evaluation.confidence_summary``) with the 10 % baseline's and with the hinted
    run's: the hint teaches features, which do not depend on how sharp the teacher's output is.
    With the earlier W8 teacher (``docs/history.md``) FPD on the mixed data ended a little above the
    10 % baseline and far below the hinted run on the same data.
    """
    return {"fpd_plus_unlabelled": _run("fpd_squeezenet", 0.1, True, mode, steps)}


if __name__ == "__main__":
    os.environ.setdefault("POSEKD_MODE", "quick")
    steps = 2 if os.environ["POSEKD_MODE"] == "quick" else None
    print("1:", exercise_1(steps=steps))
    print("2:", exercise_2(steps=steps, labelled=0.25 if steps else 0.01))   # quick: 1 % is no batch
    print("3:", exercise_3(steps=steps))
