"""Run what a config file names: ``python -m posekd_lib.run configs/<name>.yaml [...] [--set a.b=c] [--mode quick]``.

For each config (:mod:`posekd_lib.runs.runconfig`), in order: apply ``--mode`` and ``--set`` (both to
every config given), write the
config to ``<run folder>/config.yaml``, run its stages in :data:`~posekd_lib.runs.runconfig.STAGES`
order and print the run's metrics row. The run folder is the one ``experiments.train_student``
trains in (``<checkpoints>/<name>_<student>_s<seed>``), so a config that says what a notebook does
reuses the notebook's run, and an interrupted run resumes from its ``latest.pt``.

``--set`` values that change the run give it its own name, ``<name>-<6 hex digits of its config
id>``, unless ``--set name=...`` names it; ``seed``, ``model`` and ``data.mode`` do not rename it
(the folder and the mode's folder name them: ``--set seed=1`` is the run ``benchmarks/bench_kd.py``
makes for seed 1), nor do ``stages``, ``quantize`` and ``export``. A folder whose ``config.yaml``
holds a config that trains another model is an error rather than a silent mix.

Stages: ``train`` (ground truth) or ``distil`` (``distill.terms``) trains and evaluates the
student (COCO AP with flip test, PCK@0.2); ``quantize`` writes ``student.int8.onnx`` (onnxruntime static int8) and evaluates it
(``int8.AP`` ... columns); ``evaluate`` adds the run to the mode's ``runs.csv``, one row per config
id with every config field as a column (:func:`~posekd_lib.runs.table.runs_table`); ``export``
writes ``student.onnx``. ``qat`` trains the MAX78000 student (``model.student: ai85posenet``) with
``experiments.train_ai8x``, float then QAT, and evaluates the float, QAT and integer-simulated
models; its ``izer`` export is not wired yet. The teacher (``model.student: hrnet``,
:mod:`posekd_lib.train.teacher_training`) trains, evaluates and ``export`` writes its fp16 weights and card.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runs import runconfig as rc
from .runs import table as rt


def prepare(path, sets=(), mode: str | None = None) -> rc.RunConfig:
    """The config of ``path`` with ``--mode`` and ``--set`` applied and its mode resolved.

    Overrides that change the run rename it ``<name>-<id[:6]>`` unless they set ``name``."""
    from .config import get_mode

    base = rc.from_yaml(path)
    base = rc.apply_overrides(base, [f"data.mode={get_mode(mode or base.data.mode)}"])
    cfg = rc.apply_overrides(base, list(sets))
    named = any(s.partition("=")[0].strip() == "name" for s in sets)
    if not named and _training_part(cfg, True) != _training_part(base, True):
        cfg = rc.apply_overrides(cfg, [f"name={cfg.name}-{rc.config_id(cfg)[:6]}"])
    rc.check_mapping(cfg)              # before anything is written
    return cfg


def _training_part(cfg: rc.RunConfig, named_by_folder: bool = False) -> dict:
    """The config without the fields that do not change the trained model (name, stages, and the
    quantize and export settings, whose files are redone when they change) and, with
    ``named_by_folder``, without those the run's folder and mode already name (seed, student, mode)."""
    d = rc.to_dict(cfg)
    for k in ("stages", "name", "quantize", "export", *(("seed", "model") if named_by_folder else ())):
        d.pop(k)
    if named_by_folder:
        d["data"].pop("mode")
    return d


def _check_folder(cfg: rc.RunConfig) -> None:
    stored = rc.run_dir(cfg) / "config.yaml"
    if not stored.is_file():
        return
    old = rc.from_yaml(stored)
    if _training_part(old) != _training_part(cfg):
        a, b = rt.flat_fields(old), rt.flat_fields(cfg)
        diff = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
        raise rc.ConfigError(f"name: run {cfg.name!r} in {stored.parent} was made with another config "
                             f"(stored, asked): {diff}; use another name (--set name=...) or delete that folder")


def run_config(cfg: rc.RunConfig, teacher=None, progress: bool = True) -> dict:
    """Run ``cfg``'s stages; returns its runs-table row (config fields, budget, metrics)."""
    return _run_stages(cfg, teacher, progress)[1]


def config_path(config) -> Path:
    """``configs/<config>.yaml`` for a bare name such as ``"kl_squeezenet"``, else ``config`` as a path."""
    from .config import REPO_ROOT

    path = Path(config)
    if path.suffix not in (".yaml", ".yml") and path.parent == Path("."):
        path = REPO_ROOT / "configs" / f"{path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no such config (configs/ holds {known})")
    return path


def launch(config, sets=(), mode: str | None = None, teacher=None, progress: bool = True, show: bool = True):
    """A notebook's training cell: the config ``config`` names (a ``configs/`` name, a path, or a
    :class:`~posekd_lib.runs.runconfig.RunConfig`), with ``sets`` applied as ``--set`` would, run as
    ``python -m posekd_lib.run`` runs it; ``show`` first prints the file as written (with its
    comments; a RunConfig: its YAML), the overrides applied, the config id and the run's folder.

    Returns the trained run (``experiments.Run``, for the MAX78000 student ``Ai8xRun``), loaded
    from its folder when the command or an earlier cell already made it."""
    from .config import shown_path

    if isinstance(config, rc.RunConfig):
        from .config import get_mode

        cfg = rc.apply_overrides(config, [f"data.mode={get_mode(mode or config.data.mode)}", *sets])
        rc.check_mapping(cfg)
        text = rc.to_yaml(cfg)
    else:
        path = config_path(config)
        cfg = prepare(path, sets, mode)
        text = path.read_text()
    if show:         # the file as written (a RunConfig: its YAML); nulls take the mode's budget
        applied = ", ".join([f"data.mode={cfg.data.mode}", *sets])
        print(f"# run {cfg.name} ({applied}): id {rc.config_id(cfg)}, folder {shown_path(rc.run_dir(cfg))}")
        print(text.rstrip())
    return _run_stages(cfg, teacher, progress)[0]


