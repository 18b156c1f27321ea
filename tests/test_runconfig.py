"""Run configs: YAML in and out, --set overrides, errors that name the key, ids, and the runs they make."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posekd_lib.runs import runconfig as rc
from posekd_lib.runs import table as rt
from posekd_lib.train.experiments import budget, kd_recipe
from posekd_lib.models.registry import model_entry

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

FULL = {
    "name": "hints-l10", "seed": 2,
    "data": {"mode": "quick", "coco_root": None, "labelled": 0.1, "unlabelled": True, "extra_unlabelled": 0,
             "sigma": None},
    "model": {"student": "mobilenetv3", "options": {"output_stride": 16}},
    "augmentation": None,
    "optim": {"steps": 1000, "batch_size": 16, "lr": 0.001, "schedule": "cosine", "loss": "mse", "eval_every": 250,
              "amp": None},
    "distill": {"teacher": None, "schedule": "linear_decay", "options": {"teacher_flip_test": True},
                "terms": [{"kind": "hint", "weight": 0.25, "pairs": {"neck.2": "stage3"},
                           "options": {"feature_loss": "cwd"}},
                          {"kind": "kl", "weight": 0.5, "options": {"temperature": 0.5}, "pairs": {}}]},
    "qat": {"steps": 150, "lr_scale": 0.1},
    "quantize": {"calib_samples": 32, "method": "Percentile", "per_channel": True}, "prune": {"ratio": 0.0},
    "export": {"opset": 17, "dynamic_batch": False, "dynamo": False},
    "stages": ["distil", "evaluate", "export"],
}


def test_configs_folder_holds_the_notebook_runs_each_with_a_header():
    names = {(c.name, c.model.student) for c in map(rc.from_yaml, CONFIGS)}
    assert names >= {("baseline", "squeezenet"), ("baseline", "mobilenetv3"), ("fpd", "squeezenet"),
                     ("kl", "squeezenet"), ("feature", "squeezenet"), ("ai8x_tiny_fpd", "ai85posenet")}
    for path in CONFIGS:
        assert path.read_text().startswith("# "), f"{path.name} has no comment header"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_yaml_round_trip_of_every_config(path, tmp_path):
    cfg = rc.from_yaml(path)
    assert rc.from_yaml(rc.to_yaml(cfg)) == cfg
    rc.to_yaml(cfg, tmp_path / "config.yaml")
    assert rc.from_yaml(tmp_path / "config.yaml") == cfg


def test_yaml_round_trip_of_a_config_that_sets_everything():
    cfg = rc.from_dict(FULL)
    assert rc.to_dict(cfg) == FULL
    assert rc.from_yaml(rc.to_yaml(cfg)) == cfg
    assert isinstance(cfg.distill.terms[0], rc.DistillTerm) and cfg.distill.terms[1].options == {"temperature": 0.5}


def test_overrides_are_yaml_values_at_dotted_keys():
    base = rc.from_dict(FULL)
    cfg = rc.apply_overrides(base, ["optim.lr=1e-3", "optim.steps=2000", "optim.batch_size=null",
                                    "distill.terms.0.weight=1", "distill.terms.1.options.temperature=0.2",
                                    "distill.terms.0.pairs={neck.4: stage4}", "data.unlabelled=false",
                                    "stages=[distil, evaluate]", "name=other", "distill.options.teacher_weight=gt"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float) and cfg.optim.steps == 2000
    assert cfg.optim.batch_size is None and cfg.distill.terms[0].weight == 1.0
    assert cfg.distill.terms[1].options == {"temperature": 0.2}
    assert cfg.distill.terms[0].pairs == {"neck.4": "stage4"} and cfg.data.unlabelled is False
    assert cfg.stages == ["distil", "evaluate"] and cfg.name == "other"
    assert cfg.distill.options == {"teacher_flip_test": True, "teacher_weight": "gt"}
    assert base == rc.from_dict(FULL)            # the config overridden is not changed
    assert rc.from_yaml("name: x\noptim: {lr: 1e-3}\n").optim.lr == 1e-3   # PyYAML reads 1e-3 as a string
    assert rc.from_yaml("name: x\noptim: {amp: off}\n").optim.amp == "off"  # and a bare off as false


@pytest.mark.parametrize("data, key", [
    ({"seed": 0}, "name: missing"),
    ({"name": "x", "optim": {"lrr": 0.1}}, r"optim\.lrr: unknown key \(did you mean 'lr'\?\)"),
    ({"name": "x", "optim": {"steps": "many"}}, "optim.steps: expected int, got str"),
    ({"name": "x", "optim": {"steps": 1.5}}, "optim.steps: expected int, got float"),
    ({"name": "x", "data": {"unlabelled": "yes"}}, "data.unlabelled: expected bool"),
    ({"name": "x", "data": {"mode": "tiny"}}, "data.mode: 'tiny' is not one of"),
    ({"name": "x", "data": {"extra_unlabelled": 100}}, r"data.extra_unlabelled: crops without keypoints need a teacher"),
    ({"name": "x", "data": {"extra_unlabelled": -1}}, "data.extra_unlabelled: -1 is a negative image count"),
    ({"name": "x", "data": {"extra_unlabelled": 100, "labelled": 0.5}, "distill": {"terms": [{"kind": "kl"}]},
      "stages": ["distil"]}, "data.extra_unlabelled: adds images to every label"),
    ({"name": "x", "data": {"extra_unlabelled": 100}, "model": {"student": "ai85posenet"},
      "distill": {"terms": [{"kind": "fpd"}]}, "stages": ["distil", "qat"]},
     "data.extra_unlabelled: wired for the top-down students of train_student, not ai85posenet"),
    ({"name": "x", "data": {"labelled": 1.5}}, "data.labelled: 1.5 is not a fraction"),
    ({"name": "x", "model": {"student": "squeezenett"}}, "model.student: 'squeezenett'.*did you mean 'squeezenet'"),
    ({"name": "x", "model": {"student": "mobilenetv3", "options": {"output_stride": 8}}}, "model.options:"),
    ({"name": "x", "optim": {"lr": -1.0}}, "optim.lr: -1.0 must be positive"),
    ({"name": "x", "optim": {"loss": "l1"}}, "optim.loss: 'l1' is not one of"),
    ({"name": "x", "optim": {"loss": "mse_pos10"}}, "optim.loss: 'mse_pos10' is not one of"),
    ({"name": "x", "data": {"sigma": 3.5}}, "data.sigma: 3.5; a positive heatmap σ of the bottom-up student"),
    ({"name": "x", "model": {"student": "ai85bottomup", "options": {"input_size": [160, 120]}}, "stages": ["train", "qat"]},
     r"model.options.input_size: \[160, 120\]; give \[width, height\], multiples of 16"),
    ({"name": "x", "model": {"student": "ai85posenet", "options": {"input_size": [160, 128]}}, "stages": ["train", "qat"]},
     "model.options.input_size: unknown option of ai85posenet; it has 'variant'"),
    ({"name": "x", "model": {"student": "ai85bottomup"}, "data": {"sigma": 0.0}, "stages": ["train", "qat"]},
     "data.sigma: 0.0; a positive"),
    ({"name": "x", "model": {"student": "ai85bottomup"}, "optim": {"loss": "awing"}, "stages": ["train", "qat"]},
     r"optim.loss: 'awing' is not one of \['mse', 'mse_pos10'\]"),
    ({"name": "x", "distill": {"terms": [{"kind": "fpd"}, {"kind": "hintt"}]}, "stages": ["distil"]},
     r"distill\.terms\[1\]\.kind: 'hintt'.*did you mean 'hint'"),
    ({"name": "x", "distill": {"terms": [{"weight": 1.0}]}, "stages": ["distil"]}, r"distill\.terms\[0\]\.kind: missing"),
    ({"name": "x", "distill": {"terms": {"kind": "fpd"}}, "stages": ["distil"]}, "distill.terms: expected a list"),
    ({"name": "x", "distill": {"terms": [{"kind": "fpd", "pairs": {"a": "b"}}]}, "stages": ["distil"]},
     r"distill\.terms\[0\]\.pairs: only a hint term"),
    ({"name": "x", "augmentation": "heavy"}, "augmentation: 'heavy' is not one of"),
    ({"name": "x", "optim": {"amp": "bf17"}}, "optim.amp: 'bf17' is not one of .*did you mean 'bf16'"),
    ({"name": "x", "prune": {"ratio": 0.25}}, "prune.ratio: 0.25; pruning is not wired"),
    ({"name": "x", "stages": ["train", "izer"]}, r"stages\[1\]: 'izer' is not wired"),
    ({"name": "x", "stages": ["train", "qat"]}, "stages: 'qat' is wired for model.student ai85posenet or ai85bottomup only"),
    ({"name": "x", "model": {"student": "ai85posenet"}}, "stages: 'qat' trains the MAX78000 student"),
    ({"name": "x", "model": {"student": "ai85posenet", "options": {"variant": "huge"}}, "stages": ["train", "qat"]},
     "model.options.variant: 'huge' is not one of"),
    ({"name": "x", "model": {"student": "ai85posenet"}, "stages": ["train", "qat", "export"]},
     "stages: 'export' is the ONNX path"),
    ({"name": "x", "model": {"student": "ai85posenet"}, "optim": {"amp": "bf16"}, "stages": ["train", "qat"]},
     "optim.amp: 'bf16'; train_ai8x trains in float32"),
    ({"name": "x", "model": {"student": "ai85posenet"}, "qat": {"lr_scale": 0.5}, "stages": ["train", "qat"]},
     "qat.lr_scale: 0.5"),
    ({"name": "x", "quantize": {"method": "minmax"}}, "quantize.method: 'minmax' is not one of .*'MinMax'"),
    ({"name": "x", "stages": ["tran"]}, r"stages\[0\]: 'tran' is not one of .*did you mean 'train'"),
    ({"name": "x", "stages": ["distil"]}, "distill.terms: empty"),
    ({"name": "x y"}, "name: 'x y'"),
    ({"name": "x", "optim": 3}, "optim: expected a mapping"),
])
def test_config_errors_name_the_key(data, key):
    with pytest.raises(rc.ConfigError, match=key):
        rc.from_dict(data)


def test_override_and_option_errors_name_the_key(tmp_path):
    cfg = rc.from_yaml(REPO / "configs" / "kl_squeezenet.yaml")
    for item, key in [("optim.stepz=3", r"optim\.stepz: unknown key \(did you mean 'steps'\?\)"),
                      ("distill.terms.2.weight=1", r"distill\.terms\[2\]: no such item"),
                      ("optim.steps=abc", "optim.steps: expected int"), ("optim.steps", "expected key=value"),
                      ("seed.x=1", "seed: is a value")]:
        with pytest.raises(rc.ConfigError, match=key):
            rc.apply_overrides(cfg, [item])
    bad = rc.apply_overrides(cfg, ["distill.terms.0.options.temprature=1"])
    with pytest.raises(rc.ConfigError, match=r"distill\.terms\[0\]\.options\.temprature: unknown option"
                                              r" \(did you mean 'temperature'\?\); a kl term takes"):
        rc.kd_setting(bad)
    hint_option_on_kl = rc.apply_overrides(cfg, ["distill.terms.0.options.normalize=none"])
    with pytest.raises(rc.ConfigError, match=r"distill\.terms\[0\]\.options\.normalize: unknown option; a kl term "
                                              r"takes \['teacher_weight', 'temperature'\]"):
        rc.kd_setting(hint_option_on_kl)
    with pytest.raises(rc.ConfigError, match=r"distill\.options\.schedule: unknown option; the LogitsKD"):
        rc.kd_setting(rc.apply_overrides(cfg, ["distill.options.schedule=linear_decay"]))
    path = tmp_path / "kl_squeezenet.yaml"
    path.write_text(rc.to_yaml(cfg).replace("  lr: null", "  lr: fast"))
    with pytest.raises(rc.ConfigError, match=r"kl_squeezenet.yaml: optim.lr: expected float, got str 'fast'"):
        rc.from_yaml(path)


def test_config_id_is_stable_and_follows_the_content():
    cfg = rc.from_dict(FULL)
    assert rc.config_id(cfg) == "ed939c4ff4"                   # pinned: the same on every machine and run
    shuffled = {k: FULL[k] for k in reversed(list(FULL))}
    assert rc.config_id(rc.from_dict(shuffled)) == rc.config_id(cfg)
    assert rc.config_id(rc.from_yaml(rc.to_yaml(cfg))) == rc.config_id(cfg)
    assert rc.config_id(rc.apply_overrides(cfg, ["seed=3"])) != rc.config_id(cfg)
    assert rc.config_id(rc.apply_overrides(cfg, ["optim.lr=0.001"])) == rc.config_id(cfg)   # same value
    assert len({rc.config_id(rc.from_yaml(p)) for p in CONFIGS}) == len(CONFIGS)


@pytest.mark.parametrize("name", ["fpd", "kl", "feature"])
def test_distillation_terms_map_onto_the_notebooks_kd_recipe(name):
    """Each config's terms give exactly the recipe notebooks 03-04 make, so the run is the same one."""
    cfg = rc.from_yaml(REPO / "configs" / f"{name}_squeezenet.yaml")
    tag, overrides = rc.kd_setting(cfg)
    assert kd_recipe(tag, None, "squeezenet", "quick", **overrides).recipe == \
        kd_recipe(name, None, "squeezenet", "quick").recipe
    hints_alone = rc.apply_overrides(cfg, ["distill.terms.1.weight=0"]) if name == "feature" else None
    if hints_alone is not None:
        assert kd_recipe(*rc.kd_setting(hints_alone)[:1], None, "squeezenet", "quick",
                         **rc.kd_setting(hints_alone)[1]).recipe == \
            kd_recipe("feature", None, "squeezenet", "quick", alpha_logits=0.0).recipe


