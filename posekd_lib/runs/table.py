"""The runs table: one row per run config (``<mode folder>/runs.csv``), every config field a column.

``python -m posekd_lib.run`` records each run it makes here (:func:`runs_row`, :func:`record_run`);
:func:`runs_table` reads it back as a pandas DataFrame, so "every budget of the hinted run" is a
query (:func:`rows_like`, :func:`budget_trend`) rather than a regex over run names. The configs
themselves are :mod:`posekd_lib.runs.runconfig`'s.
"""
from __future__ import annotations

import dataclasses

import yaml

# the CSV itself (where it is, reading it, replacing a row) is evaluation's, below every layer that
# writes rows (experiments.evaluate_teacher records the teacher's); re-exported here
from ..evaluation.coco import record_run, runs_csv, runs_table  # noqa: F401
from .runconfig import (MCU_STUDENTS, TEACHER_MODEL, DistillConfig, RunConfig, ai8x_steps, budget_fields, config_id,
                        resolved_mode, to_dict)


def flat_fields(cfg: RunConfig) -> dict:
    """The config as one flat row: dotted keys (``optim.lr``), list items by index
    (``distill.terms.0.kind``), maps as sorted YAML flow text, plus ``distill.kinds`` (``hint+fpd``)."""
    out = {}

    def walk(prefix, v):
        if isinstance(v, dict) and not (prefix.endswith(".options") or prefix.endswith(".pairs")):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                walk(f"{prefix}.{i}", x)
        elif isinstance(v, (dict, list)):
            out[prefix] = yaml.safe_dump(v, default_flow_style=True, sort_keys=True).strip() if v else ""
        else:
            out[prefix] = v

    walk("", to_dict(cfg))
    out["distill.kinds"] = "+".join(t.kind for t in cfg.distill.terms)
    return out


# --------------------------------------------------------------------------- the runs table
#: What ``python -m posekd_lib.run`` prints of a run's row.
SUMMARY_COLUMNS = ("name", "config_id", "model.student", "distill.kinds", "budget.steps", "AP", "AP50", "AP75",
                   "PCK@0.2", "train_time_s")


def runs_row(cfg: RunConfig, run) -> dict:
    """A runs-table row: ``config_id``, every config field (:func:`flat_fields`), the budget the run
    trained with (``budget.*``: the mode's values where the config says null) and its metrics."""
    from ..evaluation.coco import ROW_METRICS

    if cfg.model.student in MCU_STUDENTS:
        return _ai8x_row(cfg, run)
    if cfg.model.student == TEACHER_MODEL:
        return {"config_id": config_id(cfg), **flat_fields(cfg), "budget.steps": run.steps,
                "budget.batch_size": run.batch_size, "budget.lr": run.lr,
                "budget.input_size": f"{run.input_size[0]}x{run.input_size[1]}",
                **{k: run.metrics.get(k) for k in (*ROW_METRICS, "PCK@0.2")}, "params": run.card["params"],
                "train_time_s": run.train_time_s, "run_dir": str(run.run_dir)}
    b = run.budget
    row = {"config_id": config_id(cfg), **flat_fields(cfg),
           "budget.steps": run.row["steps"], "budget.batch_size": b.batch_size, "budget.lr": b.lr,
           "budget.input_size": f"{b.input_size[0]}x{b.input_size[1]}"}
    row.update({k: run.row.get(k) for k in (*ROW_METRICS, "PCK@0.2", "params", "MACs", "int8_kB", "train_time_s")})
    row["run_dir"] = str(run.run_dir)
    return row


def _ai8x_row(cfg: RunConfig, run) -> dict:
    """A MAX78000 run's row: the QAT model's metrics as ``AP`` ..., the float model's as ``float.AP``
    ..., the integer simulation's (the MAX78000's arithmetic) as ``int8.AP`` ..."""
    import json

    from ..models.ai8x_models import AI8X_STUDENT_INPUT
    from ..train.budgets import budget, budget_fields as with_budget
    from ..evaluation.coco import ROW_METRICS

    with with_budget(**budget_fields(cfg)):
        b = budget(resolved_mode(cfg))
    float_steps, qat_steps = ai8x_steps(cfg)
    info_file = run.run_dir / "run_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    row = {"config_id": config_id(cfg), **flat_fields(cfg), "budget.steps": float_steps,
           "budget.qat_steps": qat_steps, "budget.batch_size": b.batch_size, "budget.lr": b.lr,
           "budget.input_size": "{}x{}".format(*getattr(run.float_model, "input_size", AI8X_STUDENT_INPUT))}
    for prefix, key in (("", "qat"), ("float.", "float"), ("int8.", "int8")):
        row.update({prefix + k: run.metrics[key].get(k) for k in (*ROW_METRICS, "PCK@0.2")})
    row["params"] = sum(p.numel() for p in run.float_model.parameters())
    row["train_time_s"] = info.get("train_time_s")
    row["run_dir"] = str(run.run_dir)
    return row


#: Fields that may differ between the rows of one recipe at several budgets and seeds.
_TREND_FREE = ("name", "seed", "optim.steps", "stages", "data.mode")


def _norm(v) -> str:
    """A CSV cell and a config value in one spelling (None, NaN and "" alike; 1 and 1.0 alike)."""
    import math

    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return str(bool(v))
    try:
        return repr(float(v))
    except (TypeError, ValueError):
        return str(v)


def rows_like(table, cfg: RunConfig, free=_TREND_FREE):
    """The rows of the runs table made with ``cfg`` up to the ``free`` fields (any budget and seed)."""
    keep = table.index == table.index
    for k, v in flat_fields(cfg).items():
        if k in free:
            continue
        if k in table:
            keep &= table[k].map(_norm).to_numpy() == _norm(v)
        elif _norm(v) != "":         # a column older rows lack counts as unset
            return table.iloc[:0]
    return table[keep]


def budget_trend(table, kd_cfg: RunConfig, teacher_ap: float, baseline_cfg: RunConfig | None = None) -> list[dict]:
    """How the share of the teacher-baseline gap a KD config closes changes with the budget: a query
    over the runs table.

    The KD rows are those made with ``kd_cfg`` up to name, seed and steps (:func:`rows_like`), the
    baseline rows those of ``baseline_cfg`` (default: ``kd_cfg`` without distillation, a ``train``
    run); they pair by (``budget.steps``, ``seed``), and only complete pairs count. One dict per budget, fewest steps first, with ``steps``, ``seeds``, ``baseline_AP``, ``kd_AP``,
    ``closed`` (each with ``<key>_pm``, half the range over seeds) and ``closed_per_seed``.
    """
    from ..evaluation.coco import gap_by_budget

    if baseline_cfg is None:
        baseline_cfg = dataclasses.replace(kd_cfg, distill=DistillConfig(), stages=["train", "evaluate"])
    ap = {}
    for which, c in (("baseline", baseline_cfg), ("kd", kd_cfg)):
        rows = rows_like(table, c)
        for _, r in rows[rows["AP"].notna()].iterrows():
            ap[which, int(r["budget.steps"]), int(r["seed"])] = float(r["AP"])
    return gap_by_budget(ap, teacher_ap)
