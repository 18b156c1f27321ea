"""The student runs of notebooks 02-05 and ``benchmarks/``: trained once, cached, evaluated, recorded.

:func:`train_student` trains one student with the mode's :class:`~posekd_lib.train.budgets.Budget`,
evaluates it on the validation split (COCO AP with flip test, PCK@0.2) and returns it with its
row (``Run.row``; the config runner puts it in the mode's runs table, :mod:`posekd_lib.runs.table`).
Runs are cached by name,
``f"{tag}_{student}_s{seed}"`` under ``run_paths(mode).checkpoints``: a finished run is loaded, not
retrained, and its evaluation is read from ``val_metrics.json`` / ``val_results.json`` next to the
checkpoint, so notebook 03 reuses notebook 02's baseline at no cost.

Distillation hook: ``kd(student, total_steps)`` builds the distiller once the student exists
(e.g. ``lambda s, n: LogitsKD(teacher, s, alpha=0.5, total_steps=n)``). A returned ``nn.Module``
(a :class:`~posekd_lib.distill.Distiller`) is what ``fit`` trains: its own ``loss``, its
parameters (the student's and the adapters') in the optimizer, its state (adapters and the KD
schedule's step included) in the checkpoint, so an interrupted hinted run resumes exactly. Any
other callable is a ``loss_fn(outputs, batch)`` for the student. ``remove()`` (hooks) is called
after training. Checkpoints that versions before the distiller owned its adapters wrote for
distilled runs (the bare student) are refused with the file's name (delete that run folder).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..evaluation.analysis import localization_summary, pck_of_results  # noqa: F401 (notebooks import them here)
from .budgets import (FLOAT32_ON_CPU, Budget, budget, budget_dict, budget_fields, mode_settings,  # noqa: F401 (ditto)
                      demo_teacher_sizes, example_batch, label_tag, steps_for, student_amp, training_set)
from ..config import atomic_write, run_paths
from ..evaluation.coco import ROW_METRICS  # noqa: F401 (re-exported)
from ..distill.losses import TOPDOWN_LOSSES
from ..models.registry import TOPDOWN_STUDENTS
from .recipes import RECIPES, kd_recipe, recipe_settings, teacher_cache_for, weights_fingerprint  # noqa: F401

#: Student names accepted by :func:`train_student`: ``models.build_student`` name and keywords (the
#: top-down entries of ``registry.MODELS``).
STUDENTS: dict[str, tuple[str, dict]] = TOPDOWN_STUDENTS
LOSSES = TOPDOWN_LOSSES


@dataclass
class Run:
    """A trained (or loaded) model with its training log, validation metrics, COCO results and table row."""

    name: str
    model: nn.Module
    history: object | None
    metrics: dict
    results: list[dict] = field(repr=False)
    row: dict
    run_dir: Path
    budget: Budget


# --------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_loss(loss: str) -> Callable:
    """``fit``'s ``loss_fn`` for a loss name: ``"mse"`` (HRNet's JointsMSE), ``"awing"`` (Adaptive
    Wing) or ``"mse_ce"`` (the MSE plus a small spatial-softmax cross-entropy, ``losses.mse_with_ce``)."""
    from ..distill.losses import adaptive_wing, batch_loss, joints_mse, mse_with_ce

    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; choose one of {LOSSES}")
    return batch_loss({"mse": joints_mse, "awing": adaptive_wing, "mse_ce": mse_with_ce}[loss])


def build_student_model(student_name: str) -> nn.Module:
    """A student by :data:`STUDENTS` name, from scratch (no ImageNet weights: nothing is downloaded)."""
    from ..models.students import build_student

    if student_name not in STUDENTS:
        raise KeyError(f"unknown student {student_name!r}; choose one of {sorted(STUDENTS)}")
    base, kw = STUDENTS[student_name]
    return build_student(base, **kw)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def evaluate_cached(model: nn.Module, split, input_size, heatmap_size, sigma: float, cache_dir: Path,
                    key: dict, batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict]]:
    """Validation metrics (COCO AP with flip test + ``PCK@0.2``) and results, cached in ``cache_dir``.

    ``key`` (e.g. the checkpoint's step) is stored with the metrics; the cache is used only when it
    matches, so a longer run or new weights are evaluated again.
    """
    from ..evaluation.coco import coco_evaluate, evaluate_topdown, write_coco_results

    cache_dir = Path(cache_dir)
    metrics_file, results_file = cache_dir / "val_metrics.json", cache_dir / "val_results.json"
    cached = _read_json(metrics_file)
    if cached is not None and cached.get("key") == key and results_file.is_file():
        return cached["metrics"], json.loads(results_file.read_text())
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    _, results = evaluate_topdown(model, split, input_size, heatmap_size, sigma, flip_test=True,
                                  batch_size=batch_size, device=device, progress=progress, return_results=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_coco_results(results, results_file)
    results = json.loads(results_file.read_text())
    metrics = coco_evaluate(split.ann_file, results)  # scores of what is stored, so a recount agrees exactly
    metrics["PCK@0.2"] = pck_of_results(results, split, input_size)
    metrics["eval_time_s"] = round(time.perf_counter() - t0, 1)
    _write_json(metrics_file, {"key": key, "metrics": metrics})
    return metrics, results


#: Validation images (the first ones with labelled persons, by id) a learning curve scores.
CURVE_IMAGES = 100


def curve_fit_kw(split, view: Callable[[], nn.Module], input_size, heatmap_size, sigma: float,
                 every: int | None) -> dict:
    """``fit`` keywords for a learning curve every ``every`` steps (none when ``every`` is None):
    COCO AP on :data:`CURVE_IMAGES` fixed validation images of ``split`` (GT boxes, flip test),
    of the heatmap model ``view()`` returns (the student, whatever module ``fit`` trains around it);
    the points land in ``history.json``'s ``evals``."""
    if not every:
        return {}
    from ..evaluation.coco import curve_evaluator, first_images

    evaluate = curve_evaluator(split, first_images(split.ann_file, CURVE_IMAGES), input_size, heatmap_size, sigma)
    return {"evaluate_fn": lambda _trainee: evaluate(view().eval()), "eval_every_steps": int(every)}


def _complexity(model: nn.Module, input_size) -> dict:
    from ..models.students import complexity

    device = next(model.parameters()).device
    c = complexity(model.cpu(), tuple(input_size))
    model.to(device)
    return c


def _row(model_name: str, setting: str, seed, metrics: dict, cplx: dict, train_time_s, steps) -> dict:
    return {"model": model_name, "setting": setting, "seed": seed,
            **{k: metrics.get(k) for k in ROW_METRICS}, "PCK@0.2": metrics.get("PCK@0.2"),
            "params": cplx["params"], "MACs": cplx["macs"], "int8_kB": round(cplx["int8_kb"], 1),
            "train_time_s": train_time_s, "steps": steps}


# --------------------------------------------------------------------------- students
def _trainee(student: nn.Module, made) -> tuple[nn.Module, Callable | None]:
    """``(module fit trains, its loss_fn)`` for what a ``kd`` factory (or ``build_loss``) returned."""
    if isinstance(made, nn.Module):
        if not callable(getattr(made, "loss", None)):
            raise TypeError(f"kd returned a {type(made).__name__} without loss(outputs, batch); "
                            "return a Distiller or a plain loss_fn")
        return made, None
    return student, made


def train_student(student_name: str, mode: str | None = None, seed: int = 0, loss: str = "mse",
                  kd: Callable | None = None, tag: str = "baseline", progress: bool = True,
                  steps: int | None = None, labelled: float = 1.0, unlabelled: bool = False,
                  curve_every: int | None = None, extra_unlabelled: int = 0) -> Run:
    """Train (or load) one student with the mode's :class:`Budget`, evaluate it and record its row.

    ``loss`` is the ground-truth loss (``"mse"`` or ``"awing"``); ``kd(student, total_steps)``
    replaces it by a distiller (or another loss_fn; see the module docstring). ``steps`` overrides
    the budget's step count (:func:`~posekd_lib.train.budgets.steps_for`: ``feature_steps`` for a
    feature-KD recipe with the live teacher, whose step also runs it). ``labelled`` and ``unlabelled`` choose the training data as
    :func:`training_set` does (few labels; the teacher labels the rest, so ``unlabelled`` needs
    ``kd``); ``extra_unlabelled`` adds that many more images' persons without keypoints (also needs
    ``kd``; give ``kd_recipe`` the same count, so its teacher cache covers them). The run lives in
    ``run_paths(mode).checkpoints / f"{tag}_{student}_s{seed}"``; ``curve_every`` adds a learning curve (:func:`curve_fit_kw`) to its history.
    Its recipe (student, loss, steps, sizes, ...; the distillation settings when ``kd`` comes from
    :func:`kd_recipe`) is stored in ``run_info.json``, and calling again with another recipe under
    the same tag is an error rather than a silent mix (a hand-written ``kd`` factory cannot be
    checked: give each of its settings its own tag). The results row
    has ``model=student_name`` and ``setting=tag`` (``f"{tag} s{seed}"`` for seeds other than 0).
    """
    from ..data.datasets import dataset_splits
    from . import History, fit

    b = budget(mode)                      # the mode, resolved once: everything below reads b and paths
    mode, paths = b.mode, run_paths(b.mode)
    kd_info = getattr(kd, "recipe", None) or {}
    total = int(steps or steps_for(b, kd_info.get("method"), bool(kd_info.get("teacher_cache"))))
    name = f"{tag}_{student_name}_s{seed}"
    run_dir = paths.checkpoints / name
    amp = student_amp(student_name, b)
    recipe = {"student": student_name, "loss": "kd" if kd is not None else loss, "steps": total,
              "batch_size": b.batch_size, "lr": b.lr, "input_size": list(b.input_size),
              "heatmap_size": list(b.heatmap_size), "sigma": b.sigma, "seed": seed, "aug": b.aug, "amp": amp}
    if not 0 < labelled <= 1:
        raise ValueError(f"train_student: labelled must be a fraction in (0, 1], got {labelled}")
    if (unlabelled or extra_unlabelled) and kd is None:
        raise ValueError(f"train_student(unlabelled={unlabelled}, extra_unlabelled={extra_unlabelled}) needs kd: "
                         "without a teacher, crops without keypoints carry no training signal")
    if labelled < 1:  # only then, so the recipes of runs on every label stay as they were
        recipe.update(labelled=labelled, unlabelled=bool(unlabelled))
    if extra_unlabelled:
        recipe["extra_unlabelled"] = int(extra_unlabelled)
    if getattr(kd, "recipe", None) is not None:  # a kd_recipe: its settings are part of the run's recipe
        recipe["kd"] = kd.recipe
    info_file = run_dir / "run_info.json"
    info = _read_json(info_file) or {}
    if info.get("recipe", recipe) != recipe:
        diff = {k: (info["recipe"].get(k), v) for k, v in recipe.items() if info["recipe"].get(k) != v}
        raise ValueError(f"run {name!r} in {run_dir} was trained with another recipe (stored, asked): {diff}; "
                         "use another tag, or delete that folder to retrain")

    splits = dataset_splits(mode)
    if kd is None:
        build_loss(loss)  # check the name before any work
    torch.manual_seed(seed)
    model = build_student_model(student_name)
    net, loss_fn = _trainee(model, build_loss(loss) if kd is None else kd(model, total))
    optimizer = torch.optim.Adam(net.parameters(), lr=b.lr)
    done_before = History.steps_done(run_dir)

    train_ds = training_set(b, labelled=labelled, unlabelled=unlabelled, split=splits.train,
                            extra_unlabelled=extra_unlabelled)
    if len(train_ds) < b.batch_size:
        fix = "label a larger fraction" if labelled < 1 else "add training images or lower optim.batch_size"
        raise ValueError(f"train_student: {len(train_ds)} training persons (labelled={labelled}) make no batch of "
                         f"{b.batch_size}; {fix}")
    from ..data.device_data import shuffled_loader

    loader = shuffled_loader(train_ds, b.batch_size, b.loader, _device(b.device), b.num_workers)
    _write_json(info_file, {**info, "recipe": recipe})
    t0 = time.perf_counter()
    history = fit(net, loader, loss_fn=loss_fn, max_steps=total, optimizer=optimizer, lr=b.lr,
                  device=b.device, out_dir=paths.checkpoints, run_name=name, seed=seed,
                  threads=b.threads, progress=progress, log_every=max(1, min(10, total // 4)),
                  save_every_steps=100 if total > 200 else None, channels_last=b.channels_last, amp=amp,
                  **curve_fit_kw(splits.val, lambda: model, b.input_size, b.heatmap_size, b.sigma, curve_every))
    wall = time.perf_counter() - t0
    for hooked in (net, loss_fn):  # a feature distiller: take its hooks off the student and teacher again
        if hasattr(hooked, "remove"):
            hooked.remove()
    trained = history.step[-1] if history.step else total
    info = _read_json(info_file) or {}
    if trained > done_before:   # fit's own clock counts the parts of a resumed run too
        info["train_time_s"] = history.train_time_s or round(info.get("train_time_s", 0.0) + wall, 1)
    if "complexity" not in info:
        info["complexity"] = _complexity(model, b.input_size)
    _write_json(info_file, {**info, "recipe": recipe})

    model.eval()
    metrics, results = evaluate_cached(model, splits.val, b.input_size, b.heatmap_size, b.sigma, run_dir,
                                       key={"step": trained}, batch_size=b.eval_batch_size, progress=progress)
    setting = tag if seed == 0 else f"{tag} s{seed}"
    row = _row(student_name, setting, seed, metrics, info["complexity"], info.get("train_time_s"), trained)
    return Run(name, model, history, metrics, results, row, run_dir, b)


# --------------------------------------------------------------------------- teacher
def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluate_teacher(mode: str | None = None, name: str | None = None, path=None,
                     progress: bool = True) -> Run:
    """Load the mode's teacher (:func:`posekd_lib.models.teachers.load_teacher`), evaluate it and record its
    row in the mode's runs table (``evaluation.record_run``).

    Evaluated at the teacher's own input and heatmap size with flip test; cached per weights file
    (by content hash) under ``run_paths(mode).checkpoints / f"teacher_{info.name}_{sha1[:10]}"``,
    so new weights are evaluated again. The row has ``setting="teacher"``.
    """
    from ..data.datasets import dataset_splits
    from ..models.teachers import load_teacher

    b = budget(mode)
    mode, paths = b.mode, run_paths(b.mode)
    model, info = load_teacher(name, mode=mode, path=path, device=_device(b.device))
    run_dir = paths.checkpoints / f"teacher_{info.name}_{_sha1(info.weights)[:10]}"
    splits = dataset_splits(mode)
    metrics, results = evaluate_cached(model, splits.val, info.input_size, info.heatmap_size, info.sigma, run_dir,
                                       key={"weights": str(info.weights)}, batch_size=b.eval_batch_size,
                                       progress=progress)
    cplx_file = run_dir / "complexity.json"
    cplx = _read_json(cplx_file)
    if cplx is None:
        cplx = _complexity(model, info.input_size)
        _write_json(cplx_file, cplx)
    row = _row(info.name, "teacher", info.card.get("seed"), metrics, cplx,
               info.card.get("train_time_s", info.card.get("train_wall_time_s_this_session")), None)
    from ..evaluation.coco import record_run
    from ..models.registry import TEACHER_MODEL

    # its id is its folder's name (teacher_<name>_<weights hash>): new weights, a new row
    record_run({"config_id": run_dir.name, "name": info.name, "seed": row["seed"], "model.student": TEACHER_MODEL,
                **{k: v for k, v in row.items() if k not in ("model", "setting", "seed", "steps")},
                "run_dir": str(run_dir)}, mode)
    return Run(info.name, model, None, metrics, results, row, run_dir, b)


# --------------------------------------------------------------------------- MAX78000 students
#: (float steps, QAT steps) of the MAX78000 student per mode (``ai8x_steps`` of
#: ``configs/modes/<mode>.yaml``; batch and lr from the mode's Budget).
AI8X_STEPS = {m: mode_settings(m)["ai8x_steps"] for m in ("quick", "workshop", "full")}


@dataclass
class Ai8xRun:
    """A MAX78000 student after float training and QAT, with its three evaluations."""

    name: str
    model: nn.Module              # in QAT mode (export it, or `ai8x_models.simulate_copy` it)
    float_model: nn.Module        # the same network before QAT (BN not fused)
    histories: dict
    metrics: dict                 # {"float": ..., "qat": ..., "int8": ...}, each COCO metrics + PCK@0.2
    results: dict                 # same keys: COCO results lists, validation-person order
    run_dir: Path


def train_ai8x(variant: str = "tiny", mode: str | None = None, seed: int = 0, kd: str | None = "fpd",
               teacher: nn.Module | None = None, qat_policy=None, tag: str | None = None,
               steps: tuple[int, int] | None = None, progress: bool = True,
               curve_every: int | None = None) -> Ai8xRun:
    """Train (or load) a MAX78000 pose student: float training, then QAT, each ``AI8X_STEPS[mode]``.

    ``kd`` is a logits recipe's tag (``"fpd"``, ``"kl"``: :data:`RECIPES`) distilled from ``teacher``
    (default: the mode's teacher), or None for ground truth only. The runs
    ``f"{tag}_float"`` / ``f"{tag}_qat"`` (tag default ``f"ai8x_{variant}_{kd or 'gt'}_s{seed}"``)
    are cached like :func:`train_student`'s; the float weights, the QAT weights and the integer
    simulate model are evaluated (COCO AP with flip test, PCK@0.2; cached per step).
    ``curve_every`` adds a learning curve (:func:`curve_fit_kw`, the float then the QAT model) to
    both phases' histories.
    """
    from ..models import ai8x_models as am
    from ..models.ai8x_models import HeatmapView, ai85posenet, simulate_copy
    from ..data.datasets import dataset_splits
    from . import History

    b = budget(mode)
    mode = b.mode
    float_steps, qat_steps = steps or AI8X_STEPS[mode]
    policy = qat_policy if qat_policy is not None else am.DEFAULT_QAT_POLICY
    name = tag or f"ai8x_{variant}_{kd or 'gt'}_s{seed}"
    root = run_paths(mode).checkpoints
    if tuple(b.input_size) != tuple(am.AI8X_STUDENT_INPUT) and mode != "full":
        raise ValueError(f"the MAX78000 student works at {am.AI8X_STUDENT_INPUT}, the {mode} budget at {b.input_size}")
    splits = dataset_splits(mode)
    train_ds = training_set(b, am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP, split=splits.train)
    from ..data.device_data import shuffled_loader

    loader = shuffled_loader(train_ds, b.batch_size, b.loader, _device(b.device), b.num_workers)
    factory, teacher_id = None, None
    if kd is not None:
        logits = [t for t in RECIPES if recipe_settings(t)["method"] == "logits"]
        if kd not in logits:
            raise ValueError(f"kd={kd!r}: the MAX78000 student distils with a logits setting ({logits}) or None")
        if teacher is None:
            from ..distill import freeze
            from ..models.teachers import load_teacher

            teacher = freeze(load_teacher(mode=mode, device=_device(b.device))[0])
        factory = kd_recipe(kd, teacher, variant, b)
        teacher_id = factory.recipe["teacher"]
    torch.manual_seed(seed)
    model = ai85posenet(variant)
    run_dirs = (root / f"{name}_float", root / f"{name}_qat")
    stored = _read_json(run_dirs[1] / "run_info.json") or {}
    if kd is not None and stored and stored.get("teacher") != teacher_id:  # a finished run of another teacher
        raise ValueError(f"run {name!r} in {root} was distilled from another teacher (stored "
                         f"{stored.get('teacher')!r}, asked {teacher_id!r}); use another tag, or delete "
                         f"{run_dirs[0].name} and {run_dirs[1].name} to retrain")
    done_before = sum(History.steps_done(d) for d in run_dirs)
    t0 = time.perf_counter()
    trained = am.train_ai8x_student(
        model, loader, qat_policy=policy, float_steps=float_steps, qat_steps=qat_steps, out_dir=root,
        run_name=name, lr=b.lr, wrap=None if factory is None else (lambda view: factory(view, float_steps + qat_steps)),
        seed=seed, device=b.device, threads=b.threads, progress=progress,
        save_every_steps=100, log_every=max(1, min(10, float_steps // 4)), channels_last=b.channels_last,
        **curve_fit_kw(splits.val, lambda: HeatmapView(model), am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP,
                       b.sigma, curve_every))
    float_model = trained["float_model"]
    wall = time.perf_counter() - t0
    run_dir = run_dirs[1]
    info = _read_json(run_dir / "run_info.json") or {}
    if sum(History.steps_done(d) for d in run_dirs) > done_before:   # trained now (not only loaded)
        clocked = sum(h.train_time_s for h in (trained["float"], trained["qat"]) if h is not None)
        info["train_time_s"] = clocked or round(info.get("train_time_s", 0.0) + wall, 1)
    info.update(variant=variant, kd=kd, seed=seed, steps=[float_steps, qat_steps], policy=policy,
                teacher=teacher_id)
    _write_json(run_dir / "run_info.json", info)

    metrics, results = {}, {}
    model.eval()
    for key, net in (("float", float_model), ("qat", model), ("int8", simulate_copy(model))):
        metrics[key], results[key] = evaluate_cached(
            HeatmapView(net), splits.val, am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP, b.sigma,
            run_dir / f"eval_{key}", key={"step": [float_steps, qat_steps], "model": key},
            batch_size=b.eval_batch_size, progress=progress)
    return Ai8xRun(name, model, float_model, {"float": trained["float"], "qat": trained["qat"]}, metrics, results,
                   run_dir)