def test_a_recipe_is_read_from_its_config(tmp_path, monkeypatch):
    """The recipes are the configs' distill sections: what a config says is what kd_recipe builds,
    and the settings a notebook prints follow an edit of the file."""
    from posekd_lib.train import recipes

    assert recipes.recipe_settings("kl") == {"method": "logits", "kind": "kl", "alpha": 0.5, "temperature": 0.5,
                                             "teacher_cache": True}
    assert recipes.recipe_settings("feature") == {"method": "feature", "beta": 1.0, "alpha_logits": 0.5,
                                                  "kind": "mse"}
    feature = rc.from_yaml(REPO / "configs" / "feature_squeezenet.yaml")
    assert feature.distill.terms[0].pairs == model_entry("squeezenet").hint_pairs    # the two say the same
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kl_squeezenet.yaml").write_text(
        (REPO / "configs" / "kl_squeezenet.yaml").read_text().replace("temperature: 0.5", "temperature: 2.0"))
    monkeypatch.setattr(recipes, "REPO_ROOT", tmp_path)
    recipes._recipe_settings.cache_clear()
    try:
        assert recipes.recipe_settings("kl")["temperature"] == 2.0
        assert kd_recipe("kl", None, "squeezenet", "quick").recipe["temperature"] == 2.0
        with pytest.raises(FileNotFoundError):
            recipes.recipe_settings("fpd")
    finally:
        recipes._recipe_settings.cache_clear()
    with pytest.raises(KeyError, match="unknown distillation setting 'fitnet'; choose one of"):
        recipes.recipe_settings("fitnet")


