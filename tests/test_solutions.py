"""The exercise solutions stay runnable: each solutions module imports, and its exercises that need
no training run in quick mode and give the answer the docstring explains."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from posekd_lib.mcu.hardware import limits

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "solutions"


def _load(name: str):
    path = SOLUTIONS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_numbered_notebook_has_a_solutions_module():
    notebooks = sorted(p.stem for p in (SOLUTIONS.parent).glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb in notebooks:
        assert (SOLUTIONS / f"{nb}_solutions.py").is_file(), f"{nb} has no solutions module"
        _load(f"{nb}_solutions")


def test_loss_masking_solution_shows_mse_shrinking_and_awing_not():
    out = _load("02_baseline_solutions").exercise_3(mode="quick")
    mse, awing = out["joints_mse"], out["adaptive_wing"]
    assert mse[-1] < 0.2 * mse[0]                        # 16 of 17 joints masked: MSE ~1/17 of it
    assert 0.2 < awing[-1] / awing[0] < 5                # averaged over labelled joints: same scale


def test_teacher_at_another_input_size_solution():
    out = _load("03_logits_kd_solutions").exercise_4(mode="quick")
    assert out["shape"] == (4, 17, 32, 24)
    assert out["mean_abs_difference"] > 0


def test_unnormalised_feature_loss_solution():
    out = _load("04_feature_kd_solutions").exercise_3(mode="quick")
    assert 0.5 < out["channel"]["feat"] < 2.0            # standardised target: ~1 at initialisation
    assert out["none"]["feat"] != pytest.approx(out["channel"]["feat"], rel=0.1)


def _quick_recipe(run: str) -> dict:
    """The training recipe a quick-mode run stored with its checkpoint."""
    import json

    from posekd_lib.config import run_paths

    return json.loads((run_paths("quick").checkpoints / run / "run_info.json").read_text())["recipe"]


def test_kl_hint_solution_trains_with_the_kl_as_logits_term():
    out = _load("04_feature_kd_solutions").exercise_6(mode="quick", steps=2)
    assert set(out["hints_kl"]) == {"AP", "AP50", "AP75", "PCK@0.2"}
    recipe = _quick_recipe("hints_kl_2_squeezenet_s0")
    assert recipe["steps"] == 2
    from posekd_lib.train.recipes import recipe_settings

    kd = recipe["kd"]
    assert (kd["kind"], kd["temperature"], kd["beta"]) == ("kl", 0.5, recipe_settings("feature")["beta"])


def test_cwd_hint_solution_trains_the_hint_alone_with_cwd():
    out = _load("04_feature_kd_solutions").exercise_7(mode="quick", steps=2)
    assert set(out["hints_cwd"]) == {"AP", "AP50", "AP75", "PCK@0.2"}
    kd = _quick_recipe("hints_cwd_2_squeezenet_s0")["kd"]
    assert (kd["alpha_logits"], kd["feature_loss"], kd["feature_temperature"]) == (0.0, "cwd", 2.0)


def test_mcu_solutions_without_training():
    sol5 = _load("05_ai8x_student_qat_solutions")
    pruned = sol5.exercise_3()
    assert pruned["tiny, 50 % channels"]["weight_bytes"] < 0.5 * pruned["tiny"]["weight_bytes"]
    assert all(v["fits"] for v in pruned.values())
    grouped = sol5.exercise_4()
    assert grouped["MAX78000"].startswith("rejected") and grouped["MAX78002"] == "accepted"
    sol6 = _load("06_export_solutions")
    assert "state-dict order" in sol6.exercise_3()
    sizes = sol6.exercise_1()              # the two shipped long-budget students, no training
    assert (sizes["tiny"]["weight_bytes"] < sizes["small"]["weight_bytes"] < sizes["medium"]["weight_bytes"]
            <= limits(85).weight_memory_bytes)
    assert sizes["medium"]["latency_ms"] > sizes["small"]["latency_ms"] > sizes["tiny"]["latency_ms"]


def test_unlabelled_seed_solution_trains_the_control_and_the_mixed_run():
    out = _load("07_unlabelled_kd_solutions").exercise_1(mode="quick", steps=2, seed=1)
    assert set(out) == {"hints_labelled_only", "hints_plus_unlabelled"}
    assert set(out["hints_labelled_only"]) == {"AP", "AP50", "AP75", "PCK@0.2"}
    control, mixed = _quick_recipe("feature_l10_2_squeezenet_s1"), _quick_recipe("feature_l10u_2_squeezenet_s1")
    assert (control["labelled"], control["unlabelled"], control["kd"]["setting"]) == (0.1, False, "feature")
    assert (mixed["labelled"], mixed["unlabelled"], mixed["steps"]) == (0.1, True, 2)


@pytest.mark.slow  # two 4 + 2-step bottom-up runs (the teacher labels the quick set once) and a threshold sweep
def test_08_threshold_sweep_scores_every_threshold():
    out = _load("08_bottom_up_mcu_solutions").exercise_5(mode="quick", thresholds=(0.1, 0.4))
    assert set(out) == {0.1, 0.4} and out[0.1]["people"] >= out[0.4]["people"]
    assert all(0 <= v["AP"] <= 1 for v in out.values())
