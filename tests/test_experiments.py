"""Budgets per mode and cached student runs (quick mode, a couple of steps)."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from torch import nn

from hrnet_pose.configs import load_configs
from hrnet_pose.hrnetpose_model import get_pose_net
from posekd_lib.train import experiments
from posekd_lib.mcu.ai8x import ai8x_layers
from posekd_lib.models.registry import model_entry
from posekd_lib.train.experiments import budget, train_student
from posekd_lib.distill.losses import joints_mse


def test_budgets_match_the_demo_teacher_and_fit_the_time_box():
    from posekd_lib.models.teachers import DEMO_CONFIG

    demo = load_configs(DEMO_CONFIG).MODEL
    for mode in ("quick", "workshop"):
        b = budget(mode)
        assert b.mode == mode
        assert b.input_size == tuple(demo.IMAGE_SIZE) == (96, 128)
        assert b.heatmap_size == tuple(demo.HEATMAP_SIZE) == (24, 32) and b.sigma == demo.SIGMA
    q, w = budget("quick"), budget("workshop")
    assert q.steps * q.batch_size <= 64
    assert w.aug == "light" and budget("full").aug == "hrnet"
    # one live run of each kind within the 8 minutes at the per-step seconds measured on 2
    # idle threads (docs/experiments.md E9: plain / cached logits KD 0.128 s, feature KD ~0.30 s)
    assert w.steps * 0.128 <= 8 * 60 and w.feature_steps * 0.30 <= 8 * 60
    assert w.feature_steps < w.steps


def test_mode_files_are_checked_and_errors_name_the_file_and_key(tmp_path, monkeypatch):
    from posekd_lib.train import budgets

    assert experiments.AI8X_STEPS["quick"] == budgets.mode_settings("quick")["ai8x_steps"] == (4, 2)
    assert budget("full").num_workers >= 1 and budget("full").input_size == (192, 256)
    monkeypatch.setattr(budgets, "MODES_DIR", tmp_path)
    cases = {"steps: 4\nbatch: 8\n": r"quick.yaml: unknown key\(s\) \['batch'\]",
             "steps: four\n": r"quick.yaml: steps must be a number",
             "input_size: [96]\n": r"quick.yaml: input_size must be two integers",
             "channels_last: 1\n": r"quick.yaml: channels_last must be true or false",
             "- steps\n": r"quick.yaml: expected a mapping"}
    for text, message in cases.items():
        (tmp_path / "quick.yaml").write_text(text)
        budgets._mode_settings.cache_clear()
        with pytest.raises(ValueError, match=message):
            budget("quick")
    (tmp_path / "quick.yaml").unlink()
    budgets._mode_settings.cache_clear()
    with pytest.raises(FileNotFoundError, match="quick.yaml: the budget file of mode 'quick'"):
        budget("quick")
    monkeypatch.undo()
    budgets._mode_settings.cache_clear()


def test_steps_for_gives_feature_kd_its_own_budget():
    from posekd_lib.train.budgets import steps_for

    w, q = budget("workshop"), budget("quick")
    assert steps_for(w) == steps_for(w, "logits") == w.steps
    assert steps_for(w, "feature") == w.feature_steps
    assert steps_for(w, "feature", teacher_cache=True) == w.steps     # a cached hinted step costs a plain one
    assert q.feature_steps is None and steps_for(q, "feature") == q.steps
    f = budget("full")
    assert f.input_size == (192, 256) and f.heatmap_size == (48, 64) and f.sigma == 2
    with pytest.raises(ValueError, match="POSEKD_MODE"):
        budget("tiny")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_student_records_a_row_and_reuses_the_run():
    run = train_student("squeezenet", steps=2, tag="t1", progress=False)
    assert run.row["model"] == "squeezenet" and run.row["setting"] == "t1" and run.row["steps"] == 2
    assert run.row["params"] > 1e5 and run.row["MACs"] > 1e6 and run.row["train_time_s"] > 0
    assert 0 <= run.metrics["AP"] <= 1 and 0 <= run.metrics["PCK@0.2"] <= 1
    assert len(run.results) > 0 and run.history.step[-1] == 2

    ckpt, metrics_file = run.run_dir / "latest.pt", run.run_dir / "val_metrics.json"
    stamps = ckpt.stat().st_mtime_ns, metrics_file.stat().st_mtime_ns
    again = train_student("squeezenet", steps=2, tag="t1", progress=False)
    assert (ckpt.stat().st_mtime_ns, metrics_file.stat().st_mtime_ns) == stamps  # neither retrained nor re-evaluated
    assert _same_weights(run.model, again.model)
    assert again.history.step == run.history.step and again.metrics == run.metrics
    assert again.row["train_time_s"] == run.row["train_time_s"]

    with pytest.raises(ValueError, match="another recipe"):
        train_student("squeezenet", steps=3, tag="t1", progress=False)


class _ScaledMSE(nn.Module):
    """A stand-in distiller: the student plus a parameter of its own loss, trained and saved with it."""

    def __init__(self, student):
        super().__init__()
        self.student = student
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        return self.student(images)

    def loss(self, outputs, batch):
        return {"loss": self.scale * joints_mse(outputs, batch["target"], batch["target_weight"])}


def test_kd_hook_trains_the_distiller_module():
    made = {}

    def kd(student, total_steps):
        made["kd"], made["total"], made["student"] = _ScaledMSE(student), total_steps, student
        return made["kd"]

    run = train_student("mobilenetv3_os16", steps=2, kd=kd, tag="kdhook", progress=False)
    assert made["total"] == 2 and made["student"] is run.model
    assert made["kd"].scale.item() != 1.0  # in the optimizer with the student
    assert "scale" in torch.load(run.run_dir / "latest.pt", weights_only=True)["model"]   # and in the checkpoint
    assert run.row["setting"] == "kdhook"
    with pytest.raises(TypeError, match="without loss"):
        train_student("mobilenetv3_os16", steps=2, kd=lambda s, n: nn.Identity(), tag="kdbad", progress=False)


def test_few_labels_and_unlabelled_crops_for_the_teacher():
    full = experiments.training_set()
    kept = experiments.training_set(labelled=0.5)
    both = experiments.training_set(labelled=0.5, unlabelled=True)
    assert 0 < len(kept) < len(full) == len(both)
    hidden = both.datasets[1]
    assert all(not s["joints"].any() for s in hidden.samples) and all(s["joints"].any() for s in kept.samples)
    with pytest.raises(ValueError, match="labelled < 1"):
        experiments.training_set(unlabelled=True)
    with pytest.raises(ValueError, match="needs kd"):
        train_student("squeezenet", steps=1, tag="unl", labelled=0.5, unlabelled=True, progress=False)
    with pytest.raises(ValueError, match="labelled must be"):
        train_student("squeezenet", steps=1, tag="unl", labelled=0.0, progress=False)

    seen = []

    def kd(student, total_steps):
        def loss_fn(outputs, batch):
            seen.append(batch["target_weight"].flatten(1).sum(1) > 0)   # which crops have keypoints
            return {"loss": joints_mse(outputs, batch["target"], batch["target_weight"])}
        return loss_fn

    run = train_student("squeezenet", steps=2, tag="unl", labelled=0.5, unlabelled=True, kd=kd, progress=False)
    stored = experiments._read_json(run.run_dir / "run_info.json")["recipe"]
    assert stored["labelled"] == 0.5 and stored["unlabelled"] is True
    assert any((~s).any() for s in seen)                 # crops without keypoints reach the loss
    plain = train_student("squeezenet", steps=1, tag="t_all", progress=False)
    assert "labelled" not in experiments._read_json(plain.run_dir / "run_info.json")["recipe"]


def test_unknown_names_fail_early():
    with pytest.raises(KeyError, match="squeezenet"):
        experiments.build_student_model("resnet")
    with pytest.raises(ValueError, match="awing"):
        experiments.build_loss("l1")


@pytest.mark.slow  # three teacher evaluations and two MAC counts of an HRNet: ~8 s on an idle machine
def test_evaluate_teacher_is_cached_per_weights_file(tmp_path, monkeypatch):
    from hrnet_pose.checkpoint import save_fp16_state_dict
    from posekd_lib.models.teachers import WEIGHTS_ENV

    torch.manual_seed(0)
    save_fp16_state_dict(get_pose_net(load_configs("w8_128x96"), is_train=True), tmp_path / "t.pt")
    (tmp_path / "t.json").write_text(json.dumps({"name": "t", "config": "w8_128x96"}))  # a small HRNet: fast
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "t.pt"))
    run = experiments.evaluate_teacher(progress=False)
    assert run.row["setting"] == "teacher" and run.row["params"] == sum(p.numel() for p in run.model.parameters())
    assert not run.model.training and len(run.results) > 0
    stamp = (run.run_dir / "val_metrics.json").stat().st_mtime_ns
    again = experiments.evaluate_teacher(progress=False)
    assert again.run_dir == run.run_dir and (run.run_dir / "val_metrics.json").stat().st_mtime_ns == stamp
    assert again.metrics == run.metrics
    torch.manual_seed(1)
    save_fp16_state_dict(get_pose_net(load_configs("w8_128x96"), is_train=True), tmp_path / "t.pt")
    new = experiments.evaluate_teacher(progress=False)
    assert new.run_dir != run.run_dir  # new weights, new evaluation
    from posekd_lib.runs.table import runs_table

    rows = runs_table().set_index("config_id")       # both weights files, a row each, in the one table
    assert rows.loc[run.run_dir.name, "AP"] == pytest.approx(run.metrics["AP"]) and new.run_dir.name in rows.index
    assert rows.loc[run.run_dir.name, "model.student"] == "hrnet" and rows.loc[run.run_dir.name, "name"] == "t"


def _random_teacher() -> nn.Module:
    torch.manual_seed(0)
    return get_pose_net(load_configs("w8_128x96"), is_train=False).eval()


def test_kd_recipes_build_the_documented_losses():
    from posekd_lib.distill import FeatureKD, LogitsKD

    teacher = _random_teacher()
    student = experiments.build_student_model("squeezenet")
    for tag in experiments.RECIPES:
        settings = experiments.recipe_settings(tag)
        loss = experiments.kd_recipe(tag, teacher, "squeezenet", "quick")(student, 10)
        if settings["method"] == "logits":
            assert isinstance(loss, LogitsKD)
            assert (loss.kind, loss.alpha, loss.total_steps) == (settings["kind"], settings["alpha"], 10)
            assert loss.temperature == settings.get("temperature", 1.0)
        else:
            assert isinstance(loss, FeatureKD)
            assert loss.pairs == {"neck.4": "stage4"} == model_entry("squeezenet").hint_pairs
            assert (loss.beta, loss.alpha) == (settings["beta"], settings["alpha_logits"])
            loss.remove()
    over = experiments.kd_recipe("fpd", teacher, "squeezenet", "quick", alpha=0.9)(student, 5)
    assert over.alpha == 0.9 and over.teacher.input_size is None          # the demo teacher shares the crop
    w48, w16_160 = copy.deepcopy(teacher), copy.deepcopy(teacher)        # stand-ins: an HRNet knows its crop
    w48.image_size, w16_160.image_size = (288, 384), (128, 160)          # (test_hrnet checks each config's)
    full = experiments.kd_recipe("fpd", w48, "squeezenet", "full")(student, 5)
    assert full.teacher.input_size == (288, 384)                          # W48 crops for 192x256 students
    bigger = experiments.kd_recipe("fpd", w16_160, "squeezenet", "quick")
    assert bigger.recipe["teacher_input_size"] == [128, 160]              # a demo-line teacher at its own crop
    assert bigger(student, 5).teacher.input_size == (128, 160)
    assert experiments.kd_recipe("fpd", w16_160, "squeezenet", "quick",
                                 teacher_input_size=None)(student, 5).teacher.input_size is None   # overrides win
    stand_in = nn.Sequential(nn.Conv2d(3, 17, 1))                         # no image_size: the mode's teacher config
    assert experiments.kd_recipe("fpd", stand_in, "squeezenet", "full")(student, 5).teacher.input_size == (288, 384)
    with pytest.raises(KeyError, match="unknown distillation setting 'fitnet'"):
        experiments.kd_recipe("fitnet", teacher, "squeezenet")
    with pytest.raises(KeyError, match="no feature-KD layer pairs for student 'mobilenetv3_os16'"):
        experiments.kd_recipe("feature", teacher, "mobilenetv3_os16")


def test_a_cached_kd_run_remembers_its_settings():
    teacher = _random_teacher()
    recipe = experiments.kd_recipe("feature", teacher, "squeezenet", "quick")
    assert recipe.recipe == {"setting": "feature", "method": "feature", "teacher_input_size": None,
                             "pairs": {"neck.4": "stage4"}, "beta": 1.0, "alpha_logits": 0.5, "kind": "mse",
                             "teacher": experiments.weights_fingerprint(teacher)}
    run = train_student("squeezenet", steps=1, tag="kdrec", progress=False, kd=recipe)
    stored = experiments._read_json(run.run_dir / "run_info.json")["recipe"]
    assert stored["kd"] == recipe.recipe and stored["loss"] == "kd"
    latest = run.run_dir / "latest.pt"
    ck = torch.load(latest, weights_only=True)
    assert "losses.feat.adapters.neck/4.proj.weight" in ck["model"] and int(ck["model"]["step"]) == 1
    again = train_student("squeezenet", steps=1, tag="kdrec", progress=False,
                          kd=experiments.kd_recipe("feature", teacher, "squeezenet", "quick"))
    assert again.metrics == run.metrics                                   # same settings: the cache is used
    assert _same_weights(again.model, run.model)
    # a cached run written before the distiller owned its adapters (the bare student's weights) is
    # refused by name, and left as it is
    new_format = latest.read_bytes()
    ck["model"] = {k[len("student."):]: v for k, v in ck["model"].items() if k.startswith("student.")}
    torch.save(ck, latest)
    old_format = latest.read_bytes()
    with pytest.raises(RuntimeError, match=r"kdrec_squeezenet_s0/latest\.pt does not fit FeatureKD.*delete that run"):
        train_student("squeezenet", steps=1, tag="kdrec", progress=False,
                      kd=experiments.kd_recipe("feature", teacher, "squeezenet", "quick"))
    assert latest.read_bytes() == old_format
    latest.write_bytes(new_format)
    with pytest.raises(ValueError, match="another recipe.*'kd'"):        # other β, same tag: refused
        train_student("squeezenet", steps=1, tag="kdrec", progress=False,
                      kd=experiments.kd_recipe("feature", teacher, "squeezenet", "quick", beta=0.5))
    other = _random_teacher()
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)                               # another teacher, same architecture
    with pytest.raises(ValueError, match="another recipe.*'kd'"):        # same settings, new teacher: refused
        train_student("squeezenet", steps=1, tag="kdrec", progress=False,
                      kd=experiments.kd_recipe("feature", other, "squeezenet", "quick"))


def test_weights_fingerprint_follows_the_values():
    a, b = _random_teacher(), _random_teacher()
    assert experiments.weights_fingerprint(a) == experiments.weights_fingerprint(b)   # same seed, same weights
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert experiments.weights_fingerprint(a) != experiments.weights_fingerprint(b)
    assert len(experiments.weights_fingerprint(a)) == 12


def test_localization_summary_separates_placement_from_ranking():
    import numpy as np

    from posekd_lib.data.datasets import TopDownDataset, dataset_splits
    from posekd_lib.evaluation.coco import coco_evaluate

    size = budget("quick").input_size
    val = dataset_splits("quick").val
    samples = TopDownDataset(val.ann_file, val.img_dir, size, train=False).samples
    results = []
    for i, s in enumerate(samples):                       # every other person placed 3 box-widths off
        kp = s["joints"].copy()
        kp[:, 2] = 1.0
        if i % 2:
            kp[:, 0] += 3 * s["box"][2]
        results.append({"image_id": s["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                        "score": 1.0 if i % 2 else 0.5})  # the misplaced persons ranked first
    loc = experiments.localization_summary(results, val, size)
    good = len(samples[::2]) / len(samples)
    assert loc["OKS>=0.5"] == pytest.approx(good) and loc["mean_OKS"] == pytest.approx(good, abs=1e-3)
    ap = coco_evaluate(val.ann_file, results)["AP"]
    assert ap < loc["AP_oracle"] <= 1.0                  # the same keypoints, ranked by their true OKS
    assert loc["rank_corr"] < -0.9                       # every misplaced person outscores every good one
    flipped = [{**r, "score": 1.5 - r["score"]} for r in results]
    assert experiments.localization_summary(flipped, val, size)["rank_corr"] == pytest.approx(-loc["rank_corr"])
    with pytest.raises(ValueError, match="results for"):
        experiments.localization_summary(results[:-1], val, size)
    assert np.isfinite(loc["AP_oracle"])


def test_train_ai8x_evaluates_float_qat_and_int8_and_reuses_the_run():
    run = experiments.train_ai8x("tiny", kd=None, steps=(2, 1), progress=False)
    assert set(run.metrics) == set(run.results) == {"float", "qat", "int8"}
    assert all(0 <= m["AP"] <= 1 and 0 <= m["PCK@0.2"] <= 1 for m in run.metrics.values())
    assert run.histories["float"].step[-1] == 2 and run.histories["qat"].step[-1] == 1
    assert all(int(m.weight_bits.item()) == 8 for _, m in ai8x_layers(run.model))
    assert all(int(m.weight_bits.item()) == 0 for _, m in ai8x_layers(run.float_model))
    latest = run.run_dir / "latest.pt"
    stamp = latest.stat().st_mtime_ns
    again = experiments.train_ai8x("tiny", kd=None, steps=(2, 1), progress=False)
    assert latest.stat().st_mtime_ns == stamp and again.metrics == run.metrics
    assert _same_weights(run.model, again.model)
    with pytest.raises(ValueError, match="logits setting"):
        experiments.train_ai8x("tiny", kd="feature", teacher=_random_teacher(), steps=(1, 1), progress=False)


def test_train_ai8x_learning_curve_scores_the_student_on_fixed_images():
    from posekd_lib.models.ai8x_models import AI8X_STUDENT_HEATMAP, AI8X_STUDENT_INPUT, HeatmapView
    from posekd_lib.data.datasets import dataset_splits
    from posekd_lib.evaluation.coco import curve_evaluator, first_images

    run = experiments.train_ai8x("tiny", kd=None, steps=(4, 2), tag="curve", progress=False, curve_every=2)
    assert [e["step"] for e in run.histories["float"].evals] == [2, 4]
    assert [e["step"] for e in run.histories["qat"].evals] == [2]
    val = dataset_splits("quick").val
    again = curve_evaluator(val, first_images(val.ann_file, experiments.CURVE_IMAGES), AI8X_STUDENT_INPUT,
                            AI8X_STUDENT_HEATMAP, experiments.budget("quick").sigma)(HeatmapView(run.float_model).eval())
    assert again["mean_OKS"] == run.histories["float"].evals[-1]["mean_OKS"]


@pytest.mark.slow  # trains three quick-mode students and evaluates the teacher: ~30 s
def test_bench_kd_prints_the_comparison_with_long_tags_aligned(capsys):
    import importlib.util

    from posekd_lib.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("bench_kd", REPO_ROOT / "benchmarks" / "bench_kd.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.setting_config("kl") == ("kl_squeezenet", "kl")
    assert bench.setting_config("feature_cached_squeezenet") == ("feature_cached_squeezenet", "feature_cached")
    with pytest.raises(SystemExit, match="trains no distilled student"):
        bench.setting_config("baseline_squeezenet")
    with pytest.raises(SystemExit):      # a --set variant must be named
        bench.main(["--mode", "quick", "--seeds", "0", "--settings", "feature", "--set", "distill.terms.1.weight=0"])
    capsys.readouterr()

    assert bench.main(["--mode", "quick", "--seeds", "0", "--settings", "feature", "--set", "distill.terms.1.weight=0",
                       "--name", "hints_alone_with_a_long_name"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("setting") and "gap closed" in line)
    row = next(line for line in out.splitlines() if line.startswith("feature-hints_alone_with_a_long_name "))
    assert len(row) == len(header), "the KD row is not aligned with the header"
    assert re.search(r"(-?\d+\.\d|nan) % ± (\d+\.\d|nan)$", row), row   # the gap it closed, last column
    assert "vs baseline at every budget" in out

    with pytest.raises(SystemExit):      # a name that would not make a plain folder name
        bench.main(["--mode", "quick", "--seeds", "0", "--settings", "feature", "--name", "a/b"])
    capsys.readouterr()
    from posekd_lib.config import run_paths

    folder = run_paths("quick").checkpoints / "feature-hints_alone_with_a_long_name_squeezenet_s0"
    recipe = json.loads((folder / "run_info.json").read_text())["recipe"]["kd"]
    assert recipe["alpha_logits"] == 0.0 and recipe["pairs"] == {"neck.4": "stage4"}   # the config, one term off


@pytest.mark.slow  # 3 quick-mode settings, 2 + 2 steps each: ~20 s
def test_bench_kd_step_prints_seconds_per_step_and_the_ratio_to_a_plain_step(capsys):
    import importlib.util

    from posekd_lib.config import REPO_ROOT

    spec = importlib.util.spec_from_file_location("bench_kd_step", REPO_ROOT / "benchmarks" / "bench_kd_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--mode", "quick", "--steps", "2", "--warmup", "2",
                       "--settings", "baseline", "feature-cached", "kl-live"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("baseline", "feature-cached", "kl-live")}
    assert set(rows) == {"baseline", "feature-cached", "kl-live"} and rows["baseline"][1] == "1.00"
    assert all(float(s) > 0 for s, _ in rows.values())
    for bad in ("nope", "feature-warm"):
        with pytest.raises(SystemExit, match="--settings"):
            bench.main(["--mode", "quick", "--steps", "1", "--warmup", "1", "--settings", bad])


@pytest.mark.slow  # a 4-step quick-mode student with two curve points: ~15 s
def test_bench_learning_draws_the_curve_of_a_config_run(capsys):
    import importlib.util

    from posekd_lib.config import REPO_ROOT, run_paths

    spec = importlib.util.spec_from_file_location("bench_learning", REPO_ROOT / "benchmarks" / "bench_learning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["baseline_squeezenet", "--mode", "quick", "--steps", "4", "--eval-every", "2", "--quiet",
                "--name", "curve_test"])
    curve = json.loads((run_paths("quick").root / "curves" / "curve_test" / "curve.json").read_text())
    assert [p["step"] for p in curve["points"]] == [2, 4] and curve["run_dir"] == "curve_test_squeezenet_s0"
    assert all(0 <= p["AP"] <= 1 and p["samples"] == 8 * p["step"] for p in curve["points"])
    assert "| 4 | 32 |" in capsys.readouterr().out


def test_extra_unlabelled_images_join_the_training_set_and_the_teacher_cache(monkeypatch):
    """data.extra_unlabelled: every label kept, the persons of N more generated images added without
    keypoints (negative, unique annotation ids, their own image folder); the teacher cache covers
    them (a batch of only extra persons reads it), and a KD run with them runs no teacher forward."""
    from posekd_lib.distill import freeze
    from posekd_lib.models.teachers import load_teacher
    from posekd_lib.train.experiments import kd_recipe, teacher_cache_for

    full = experiments.training_set("quick")
    more = experiments.training_set("quick", extra_unlabelled=2)
    n = len(full)
    assert len(more) > n and [s["ann_id"] for s in more.samples[:n]] == [s["ann_id"] for s in full.samples]
    extra = more.samples[n:]
    assert all(s["ann_id"] < 0 and not s["joints"].any() for s in extra)
    assert len({s["ann_id"] for s in extra}) == len(extra) and len(full.samples) == n   # full untouched
    assert more.image_path(n).parent != full.img_dir and more.image_path(n).is_file()
    assert more.image_path(0) == full.image_path(0)
    assert more[n]["target_weight"].sum() == 0 and more[0]["target_weight"].sum() > 0
    with pytest.raises(ValueError, match="every label kept"):
        experiments.training_set("quick", labelled=0.5, extra_unlabelled=2)
    with pytest.raises(ValueError, match="needs kd"):
        train_student("squeezenet", mode="quick", steps=1, tag="x2", extra_unlabelled=2, progress=False)

    teacher = freeze(load_teacher(mode="quick")[0])
    cache = teacher_cache_for(teacher, "quick", extra_unlabelled=2)
    assert len(cache) == len(more) and len(teacher_cache_for(teacher, "quick")) == n   # two caches, two files
    rows = torch.utils.data.Subset(more, range(n, len(more)))
    batch = next(iter(torch.utils.data.DataLoader(rows, batch_size=len(rows))))
    assert cache.for_batch(batch).shape[0] == len(rows)           # the extra persons are cached rows
    kd = kd_recipe("kl", teacher, "squeezenet", "quick", extra_unlabelled=2)
    calls = []
    monkeypatch.setattr(type(teacher), "forward", lambda self, x: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("the teacher ran")))
    run = train_student("squeezenet", mode="quick", kd=kd, tag="kl_x2", progress=False, steps=2, extra_unlabelled=2)
    assert not calls and experiments._read_json(run.run_dir / "run_info.json")["recipe"]["extra_unlabelled"] == 2


def test_kd_recipe_with_the_teacher_cache_runs_no_teacher_forward(monkeypatch):
    """teacher_cache=True: the heatmaps come from the cache (built once, stored, named by the
    teacher), the recipe says so, and a feature setting is refused."""
    from posekd_lib.distill import freeze
    from posekd_lib.train.experiments import kd_recipe, teacher_cache_for, train_student
    from posekd_lib.models.teachers import load_teacher

    teacher = freeze(load_teacher(mode="quick")[0])
    cache = teacher_cache_for(teacher, "quick")
    assert len(cache) > 0 and teacher_cache_for(teacher, "quick").heatmaps.shape == cache.heatmaps.shape  # reloaded
    kd = kd_recipe("fpd", teacher, "squeezenet", "quick")           # the logits settings' default
    assert kd.recipe["teacher_cache"] is True
    assert "teacher_cache" not in kd_recipe("fpd", teacher, "squeezenet", "quick", teacher_cache=False).recipe
    calls = []
    monkeypatch.setattr(type(teacher), "forward", lambda self, x: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("the teacher ran")))
    run = train_student("squeezenet", mode="quick", kd=kd, tag="fpd_cached", progress=False, steps=2)
    assert not calls and run.history.step[-1] == 2


def test_cached_hints_equal_the_live_teacher_on_plain_crops_and_run_no_teacher_forward(monkeypatch):
    """feature + teacher_cache=True: the hinted layer's features and the heatmaps come from caches;
    on un-augmented crops their values are the live teacher's (float16), so the loss terms agree; a
    training run then runs no teacher forward; a batch the caches do not hold gets the live teacher."""
    from posekd_lib.train.budgets import budget, training_set
    from posekd_lib.distill import freeze
    from posekd_lib.train.experiments import build_student_model, kd_recipe, train_student
    from posekd_lib.models.teachers import load_teacher

    teacher = freeze(load_teacher(mode="quick")[0])
    student = build_student_model("squeezenet")
    cached = kd_recipe("feature", teacher, "squeezenet", "quick", teacher_cache=True)
    assert cached.recipe["teacher_cache"] is True and "teacher_cache" not in kd_recipe(
        "feature", teacher, "squeezenet", "quick").recipe
    kd_cached = cached(student, 10)
    kd_live = kd_recipe("feature", teacher, "squeezenet", "quick")(student, 10)
    plain = training_set(budget("quick"))
    plain.train, plain.aug = False, None
    batch = next(iter(torch.utils.data.DataLoader(plain, batch_size=4, shuffle=False)))
    with torch.no_grad():
        c, live = kd_cached.teacher_outputs(batch), kd_live.teacher_outputs(batch)
    assert c["features"][0].shape == live["features"][0].shape
    # float16 storage; the cache ran the teacher on batches of 64, so a value may round to the next float16
    torch.testing.assert_close(c["features"][0], live["features"][0], rtol=2 ** -10, atol=1e-4)
    torch.testing.assert_close(c["heatmaps"], live["heatmaps"], rtol=2 ** -10, atol=1e-4)
    bad = {**batch, "meta": {**batch["meta"], "ann_id": batch["meta"]["ann_id"] + 10**9}}
    with pytest.warns(RuntimeWarning, match="the live teacher runs for such batches"):
        fallback = kd_cached.teacher_outputs(bad)
    torch.testing.assert_close(fallback["features"][0], live["features"][0])
    for kd in (kd_cached, kd_live):
        kd.remove()

    sizes, forward = [], type(teacher).forward
    monkeypatch.setattr(type(teacher), "forward", lambda self, x: sizes.append(x.shape[0]) or forward(self, x))
    run = train_student("squeezenet", mode="quick", kd=kd_recipe("feature", teacher, "squeezenet", "quick",
                                                                 teacher_cache=True),
                        tag="feature_cached", progress=False, steps=2)
    assert sizes == [1] and run.history.step[-1] == 2 and "feat" in run.history.losses  # only the adapters' sizing


def test_the_teacher_cache_falls_back_to_the_live_teacher_where_it_does_not_cover_the_data():
    """A labelled subset re-indexes the persons: the cache (built on every training person) refuses
    those batches by their annotation ids, and the distiller runs the teacher live instead."""
    from posekd_lib.distill import freeze
    from posekd_lib.train.experiments import kd_recipe, train_student
    from posekd_lib.models.teachers import load_teacher

    teacher = freeze(load_teacher(mode="quick")[0])
    with pytest.warns(RuntimeWarning, match="the live teacher runs for such batches"):
        run = train_student("squeezenet", mode="quick", kd=kd_recipe("fpd", teacher, "squeezenet", "quick"),
                            tag="fpd_half", labelled=0.5, progress=False, steps=2)
    assert run.history.step[-1] == 2


def test_bench_teacher_ensemble_scores_a_member_and_the_mean(capsys):
    """Two copies of one teacher average to the same heatmaps, so the same AP; a bad item names itself."""
    import importlib.util

    from posekd_lib.config import REPO_ROOT
    from posekd_lib.models.teachers import teacher_weights_path

    spec = importlib.util.spec_from_file_location("bench_teacher_ensemble",
                                                  REPO_ROOT / "benchmarks" / "bench_teacher_ensemble.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    w = teacher_weights_path("demo", "quick")
    assert bench.main(["--mode", "quick", "--weights", f"a={w}", f"b={w}", "--combos", "a", "a+b"]) == 0
    rows = {line.split()[0]: float(line.split()[2]) for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in ("a", "a+b")}
    assert set(rows) == {"a", "a+b"} and abs(rows["a"] - rows["a+b"]) < 1e-3
    with pytest.raises(SystemExit):
        bench.main(["--mode", "quick", "--weights", f"a={w}", "--combos", "a+c"])
    assert "no --weights for c" in capsys.readouterr().err


def test_bench_decoding_scores_teachers_and_shipped_runs_with_both_decoders(capsys):
    """Every shipped top-down run is listed (no bottom-up run, one folder per MAX78000 run); the
    official column is evaluate_topdown's own AP, and a MAX78000 run gives a float and an int8 row."""
    import importlib.util

    from posekd_lib.config import REPO_ROOT
    from posekd_lib.data.datasets import dataset_splits
    from posekd_lib.evaluation.coco import evaluate_topdown
    from posekd_lib.models.teachers import load_teacher

    spec = importlib.util.spec_from_file_location("bench_decoding", REPO_ROOT / "benchmarks" / "bench_decoding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = bench.top_down_runs()
    assert "ref_baseline_squeezenet_s0" in runs and "ref_ai8x_tiny_gt_s0_qat" in runs
    assert not [r for r in runs if "bottomup" in r or r.endswith("_float")]
    assert bench.main(["--mode", "quick", "--teachers", "demo", "--runs", "ref_ai8x_tiny_gt_s0_qat"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["teacher", "ref_ai8x_tiny_gt_s0_qat", "ref_ai8x_tiny_gt_s0_qat"]
    assert [r[1] for r in rows[1:]] == ["float", "int8"]
    model, info = load_teacher("demo", mode="quick")
    official = evaluate_topdown(model, dataset_splits("quick").val, info.input_size, info.heatmap_size, info.sigma)
    assert float(rows[0][3]) == pytest.approx(official["AP"], abs=1e-4)      # teacher, card AP, official, dark
    assert all(0.0 <= float(v) <= 1.0 for r in rows for v in r[-5:-3])