def test_kd_setting_of_other_terms():
    cfg = rc.from_dict(FULL)
    tag, over = rc.kd_setting(cfg)
    assert tag == "feature"
    assert over == {"beta": 0.25, "pairs": {"neck.2": "stage3"}, "kind": "kl", "temperature": 0.5,
                    "feature_loss": "cwd", "teacher_flip_test": True, "schedule": "linear_decay"}


def test_budget_fields_and_folder():
    cfg = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "baseline_squeezenet.yaml"),
                             ["optim.batch_size=4", "optim.lr=0.01", "data.mode=quick"])
    from posekd_lib.train.experiments import budget_fields

    assert rc.budget_fields(cfg) == {"batch_size": 4, "lr": 0.01}
    with budget_fields(**rc.budget_fields(cfg)):
        b = budget("quick")
    assert (b.batch_size, b.lr) == (4, 0.01) and budget("quick").batch_size == 8   # only inside the block
    assert rc.run_dir(cfg).name == "baseline_squeezenet_s0" and rc.run_dir(cfg).parent.parent.name == "quick"
    fields = {f.name for f in dataclasses.fields(type(budget("quick")))}
    for key, field in (("augmentation", "aug"), ("optim.amp", "amp")):
        value = "light" if field == "aug" else "bf16"
        other = rc.apply_overrides(cfg, [f"{key}={value}"])
        if field in fields:
            assert rc.budget_fields(other)[field] == value
        else:
            with pytest.raises(rc.ConfigError, match=f"{key}: '{value}' set, but .* no '{field}' field"):
                rc.budget_fields(other)