def _run_stages(cfg: rc.RunConfig, teacher, progress: bool):
    """(the trained run, its runs-table row) after ``cfg``'s stages."""
    _check_folder(cfg)
    folder = rc.run_dir(cfg)
    rc.to_yaml(cfg, folder / "config.yaml")
    run = rc.train_run(cfg, teacher=teacher, progress=progress)
    if run.run_dir != folder:
        raise RuntimeError(f"train_student trained in {run.run_dir}, expected {folder}")
    row = rt.runs_row(cfg, run)
    if "quantize" in cfg.stages:
        row.update(quantize(cfg, run))
    if "export" in cfg.stages and cfg.model.student == rc.TEACHER_MODEL:
        from .train.teacher_training import export_teacher

        row["weights"] = str(export_teacher(run, rc.resolved_mode(cfg)))
    elif "export" in cfg.stages:
        row["onnx"] = str(_export(cfg, run))
    if "evaluate" in cfg.stages:
        rt.record_run(row, rc.resolved_mode(cfg))
    return run, row


def _export(cfg: rc.RunConfig, run):
    from .mcu.onnx_export import export_onnx

    return export_onnx(run.model.eval().cpu(), rc.run_dir(cfg) / "student.onnx", input_size=run.budget.input_size,
                       opset=cfg.export.opset, dynamic_batch=cfg.export.dynamic_batch, dynamo=cfg.export.dynamo)


def quantize(cfg: rc.RunConfig, run) -> dict:
    """The ``quantize`` stage: ``student.int8.onnx`` from the float ONNX export (onnxruntime static
    int8, calibrated on un-augmented training crops) and its validation metrics (flip test, GT
    boxes), as ``int8.<metric>`` columns; cached in ``int8_metrics.json`` per step and settings."""
    import json

    from .data.datasets import dataset_splits
    from .evaluation.coco import ROW_METRICS
    from .mcu.onnx_export import calibration_reader, evaluate_onnx, quantize_int8

    folder, b = rc.run_dir(cfg), run.budget
    key = {"step": run.row["steps"], **rc.to_dict(cfg)["quantize"], "export": rc.to_dict(cfg)["export"]}
    cache = folder / "int8_metrics.json"
    int8 = folder / "student.int8.onnx"
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    if stored.get("key") != key or not int8.is_file():
        splits = dataset_splits(rc.resolved_mode(cfg))
        reader = calibration_reader(splits.train, b.input_size, b.heatmap_size, b.sigma,
                                    num_samples=cfg.quantize.calib_samples, seed=cfg.seed)
        quantize_int8(_export(cfg, run), int8, reader, per_channel=cfg.quantize.per_channel, method=cfg.quantize.method)
        metrics = evaluate_onnx(int8, splits.val, b.input_size, b.heatmap_size, b.sigma, flip_test=True,
                                batch_size=b.eval_batch_size)
        stored = {"key": key, "metrics": {k: metrics.get(k) for k in ROW_METRICS}}
        from .config import atomic_write

        atomic_write(cache, lambda f: json.dump(stored, f, indent=1), mode="w")
    return {"int8_onnx": str(int8), **{f"int8.{k}": v for k, v in stored["metrics"].items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posekd_lib.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="YAML run configs (configs/*.yaml)")
    ap.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE", dest="sets",
                    help="override config entries, e.g. optim.steps=1000 distill.terms.0.weight=0.25")
    ap.add_argument("--mode", default=None, help="quick | workshop | full (default: the config's data.mode, "
                                                  "else $POSEKD_MODE, else workshop)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--device", default=None, help="train on this device (cpu, cuda, auto; default: the budget's); "
                                                    "the run and its folder stay the same")
    ap.add_argument("--loader", default=None, choices=("cpu", "device"),
                    help="device: cut whole batches on the training device (a GPU's data path; default: the budget's)")
    args = ap.parse_args(argv)
    from .train.budgets import budget_fields

    where = {k: v for k, v in (("device", args.device), ("loader", args.loader)) if v is not None}
    with budget_fields(**where):
        return _run_all(args)


def _run_all(args) -> int:
    import pandas as pd

    try:
        cfgs = [prepare(config_path(p), args.sets, args.mode) for p in args.configs]
    except (rc.ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    teachers: dict = {}
    for path, cfg in zip(args.configs, cfgs):
        teacher = None
        if "distil" in cfg.stages:
            key = (cfg.distill.teacher, cfg.data.mode)
            if key not in teachers:
                teachers[key] = rc.load_frozen_teacher(cfg)
            teacher = teachers[key]
        print(f"== {path}: {cfg.name} (id {rc.config_id(cfg)}, {cfg.data.mode} mode) -> {rc.run_dir(cfg)}")
        try:
            row = run_config(cfg, teacher=teacher, progress=not args.quiet)
        except rc.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        cols = [*rt.SUMMARY_COLUMNS, *(["int8.AP"] if "int8.AP" in row else [])]
        print(pd.DataFrame([{k: row.get(k) for k in cols}]).to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