def test_overrides_that_change_the_run_rename_it(monkeypatch):
    from posekd_lib.run import prepare

    path = REPO / "configs" / "fpd_squeezenet.yaml"
    monkeypatch.setenv("POSEKD_MODE", "quick")
    same = prepare(path)
    assert same.name == "fpd" and same.data.mode == "quick"
    assert prepare(path, ["stages=[distil]"]).name == "fpd"
    assert prepare(path, ["export.opset=18", "quantize.calib_samples=8"]).name == "fpd"   # files after training
    assert prepare(path, mode="workshop").data.mode == "workshop"
    longer = prepare(path, ["optim.steps=2000"])
    assert longer.name == f"fpd-{rc.config_id(rc.apply_overrides(same, ['optim.steps=2000']))[:6]}"
    assert prepare(path, ["optim.steps=2000", "name=fpd2k"]).name == "fpd2k"
    assert prepare(path, ["distill.terms.0.weight=0.5"]).name == "fpd"     # the value it already has
    seed1 = prepare(path, ["seed=1", "model.student=mobilenetv3"])          # named by the folder already
    assert seed1.name == "fpd" and rc.run_dir(seed1).name == "fpd_mobilenetv3_s1"


def test_a_folder_keeps_the_config_it_ran_with():
    from posekd_lib.run import _check_folder, prepare, run_config

    cfg = prepare(REPO / "configs" / "baseline_squeezenet.yaml", ["name=folder-check"], mode="quick")
    rc.to_yaml(rc.apply_overrides(cfg, ["optim.lr=0.5"]), rc.run_dir(cfg) / "config.yaml")
    with pytest.raises(rc.ConfigError, match=r"name: run 'folder-check' .* another config .*'optim.lr': \(0.5, None\)"):
        run_config(cfg)
    rc.to_yaml(rc.apply_overrides(cfg, ["stages=[train]"]), rc.run_dir(cfg) / "config.yaml")
    _check_folder(cfg)                       # other stages alone are no other run: nothing raised
    rc.run_dir(cfg).joinpath("config.yaml").unlink()


@pytest.mark.slow  # trains two 2-step quick-mode students: ~20 s
def test_a_config_run_equals_the_notebook_call_for_the_same_seed():
    from posekd_lib.train.experiments import train_student
    from posekd_lib.models.teachers import load_teacher
    from posekd_lib.distill import freeze

    teacher = freeze(load_teacher(mode="quick")[0])
    cfg = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "fpd_squeezenet.yaml"),
                             ["data.mode=quick", "optim.steps=2", "name=fpd-cfg"])
    ours = rc.train_run(cfg, teacher=teacher, progress=False)
    direct = train_student("squeezenet", mode="quick", seed=0, tag="fpd-direct", steps=2, progress=False,
                           kd=kd_recipe("fpd", teacher, "squeezenet", "quick"))
    assert ours.metrics["AP"] == direct.metrics["AP"] and ours.metrics["PCK@0.2"] == direct.metrics["PCK@0.2"]
    assert ours.results == direct.results
    sa, sb = ours.model.state_dict(), direct.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow  # every configs/ file trained in quick mode (4 steps each) and evaluated, one process: 2-5 min
def test_every_config_runs_in_quick_mode(tmp_path, monkeypatch):
    # from an empty run folder: a config that only works once a notebook or another test has built
    # something (a dataset, a teacher cache) fails here
    monkeypatch.setenv("POSEKD_HOME", str(tmp_path / "home"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "posekd_lib.run", *map(str, CONFIGS), "--mode", "quick", "--quiet"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = rt.runs_table("quick")
    for path in CONFIGS:
        cfg = rc.apply_overrides(rc.from_yaml(path), ["data.mode=quick"])
        folder = rc.run_dir(cfg)
        assert rc.from_yaml(folder / "config.yaml") == cfg
        assert (folder / "latest.pt").is_file()
        row = table[table["config_id"] == rc.config_id(cfg)]
        assert len(row) == 1, path.name
        row = row.iloc[0]
        assert row["name"] == cfg.name and row["model.student"] == cfg.model.student
        steps = rc.ai8x_steps(cfg)[0] if cfg.model.student in rc.MCU_STUDENTS else budget("quick").steps
        assert row["budget.steps"] == steps and 0 <= row["AP"] <= 1
        if cfg.model.student == rc.BOTTOM_UP_STUDENT:      # whole frames, no person boxes: no PCK
            assert 0 <= row["int8.AP"] <= 1 and row["budget.input_size"] == "x".join(map(str, rc.bottom_up_input(cfg.model)))
        else:
            assert 0 <= row["PCK@0.2"] <= 1
        assert f"| {cfg.name} " in out.stdout and rc.config_id(cfg) in out.stdout
    hinted = table[table["distill.kinds"].fillna("").str.contains("hint")]
    assert sorted(hinted["name"]) == ["feature", "feature_cached"]

    # again, one config with quantize and export stages: the trained run is loaded (not retrained)
    base = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "baseline_squeezenet.yaml"), ["data.mode=quick"])
    before = (rc.run_dir(base) / "latest.pt").stat().st_mtime_ns
    stages = ["train", "quantize", "evaluate", "export"]
    again = subprocess.run([*cmd[:3], str(REPO / "configs" / "baseline_squeezenet.yaml"), "--mode", "quick",
                            "--quiet", "--set", f"stages=[{', '.join(stages)}]"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (rc.run_dir(base) / "latest.pt").stat().st_mtime_ns == before
    assert (rc.run_dir(base) / "student.onnx").is_file() and (rc.run_dir(base) / "student.int8.onnx").is_file()
    written = rc.from_yaml(rc.run_dir(base) / "config.yaml")
    assert written.stages == stages and written.name == "baseline"
    row = rt.runs_table("quick").set_index("config_id").loc[rc.config_id(written)]
    assert 0 <= row["int8.AP"] <= 1 and row["onnx"].endswith("student.onnx")
    assert "int8.AP" in again.stdout


def test_budget_trend_is_a_query_over_the_runs_table(tmp_path):
    """The runs table answers "every budget of the hinted run": the rows of the hinted config (any
    name, seed and steps) pair with the baseline's by (steps, seed); other recipes and students and
    unpaired rows do not count."""
    import pandas as pd

    from posekd_lib.evaluation.coco import gap_by_budget

    feature = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "feature_squeezenet.yaml"), ["data.mode=quick"])
    baseline = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "baseline_squeezenet.yaml"), ["data.mode=quick"])
    other_beta = rc.apply_overrides(feature, ["distill.terms.0.weight=0.25", "name=feature-b"])
    mobilenet = rc.apply_overrides(baseline, ["model.student=mobilenetv3"])
    table_rows, expected = [], {}
    ap = iter(0.001 * i for i in range(1, 100))
    for steps in (4, 500, 2000):
        for seed in (0, 1):
            for cfg, tag in ((baseline, "baseline"), (feature, "feature"), (other_beta, "feature-beta=0.25"),
                             (mobilenet, "baseline")):
                if (steps, seed, tag) == (2000, 1, "feature"):
                    continue                                  # an unpaired baseline: not counted
                c = rc.apply_overrides(cfg, [f"seed={seed}", f"optim.steps={steps}"])
                value = next(ap)
                table_rows.append({"config_id": rc.config_id(c), **rt.flat_fields(c), "budget.steps": steps, "AP": value})
                if cfg is feature or cfg is baseline:
                    expected["kd" if cfg is feature else "baseline", steps, seed] = value
    path = tmp_path / "runs.csv"
    pd.DataFrame(table_rows).to_csv(path, index=False)          # through CSV, as runs_table reads it
    table = pd.read_csv(path, dtype={"config_id": str})
    ours = rt.budget_trend(table, feature, teacher_ap=0.3)
    assert ours == gap_by_budget(expected, 0.3)
    assert [r["steps"] for r in ours] == [4, 500, 2000] and ours[-1]["seeds"] == [0]
    assert len(rt.rows_like(table, feature)) == 5 and len(rt.rows_like(table, other_beta)) == 6


def test_the_command_reports_a_config_error_by_its_key(tmp_path, capsys):
    from posekd_lib.run import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noptim: {stepz: 3}\n")
    assert main([str(bad), "--mode", "quick"]) == 2
    assert "bad.yaml: optim.stepz: unknown key (did you mean 'steps'?)" in capsys.readouterr().err
    assert main([str(REPO / "configs" / "fpd_squeezenet.yaml"), "--set", "distill.terms.0.wieght=1"]) == 2
    assert "distill.terms.0.wieght: unknown key (did you mean 'weight'?)" in capsys.readouterr().err
    assert main([str(REPO / "configs" / "kl_squeezenet.yaml"), "--set", "distill.terms.0.options.tau=1",
                 "name=kl-bad-option"]) == 2
    assert "distill.terms[0].options.tau: unknown option; a kl term takes" in capsys.readouterr().err
    assert not list((rt.runs_csv("quick").parent / "checkpoints").glob("kl-bad-option*"))   # nothing written


def test_the_max78000_config_calls_train_ai8x_as_notebook_05(monkeypatch):
    from posekd_lib.train import experiments

    calls = []
    monkeypatch.setattr(experiments, "train_ai8x", lambda *a, **kw: calls.append((a, kw)))
    cfg = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "ai8x_tiny_fpd.yaml"), ["data.mode=quick"])
    teacher = object()
    rc.train_run(cfg, teacher=teacher, progress=False)
    (args, kw), = calls
    assert args == ("tiny",) and kw == {"mode": "quick", "seed": 0, "kd": "fpd", "teacher": teacher,
                                        "tag": "ai8x_tiny_fpd_s0", "steps": experiments.AI8X_STEPS["quick"],
                                        "progress": False, "curve_every": None}
    assert rc.run_dir(cfg).name == "ai8x_tiny_fpd_s0_qat"      # the folder train_ai8x's default tag gives
    kl_t1 = rc.apply_overrides(cfg, ["distill.terms.0.kind=kl", "distill.terms.0.options.temperature=1.0"])
    with pytest.raises(rc.ConfigError, match=r"distill.terms: \{'temperature': 1.0\} differ from the 'kl' recipe \(configs/kl_squeezenet.yaml\)"):
        rc.check_mapping(kl_t1)


def test_teacher_cache_is_a_distiller_option():
    """The logits settings distil from the teacher cache by default; ``distill.options.teacher_cache:
    false`` runs the teacher live (another recipe); the feature setting takes ``true`` (its hinted
    features cached too: configs/feature_cached_squeezenet.yaml) and names a mistyped option."""
    fpd = rc.from_yaml(Path(__file__).resolve().parent.parent / "configs" / "fpd_squeezenet.yaml")
    assert "teacher_cache" not in rc.kd_setting(fpd)[1]                      # the default, as notebook 03
    assert kd_recipe(*rc.kd_setting(fpd)[:1], None, "squeezenet", "quick").recipe["teacher_cache"] is True
    tag, overrides = rc.kd_setting(rc.apply_overrides(fpd, ["distill.options.teacher_cache=false"]))
    assert tag == "fpd" and overrides["teacher_cache"] is False
    assert "teacher_cache" not in kd_recipe(tag, None, "squeezenet", "quick", **overrides).recipe
    feature = rc.from_yaml(Path(__file__).resolve().parent.parent / "configs" / "feature_squeezenet.yaml")
    tag, overrides = rc.kd_setting(rc.apply_overrides(feature, ["distill.options.teacher_cache=true"]))
    assert tag == "feature" and kd_recipe(tag, None, "squeezenet", "quick", **overrides).recipe["teacher_cache"] is True
    assert "teacher_cache" not in kd_recipe(*rc.kd_setting(feature)[:1], None, "squeezenet", "quick").recipe
    with pytest.raises(rc.ConfigError, match=r"distill\.options\.teacher_cach: unknown option.*teacher_cache"):
        rc.kd_setting(rc.apply_overrides(feature, ["distill.options.teacher_cach=true"]))


def test_launch_runs_a_named_config_as_the_command_does_and_reloads_it(capsys):
    from posekd_lib.run import config_path, launch

    with pytest.raises(FileNotFoundError, match=r"no_such_config.yaml: no such config .*'kl_squeezenet'"):
        config_path("no_such_config")
    assert config_path("kl_squeezenet") == REPO / "configs" / "kl_squeezenet.yaml"
    run = launch("baseline_squeezenet", ["optim.steps=2", "name=launch-check"], mode="quick", progress=False)
    shown = capsys.readouterr().out
    assert "# run launch-check (data.mode=quick, optim.steps=2, name=launch-check): id" in shown
    assert "# Notebook 02" in shown and "stages: [train, evaluate]" in shown     # the file, with its comments
    folder = rc.run_dir(rc.apply_overrides(rc.from_yaml(config_path("baseline_squeezenet")),
                                           ["data.mode=quick", "optim.steps=2", "name=launch-check"]))
    from posekd_lib.config import shown_path

    assert f"folder {shown_path(folder)}\n" in shown
    stamp = (folder / "latest.pt").stat().st_mtime_ns
    again = launch("baseline_squeezenet", ["optim.steps=2", "name=launch-check"], mode="quick", progress=False,
                   show=False)
    assert (folder / "latest.pt").stat().st_mtime_ns == stamp and again.metrics == run.metrics


def test_too_few_persons_for_one_batch_say_how_to_fix_it():
    from posekd_lib.train.budgets import budget_fields
    from posekd_lib.train.experiments import train_student

    with budget_fields(batch_size=100_000):
        with pytest.raises(ValueError, match=r"make no batch of 100000; add training images or lower optim.batch_size"):
            train_student("squeezenet", mode="quick", tag="nobatch", progress=False)
        with pytest.raises(ValueError, match=r"labelled=0.5\) make no batch of 100000; label a larger fraction"):
            train_student("squeezenet", mode="quick", tag="nobatch", progress=False, labelled=0.5)


@pytest.mark.slow  # a 2-step full-mode run on the four real COCO images of ../shared: ~30 s
def test_a_short_full_mode_cpu_trial_runs_with_one_command(tmp_path, coco_sample):
    """The README's full-mode trial on a laptop: real COCO layout under COCO_ROOT, a few steps, a
    small batch, workers from the machine's cores (no oversubscription warning)."""
    root = tmp_path / "coco"
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(parents=True)
        for img in (coco_sample / "images").glob("*.jpg"):
            (root / f"{split}2017" / img.name).symlink_to(img)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}2017.json").symlink_to(coco_sample / "person_keypoints.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "COCO_ROOT": str(root), "POSEKD_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "posekd_lib.run", "configs/baseline_squeezenet.yaml", "--mode", "full", "--quiet",
           "--set", "optim.steps=2", "optim.batch_size=4", "name=cpu-trial"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| cpu-trial " in out.stdout and "worker processes in total" not in out.stderr


def test_the_bottom_up_student_is_a_config():
    """``model.student: ai85bottomup`` trains with bottom_up.train_bottom_up (float then QAT, like the
    top-down MAX78000 student): its variants are the bottom-up ones, it distils with one fpd term, and
    its run folder is the QAT one."""
    cfg = rc.apply_overrides(rc.from_yaml(REPO / "configs" / "bottomup_s4_kd.yaml"), ["data.mode=quick"])
    rc.validate(cfg)
    assert rc.ai8x_variant(cfg.model) == "tiny_s4"
    assert rc.run_dir(cfg).name == "bottomup_s4_kd_s0_qat"
    with pytest.raises(rc.ConfigError, match="model.options.variant"):
        rc.validate(rc.apply_overrides(cfg, ["model.options.variant=huge"]))
    with pytest.raises(rc.ConfigError, match="one fpd term"):
        rc.validate(rc.apply_overrides(cfg, ["distill.terms.0.kind=kl"]))
    with pytest.raises(rc.ConfigError, match="'qat'"):
        rc.validate(rc.apply_overrides(cfg, ["stages=[distil, evaluate]"]))


def test_bottom_up_configs_train_the_recipe_notebook_08_trains():
    from posekd_lib.train.bottom_up import RECIPE

    for name in ("bottomup_s4_gt", "bottomup_s4_kd"):
        cfg = rc.from_yaml(REPO / "configs" / f"{name}.yaml")
        got = {"variant": rc.ai8x_variant(cfg.model), "loss": cfg.optim.loss, "sigma": cfg.data.sigma}
        assert got == {k: RECIPE[k] for k in got}, name
        assert rc.bottom_up_input(cfg.model) == tuple(RECIPE.get("input_size", (128, 128))), name


def test_the_final_bottom_up_config_is_the_shipped_soft_kd_student():
    """Notebook 08 trains configs/bottomup_final.yaml live; it must be the design and recipe of the
    shipped reference student it is compared with (E35), only the budget differs."""
    cfg = rc.from_yaml(REPO / "configs" / "bottomup_final.yaml")
    rc.validate(rc.apply_overrides(cfg, ["data.mode=quick"]))
    shipped = rc.from_yaml(REPO / "reference" / "ref_bottomup_s4_kd_d2soft_s0_qat" / "config.yaml")
    for part in ("data", "model", "augmentation", "distill"):
        got, want = getattr(cfg, part), getattr(shipped, part)
        if part == "data":
            got, want = dataclasses.replace(got, mode=None), dataclasses.replace(want, mode=None)
        assert got == want, part
    assert (cfg.optim.schedule, cfg.optim.loss, cfg.qat.lr_scale) == (
        shipped.optim.schedule, shipped.optim.loss, shipped.qat.lr_scale)
    assert cfg.optim.steps is None and cfg.qat.steps is None          # the mode's live budget


def test_the_teacher_is_a_config_whose_errors_name_the_key():
    cfg = rc.from_yaml(REPO / "configs" / "teacher_w16.yaml")
    assert cfg.model.student == rc.TEACHER_MODEL and cfg.stages == ["train", "evaluate", "export"]
    assert rc.teacher_options(cfg.model)["train_multiple"] == 5
    assert (REPO / cfg.model.options["init_from"]).is_file()          # it continues a shipped teacher
    assert rc.run_dir(rc.apply_overrides(cfg, ["data.mode=quick"])).name == f"{cfg.name}_hrnet_s0"
    for sets, key in ((["model.options.width=32"], r"model\.options\.width: unknown option of hrnet"),
                      (["model.options.config=w99"], r"model\.options\.config: 'w99' is not one of"),
                      (["model.options.train_multiple=0.5"], r"model\.options\.train_multiple: 0\.5"),
                      (["stages=[distil, evaluate]", "distill.terms=[{kind: fpd}]"], r"stages\[0\]: 'distil'; a hrnet"),
                      (["optim.loss=awing"], r"optim\.loss: 'awing'; the hrnet teacher"),
                      (["data.labelled=0.5"], r"data\.labelled: 0\.5; the hrnet teacher")):
        with pytest.raises(rc.ConfigError, match=key):
            rc.apply_overrides(cfg, sets)
