"""One recipe for the student runs of notebooks 02-05 and ``benchmarks/``: budgets and cached runs.

A :class:`Budget` per mode fixes the crop and heatmap size (those of the demo teacher in ``quick``
and ``workshop``), the batch size and the number of steps. :func:`train_student` trains one student
with that budget, evaluates it on the validation split (COCO AP with flip test, PCK@0.2) and adds a
row to the mode's :class:`~posekd_lib.evaluation.ResultsTable`. Runs are cached by name,
``f"{tag}_{student}_s{seed}"`` under ``run_paths(mode).checkpoints``: a finished run is loaded, not
retrained, and its evaluation is read from ``val_metrics.json`` / ``val_results.json`` next to the
checkpoint, so notebook 03 reuses notebook 02's baseline at no cost.

Distillation hook: ``kd(student, total_steps)`` builds the distiller once the student exists
(e.g. ``lambda s, n: LogitsKD(teacher, s, alpha=0.5, total_steps=n)``). A returned ``nn.Module``
(a :class:`~posekd_lib.distill.Distiller`) is what ``fit`` trains: its own ``loss``, its
parameters (the student's and the adapters') in the optimizer, its state (adapters and the KD
schedule's step included) in the checkpoint, so an interrupted hinted run resumes exactly. Any
other callable is a ``loss_fn(outputs, batch)`` for the student. ``remove()`` (hooks) is called
after training. Checkpoints that earlier versions wrote for distilled runs (the bare student) are
rewritten once into the distiller's format (:func:`~posekd_lib.distill.upgrade_checkpoint`).
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import functools
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import atomic_write, get_mode, run_paths

#: Metric columns of a results row, in ``evaluation.COCO_METRICS`` names.
ROW_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")
#: Student names accepted by :func:`train_student`: ``models.build_student`` name and keywords.
STUDENTS: dict[str, tuple[str, dict]] = {
    "squeezenet": ("squeezenet", {}),
    "mobilenetv3": ("mobilenetv3", {}),
    "mobilenetv3_os16": ("mobilenetv3", {"output_stride": 16}),
}
LOSSES = ("mse", "awing", "mse_ce")


@dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes of one mode; sizes are ``(w, h)``."""

    mode: str
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    batch_size: int = 32
    steps: int = 500
    lr: float = 2e-3
    num_workers: int = 0
    eval_batch_size: int = 64
    device: str = "cpu"
    threads: int | None = None
    channels_last: bool = True      # NHWC: ~15 % faster CPU training of the students
    aug: str = "light"              # augmentation preset (data.AUGMENTATIONS): light for short budgets
    amp: str | None = "bf16"        # autocast dtype for fit(amp=...) (see student_amp)
    loader: str = "cpu"             # cpu: per-sample crops on DataLoader workers; device: whole batches
                                    # cut on the training device (device_data.DeviceCrops, for GPUs)


# quick: seconds in CI. workshop: each notebook <= ~10 min on 2 cores. Measured per step of 32 crops
# (128x96, channels-last, light augmentation, one thread of a busy 2-core machine, 2026-12-03): data
# loading 0.07 s, squeezenet 0.19 s under bf16 autocast (0.53 s float32), mobilenetv3 0.21 s float32
# (0.43 s under bf16: its depthwise convolutions are slower in bf16, so it trains in float32, see
# student_amp). 1200 steps x 32 = 38k crops (3.2 epochs). Light augmentation because HRNet's (scale
# 0.35, rotation 45 deg, half-body) is made for 210 epochs: at 1000 steps it scores 0.003 AP against
# light's 0.0085 (docs/experiments.md, section 1). Both at the demo teacher's crop, heatmap and sigma
# (read from its config). full: real COCO on a GPU at HRNet's 256x192 with HRNet's augmentation.
_OVERRIDES = {
    "quick": {"batch_size": 8, "steps": 4, "eval_batch_size": 32},
    "workshop": {"steps": 1200},
    "full": {"input_size": (192, 256), "heatmap_size": (48, 64), "sigma": 2.0, "batch_size": 64,
             "steps": 30_000, "lr": 1e-3, "num_workers": 8, "eval_batch_size": 128, "device": "auto",
             "channels_last": False, "aug": "hrnet", "amp": "auto"},
}


def demo_teacher_sizes() -> dict:
    """``input_size``, ``heatmap_size`` (w, h) and ``sigma`` of the demo teacher's config."""
    return dict(_demo_teacher_sizes())


@functools.lru_cache(maxsize=1)
def _demo_teacher_sizes() -> tuple:
    from hrnet_pose.configs import load_configs

    from .teachers import DEMO_CONFIG

    m = load_configs(DEMO_CONFIG).MODEL
    return (("input_size", tuple(int(v) for v in m.IMAGE_SIZE)),
            ("heatmap_size", tuple(int(v) for v in m.HEATMAP_SIZE)), ("sigma", float(m.SIGMA)))


def budget(mode: str | None = None) -> Budget:
    """The :class:`Budget` of ``mode`` (default: ``$POSEKD_MODE``)."""
    mode = get_mode(mode)
    sizes = {} if mode == "full" else demo_teacher_sizes()
    return Budget(mode, **{**sizes, **_OVERRIDES[mode], **_BUDGET_FIELDS.get()})


_BUDGET_FIELDS: contextvars.ContextVar[dict] = contextvars.ContextVar("budget_fields", default={})


@contextlib.contextmanager
def budget_fields(**fields):
    """Within the block, :func:`budget` returns every mode's budget with ``fields`` replaced.

    How a :class:`~posekd_lib.runconfig.RunConfig` sets the batch size, learning rate and other
    budget fields of one run while :func:`train_student` and :func:`training_set` read the budget
    as they always do. An unknown field is a ``KeyError``.
    """
    settable = {f.name for f in dataclasses.fields(Budget)} - {"mode"}
    if set(fields) - settable:
        raise KeyError(f"budget_fields: {sorted(set(fields) - settable)} are not settable Budget fields "
                       f"({sorted(settable)})")
    token = _BUDGET_FIELDS.set({**_BUDGET_FIELDS.get(), **fields})
    try:
        yield
    finally:
        _BUDGET_FIELDS.reset(token)


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
    from .losses import adaptive_wing, batch_loss, joints_mse, mse_with_ce

    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; choose one of {LOSSES}")
    return batch_loss({"mse": joints_mse, "awing": adaptive_wing, "mse_ce": mse_with_ce}[loss])


#: Students whose CPU training is slower under bf16 autocast (measured: mobilenetv3 0.43 s against
#: 0.21 s per step of 32 in float32; its depthwise convolutions have no fast bf16 kernel here).
FLOAT32_ON_CPU = frozenset({"mobilenetv3", "mobilenetv3_os16"})


def student_amp(student_name: str, b: Budget) -> str | None:
    """``fit(amp=...)`` for a student under a budget: the budget's, except float32 (None) for the
    :data:`FLOAT32_ON_CPU` students on a CPU budget."""
    if b.device == "cpu" and student_name in FLOAT32_ON_CPU:
        return None
    return b.amp


def build_student_model(student_name: str) -> nn.Module:
    """A student by :data:`STUDENTS` name, from scratch (no ImageNet weights: nothing is downloaded)."""
    from .models import build_student

    if student_name not in STUDENTS:
        raise KeyError(f"unknown student {student_name!r}; choose one of {sorted(STUDENTS)}")
    base, kw = STUDENTS[student_name]
    return build_student(base, **kw)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def _gt_aligned(results: list[dict], split, input_size):
    """``results`` (validation-person order) as an (N, K, 3) array, with each person's GT sample."""
    from .data import TopDownDataset

    ds = TopDownDataset(split.ann_file, split.img_dir, input_size, train=False)
    if len(ds.samples) != len(results):
        raise ValueError(f"{len(results)} results for {len(ds.samples)} GT persons in {split.ann_file}")
    ids = np.array([r["image_id"] for r in results])
    if not np.array_equal(ids, [s["image_id"] for s in ds.samples]):
        raise ValueError("results are not in the order of the GT persons (run evaluate_topdown on GT boxes)")
    pred = np.asarray([r["keypoints"] for r in results], dtype=np.float64).reshape(len(results), -1, 3)
    return pred, ds.samples


def pck_of_results(results: list[dict], split, input_size, thr: float = 0.2) -> float:
    """PCK@``thr`` of top-down results on GT boxes, pooled over the labelled points of all persons.

    ``results`` must be in the order of the evaluation dataset's persons (as ``evaluate_topdown``
    returns them); each is compared with its own GT person, normalised by the GT box's longer side.
    """
    from .evaluation import pck

    pred, samples = _gt_aligned(results, split, input_size)
    return pck(pred, np.stack([s["joints"] for s in samples]), np.stack([s["box"] for s in samples]), thr)


def localization_summary(results: list[dict], split, input_size) -> dict[str, float]:
    """How well placed a model's keypoints are, apart from how it scores its persons.

    ``results`` as for :func:`pck_of_results`. ``mean_OKS``: mean OKS of each person's prediction
    with its own GT person; ``OKS>=0.5``: the share reaching COCO's loosest AP threshold;
    ``AP_oracle``: COCO AP with every person re-scored by that OKS, i.e. ranked perfectly. COCOeval
    ranks by score, so AP mixes placement with ranking; ``AP_oracle`` is the most better scores
    alone could reach, and only better-placed keypoints raise it. ``rank_corr``: how well the
    model's own scores rank its persons, the Spearman correlation of score and OKS (1: in OKS
    order; 0: unrelated).
    """
    from .evaluation import coco_evaluate, oks, spearman

    pred, samples = _gt_aligned(results, split, input_size)
    o = np.array([oks(p[:, :2], s["joints"], s["area"]) for p, s in zip(pred, samples)])
    rescored = [{**r, "score": float(v)} for r, v in zip(results, o)]
    return {"mean_OKS": float(o.mean()), "OKS>=0.5": float((o >= 0.5).mean()),
            "AP_oracle": coco_evaluate(split.ann_file, rescored)["AP"],
            "rank_corr": spearman([r["score"] for r in results], o)}


def budget_trend(rows: list[dict], student_name: str, teacher_ap: float, kd_tag: str = "feature") -> list[dict]:
    """How the share of the teacher-baseline gap that ``kd_tag`` closes changes with the budget.

    ``rows``: a :class:`~posekd_lib.evaluation.ResultsTable`'s rows. Uses the rows of
    ``student_name`` whose setting is ``baseline`` or ``kd_tag``, optionally with a budget suffix
    ``_<steps>`` (``benchmarks/bench_kd.py --steps``) and a seed suffix; the budget is the row's
    ``steps`` column. Baseline and KD runs are paired by (steps, seed) and only complete pairs count.
    One dict per budget, fewest steps first: ``steps``, ``seeds`` (list), ``baseline_AP``,
    ``kd_AP`` and ``closed`` (``evaluation.gap_closed`` per seed against that seed's baseline), each
    a mean over the seeds with ``<key>_pm``, half the range; ``closed_per_seed`` in ``seeds`` order
    (:func:`~posekd_lib.evaluation.gap_by_budget`).
    """
    from .evaluation import gap_by_budget

    pattern = re.compile(rf"(baseline|{re.escape(kd_tag)})(?:_\d+)?(?: s\d+)?")
    ap = {}
    for r in rows:
        m = pattern.fullmatch(str(r.get("setting", "")))
        if r.get("model") != student_name or not m or r.get("AP") is None:
            continue
        if r.get("steps") in (None, ""):
            raise KeyError(f"results row {student_name}/{r['setting']} has no 'steps' value")
        ap[m.group(1), int(r["steps"]), int(r.get("seed") or 0)] = float(r["AP"])
    return gap_by_budget(ap, teacher_ap, kd_key=kd_tag)


def evaluate_cached(model: nn.Module, split, input_size, heatmap_size, sigma: float, cache_dir: Path,
                    key: dict, batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict]]:
    """Validation metrics (COCO AP with flip test + ``PCK@0.2``) and results, cached in ``cache_dir``.

    ``key`` (e.g. the checkpoint's step) is stored with the metrics; the cache is used only when it
    matches, so a longer run or new weights are evaluated again.
    """
    from .evaluation import coco_evaluate, evaluate_topdown, write_coco_results

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


def _complexity(model: nn.Module, input_size) -> dict:
    from .models import complexity

    device = next(model.parameters()).device
    c = complexity(model.cpu(), tuple(input_size))
    model.to(device)
    return c


def _row(model_name: str, setting: str, seed, metrics: dict, cplx: dict, train_time_s, steps) -> dict:
    return {"model": model_name, "setting": setting, "seed": seed,
            **{k: metrics.get(k) for k in ROW_METRICS}, "PCK@0.2": metrics.get("PCK@0.2"),
            "params": cplx["params"], "MACs": cplx["macs"], "int8_kB": round(cplx["int8_kb"], 1),
            "train_time_s": train_time_s, "steps": steps}


def _add_row(mode: str, row: dict) -> None:
    from .evaluation import ResultsTable

    ResultsTable(run_paths(mode).results_csv).add(row)


# --------------------------------------------------------------------------- data
def training_set(mode: str | None = None, input_size=None, heatmap_size=None, labelled: float = 1.0,
                 unlabelled: bool = False):
    """The mode's training persons with augmentation, at the budget's crop/heatmap size (or the given).

    ``labelled < 1`` keeps the keypoints of that fraction of the training images only
    (:func:`~posekd_lib.data.split_labelled`, the same images for every seed); ``unlabelled`` then
    adds the other images' persons without keypoints, for a teacher to label.
    """
    from .data import TopDownDataset, dataset_splits, split_labelled

    b = budget(mode)
    split = dataset_splits(b.mode).train
    ds = TopDownDataset(split.ann_file, split.img_dir, input_size or b.input_size, heatmap_size or b.heatmap_size,
                        b.sigma, train=True, aug=b.aug)
    if labelled >= 1:
        if unlabelled:
            raise ValueError("training_set(unlabelled=True) needs labelled < 1: with every image labelled "
                             "there are no unlabelled ones")
        return ds
    kept, hidden = split_labelled(ds, labelled, seed=0)
    return torch.utils.data.ConcatDataset([kept, hidden]) if unlabelled else kept


def label_tag(labelled: float = 1.0, unlabelled: bool = False) -> str:
    """The run-tag suffix of a label budget: ``""`` on every label, ``"_l10"`` for 10 %, ``"_l10u"``
    when the other images' persons are added unlabelled (``benchmarks/bench_kd.py``, notebook 07)."""
    return "" if labelled >= 1 else f"_l{100 * labelled:g}" + ("u" if unlabelled else "")


def example_batch(mode: str | None = None, batch_size: int = 8, seed: int = 0) -> dict:
    """One augmented training batch (``image``, ``target``, ``target_weight``, ``meta``), the same for a seed."""
    torch.manual_seed(seed)
    return next(iter(torch.utils.data.DataLoader(training_set(mode), batch_size=batch_size, shuffle=True)))


# --------------------------------------------------------------------------- students
def _trainee(student: nn.Module, made) -> tuple[nn.Module, Callable | None]:
    """``(module fit trains, its loss_fn)`` for what a ``kd`` factory (or ``build_loss``) returned."""
    if isinstance(made, nn.Module):
        if not callable(getattr(made, "loss", None)):
            raise TypeError(f"kd returned a {type(made).__name__} without loss(outputs, batch); "
                            "return a Distiller or a plain loss_fn")
        return made, None
    return student, made


def _upgrade_checkpoints(run_dir: Path, net: nn.Module, step_offset: int = 0) -> None:
    """Rewrite a distilled run's checkpoints from before the distiller owned its adapters (once)."""
    from .distill import Distiller, upgrade_checkpoint

    if isinstance(net, Distiller):
        for name in ("latest.pt", "best.pt"):
            upgrade_checkpoint(Path(run_dir) / name, net, step_offset)


def train_student(student_name: str, mode: str | None = None, seed: int = 0, loss: str = "mse",
                  kd: Callable | None = None, tag: str = "baseline", progress: bool = True,
                  steps: int | None = None, labelled: float = 1.0, unlabelled: bool = False) -> Run:
    """Train (or load) one student with the mode's :class:`Budget`, evaluate it and record its row.

    ``loss`` is the ground-truth loss (``"mse"`` or ``"awing"``); ``kd(student, total_steps)``
    replaces it by a distiller (or another loss_fn; see the module docstring). ``steps`` overrides
    the budget's step count. ``labelled`` and ``unlabelled`` choose the training data as
    :func:`training_set` does (few labels; the teacher labels the rest, so ``unlabelled`` needs
    ``kd``). The run lives in ``run_paths(mode).checkpoints / f"{tag}_{student}_s{seed}"``;
    its recipe (student, loss, steps, sizes, ...; the distillation settings when ``kd`` comes from
    :func:`kd_recipe`) is stored in ``run_info.json``, and calling again with another recipe under
    the same tag is an error rather than a silent mix (a hand-written ``kd`` factory cannot be
    checked: give each of its settings its own tag). The results row
    has ``model=student_name`` and ``setting=tag`` (``f"{tag} s{seed}"`` for seeds other than 0).
    """
    from .data import dataset_splits
    from .train import History, fit

    mode = get_mode(mode)
    b = budget(mode)
    total = int(steps or b.steps)
    name = f"{tag}_{student_name}_s{seed}"
    run_dir = run_paths(mode).checkpoints / name
    amp = student_amp(student_name, b)
    recipe = {"student": student_name, "loss": "kd" if kd is not None else loss, "steps": total,
              "batch_size": b.batch_size, "lr": b.lr, "input_size": list(b.input_size),
              "heatmap_size": list(b.heatmap_size), "sigma": b.sigma, "seed": seed, "aug": b.aug, "amp": amp}
    if not 0 < labelled <= 1:
        raise ValueError(f"train_student: labelled must be a fraction in (0, 1], got {labelled}")
    if unlabelled and kd is None:
        raise ValueError("train_student(unlabelled=True) needs kd: without a teacher, crops without keypoints "
                         "carry no training signal")
    if labelled < 1:  # only then, so the recipes of runs on every label stay as they were
        recipe.update(labelled=labelled, unlabelled=bool(unlabelled))
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
    _upgrade_checkpoints(run_dir, net)
    optimizer = torch.optim.Adam(net.parameters(), lr=b.lr)
    done_before = History.steps_done(run_dir)

    train_ds = training_set(mode, labelled=labelled, unlabelled=unlabelled)
    if len(train_ds) < b.batch_size:
        raise ValueError(f"train_student: {len(train_ds)} training persons (labelled={labelled}) make no batch of "
                         f"{b.batch_size}; label a larger fraction")
    from .device_data import shuffled_loader

    loader = shuffled_loader(train_ds, b.batch_size, b.loader, _device(b.device), b.num_workers)
    _write_json(info_file, {**info, "recipe": recipe})
    t0 = time.perf_counter()
    history = fit(net, loader, loss_fn=loss_fn, max_steps=total, optimizer=optimizer, lr=b.lr,
                  device=b.device, out_dir=run_paths(mode).checkpoints, run_name=name, seed=seed,
                  threads=b.threads, progress=progress, log_every=max(1, min(10, total // 4)),
                  save_every_steps=100 if total > 200 else None, channels_last=b.channels_last, amp=amp)
    wall = time.perf_counter() - t0
    for hooked in (net, loss_fn):  # a feature distiller: take its hooks off the student and teacher again
        if hasattr(hooked, "remove"):
            hooked.remove()
    trained = history.step[-1] if history.step else total
    info = _read_json(info_file) or {}
    if trained > done_before:
        info["train_time_s"] = round(info.get("train_time_s", 0.0) + wall, 1)
    if "complexity" not in info:
        info["complexity"] = _complexity(model, b.input_size)
    _write_json(info_file, {**info, "recipe": recipe})

    model.eval()
    metrics, results = evaluate_cached(model, splits.val, b.input_size, b.heatmap_size, b.sigma, run_dir,
                                       key={"step": trained}, batch_size=b.eval_batch_size, progress=progress)
    setting = tag if seed == 0 else f"{tag} s{seed}"
    row = _row(student_name, setting, seed, metrics, info["complexity"], info.get("train_time_s"), trained)
    _add_row(mode, row)
    return Run(name, model, history, metrics, results, row, run_dir, b)


# --------------------------------------------------------------------------- distillation recipes
#: The distillation settings of notebooks 03-04 and ``benchmarks/bench_kd.py``, by run tag.
#: ``fpd``: FPD's heatmap MSE to the teacher; ``kl``: spatial-softmax KL at a temperature;
#: ``feature``: FitNets hints on the last stride-4 features (:data:`FEATURE_PAIRS`) on top of the
#: FPD term (``alpha_logits``). α balances the gradients the terms send into the student (measured
#: in notebook 03): at T = 0.5 the KL's gradient is about the GT MSE's, so α = 0.5 for both logits
#: variants. β was tuned on the SqueezeNet student in workshop mode, seed 0 (``bench_kd.py --set``):
#: COCO AP 0.0017 / 0.0043 / 0.0053 at β = 0.05 / 0.25 / 1.0 (one pair), 0.0029 / 0.0041 with three
#: pairs (neck.0/2/4 to stage4's branches) at 0.05 / 0.25 per pair; hints alone (α 0) 0.0055; the
#: teacher's heatmaps alone as target (α 1) 0.0044; baseline 0.0003. Hints with the KL (T 0.5)
#: instead of FPD, seeds 0 and 1: 0.0062 / 0.0051 against this recipe's 0.0053 / 0.0045, a lead
#: within the seed spread, so FPD stays (notebook 04, exercise 6). At 2000 steps (seeds 0, 1, 2)
#: hints alone beat the recipe, 0.0222 / 0.0238 / 0.0258 against 0.0193 / 0.0225 / 0.0226 (36.8 %
#: against 30.9 % of the gap); β 4 matched β 1 and a linearly decaying hint weight did worse (seed 0);
#: hints with the KL (T 0.5) reached 0.0232 / 0.0224 / 0.0221 (33.6 %), and 0.0239 / 0.0217 / 0.0221
#: (33.6 %) with the teacher's flip-test heatmaps as the KL's target. The recipe stays, shared by
#: every budget's runs (README).
KD_SETTINGS: dict[str, dict] = {
    "fpd": {"method": "logits", "kind": "mse", "alpha": 0.5, "teacher_cache": True},
    "kl": {"method": "logits", "kind": "kl", "alpha": 0.5, "temperature": 0.5, "teacher_cache": True},
    "feature": {"method": "feature", "beta": 1.0, "alpha_logits": 0.5, "kind": "mse"},
}
#: Feature-KD layer pairs per student, ``{student layer: teacher layer}``: the student's last neck
#: layer and HRNet's ``stage4`` output (its high-resolution branch), both 1/4 of the crop.
FEATURE_PAIRS: dict[str, dict[str, str]] = {
    "squeezenet": {"neck.4": "stage4"},
    "mobilenetv3": {"neck.2": "stage4"},
}


def kd_recipe(tag: str, teacher: nn.Module, student_name: str, mode: str | None = None, **overrides) -> Callable:
    """The ``kd`` factory of :func:`train_student` for a :data:`KD_SETTINGS` tag (``overrides`` win).

    ``train_student(name, kd=kd_recipe("fpd", teacher, name), tag="fpd")`` trains with FPD's loss;
    ``kd_recipe(...)(student, total_steps)`` is the :class:`~posekd_lib.distill.Distiller` itself.
    The teacher sees the student's crops resized to the input size of the mode's teacher config when
    it differs from the budget's (``full``: the W48's 288x384 for 192x256 students; the demo teacher
    shares the crop); pass ``teacher_input_size=(w, h)`` in ``overrides`` for another teacher.

    ``teacher_cache`` (the logits settings' default, ``teacher_cache=False`` to run the teacher
    live): the teacher's heatmaps of every training person's plain crop are computed once
    (:func:`teacher_cache_for`) and warped to each augmented crop, so a distilled step costs no
    teacher forward; the recipe records it (a run with and one without are different runs). Batches
    the cache does not cover (a labelled subset, unlabelled persons) get the live teacher.
    """
    from hrnet_pose.configs import load_configs

    from .distill import FeatureKD, LogitsKD
    from .teachers import DEMO_CONFIG, FULL_CONFIG

    if tag not in KD_SETTINGS:
        raise KeyError(f"unknown distillation setting {tag!r}; choose one of {sorted(KD_SETTINGS)}")
    b = budget(mode)
    teacher_size = tuple(int(v) for v in load_configs(FULL_CONFIG if b.mode == "full" else DEMO_CONFIG).MODEL.IMAGE_SIZE)
    default_size = None if teacher_size == tuple(b.input_size) else teacher_size
    settings = {**KD_SETTINGS[tag], "teacher_input_size": default_size, **overrides}
    method = settings.pop("method")
    teacher_cache = bool(settings.pop("teacher_cache", False))
    if method == "logits":
        build = lambda student, total: LogitsKD(teacher, student, total_steps=total, **settings)  # noqa: E731
    else:
        pairs = settings.pop("pairs", None) or FEATURE_PAIRS.get(student_name)
        if pairs is None:
            raise KeyError(f"no feature-KD layer pairs for student {student_name!r}; pass pairs={{student_layer: "
                           f"teacher_layer}} (known: {sorted(FEATURE_PAIRS)})")
        settings["pairs"] = dict(pairs)
        build = lambda student, total: FeatureKD(teacher, student, total_steps=total,  # noqa: E731
                                                 input_size=b.input_size, **settings)
    recipe = json.loads(json.dumps({"setting": tag, "method": method, **settings},
                                   default=lambda o: getattr(o, "__qualname__", type(o).__name__)))
    recipe["teacher"] = weights_fingerprint(teacher) if teacher is not None else None  # new teacher: new run
    if teacher_cache:
        if method != "logits":
            raise ValueError(f"kd_recipe({tag!r}, teacher_cache=True): the cache holds the teacher's heatmaps only, "
                             "and a feature setting needs its live features; use a logits setting (fpd, kl)")
        recipe["teacher_cache"] = True
        if teacher is not None:      # (None: only the recipe is wanted)
            size = settings["teacher_input_size"] or b.input_size
            settings["cache"] = _LazyCache(lambda: teacher_cache_for(teacher, b.mode, size))
    return _KDFactory(build, recipe)


class _LazyCache:
    """A teacher cache built (or loaded) at the first batch that needs it, so that loading a
    finished distilled run never builds one."""

    def __init__(self, make: Callable):
        self._make, self._cache = make, None

    def for_batch(self, batch: dict, *args, **kwargs) -> torch.Tensor:
        if self._cache is None:
            self._cache = self._make()
        return self._cache.for_batch(batch, *args, **kwargs)


def teacher_cache_for(teacher: nn.Module, mode: str | None = None, input_size=None):
    """The :class:`~posekd_lib.teacher_cache.TeacherCache` of ``teacher`` on the mode's training
    persons at ``input_size`` (default the budget's): built once (one teacher forward per person)
    and stored under ``run_paths(mode).root / "teacher_cache"``, named by the teacher's
    :func:`weights_fingerprint`, so another teacher never reads it."""
    from .teacher_cache import TeacherCache, cached_teacher

    b = budget(mode)
    size = tuple(int(v) for v in (input_size or b.input_size))
    ds = training_set(b.mode)
    path = run_paths(b.mode).root / "teacher_cache" / f"{weights_fingerprint(teacher)}_{size[0]}x{size[1]}_{len(ds)}.pt"
    device = next(teacher.parameters()).device

    def build():
        return TeacherCache.build(lambda x: teacher(x.to(device)), ds, input_size=size, source=str(path))

    return cached_teacher(path, build)


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state (names, shapes, dtypes and values of every tensor), so that a
    distilled run's recipe names the teacher it was distilled from."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


class _KDFactory:
    """``kd_recipe``'s return value: ``(student, total_steps) -> Distiller`` plus the ``recipe`` it builds,
    which :func:`train_student` stores with the run, so a cached run made with other KD settings
    under the same tag is reported instead of silently reused."""

    def __init__(self, build: Callable, recipe: dict):
        self.build, self.recipe = build, recipe

    def __call__(self, student, total_steps):
        return self.build(student, total_steps)


# --------------------------------------------------------------------------- teacher
def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluate_teacher(mode: str | None = None, name: str | None = None, path=None,
                     progress: bool = True) -> Run:
    """Load the mode's teacher (:func:`posekd_lib.teachers.load_teacher`), evaluate and record it.

    Evaluated at the teacher's own input and heatmap size with flip test; cached per weights file
    (by content hash) under ``run_paths(mode).checkpoints / f"teacher_{info.name}_{sha1[:10]}"``,
    so new weights are evaluated again. The row has ``setting="teacher"``.
    """
    from .data import dataset_splits
    from .teachers import load_teacher

    mode = get_mode(mode)
    b = budget(mode)
    model, info = load_teacher(name, mode=mode, path=path, device=_device(b.device))
    run_dir = run_paths(mode).checkpoints / f"teacher_{info.name}_{_sha1(info.weights)[:10]}"
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
               info.card.get("train_wall_time_s_this_session"), None)
    _add_row(mode, row)
    return Run(info.name, model, None, metrics, results, row, run_dir, b)


def budget_dict(mode: str | None = None) -> dict:
    """The budget as a plain dict (for printing and cards)."""
    return asdict(budget(mode))


# --------------------------------------------------------------------------- MAX78000 students
#: (float steps, QAT steps) of the MAX78000 student per mode (batch and lr from the mode's Budget).
AI8X_STEPS = {"quick": (4, 2), "workshop": (1000, 250), "full": (30_000, 6_000)}


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
               steps: tuple[int, int] | None = None, progress: bool = True) -> Ai8xRun:
    """Train (or load) a MAX78000 pose student: float training, then QAT, each ``AI8X_STEPS[mode]``.

    ``kd`` is a :data:`KD_SETTINGS` logits tag (``"fpd"``, ``"kl"``) distilled from ``teacher``
    (default: the mode's teacher), or None for ground truth only. The runs
    ``f"{tag}_float"`` / ``f"{tag}_qat"`` (tag default ``f"ai8x_{variant}_{kd or 'gt'}_s{seed}"``)
    are cached like :func:`train_student`'s; the float weights, the QAT weights and the integer
    simulate model are evaluated (COCO AP with flip test, PCK@0.2; cached per step).
    """
    from . import ai8x
    from . import ai8x_models as am
    from .ai8x_models import HeatmapView, ai85posenet, simulate_copy
    from .data import dataset_splits
    from .train import History, fit

    mode = get_mode(mode)
    b = budget(mode)
    float_steps, qat_steps = steps or AI8X_STEPS[mode]
    policy = qat_policy if qat_policy is not None else am.DEFAULT_QAT_POLICY
    name = tag or f"ai8x_{variant}_{kd or 'gt'}_s{seed}"
    root = run_paths(mode).checkpoints
    if tuple(b.input_size) != tuple(am.AI8X_STUDENT_INPUT) and mode != "full":
        raise ValueError(f"the MAX78000 student works at {am.AI8X_STUDENT_INPUT}, the {mode} budget at {b.input_size}")
    splits = dataset_splits(mode)
    train_ds = training_set(mode, am.AI8X_STUDENT_INPUT, am.AI8X_STUDENT_HEATMAP)
    from .device_data import shuffled_loader

    loader = shuffled_loader(train_ds, b.batch_size, b.loader, _device(b.device), b.num_workers)
    if kd is not None:
        if KD_SETTINGS.get(kd, {}).get("method") != "logits":
            raise ValueError(f"kd={kd!r}: the MAX78000 student distils with a logits setting "
                             f"({[t for t, s in KD_SETTINGS.items() if s['method'] == 'logits']}) or None")
        if teacher is None:
            from .distill import freeze
            from .teachers import load_teacher

            teacher = freeze(load_teacher(mode=mode, device=_device(b.device))[0])
    torch.manual_seed(seed)
    model = ai85posenet(variant)
    trainee = HeatmapView(model)
    teacher_id = None
    if kd is not None:  # one distiller for both phases: its KD schedule runs over float + QAT steps
        factory = kd_recipe(kd, teacher, variant, mode)
        teacher_id = factory.recipe["teacher"]
        trainee = factory(trainee, float_steps + qat_steps)
    common = dict(out_dir=root, seed=seed, device=b.device, threads=b.threads, progress=progress,
                  save_every_steps=100, log_every=max(1, min(10, float_steps // 4)), channels_last=b.channels_last)
    run_dirs = (root / f"{name}_float", root / f"{name}_qat")
    stored = _read_json(run_dirs[1] / "run_info.json") or {}
    if kd is not None and stored and stored.get("teacher") != teacher_id:  # a finished run of another teacher
        raise ValueError(f"run {name!r} in {root} was distilled from another teacher (stored "
                         f"{stored.get('teacher')!r}, asked {teacher_id!r}); use another tag, or delete "
                         f"{run_dirs[0].name} and {run_dirs[1].name} to retrain")
    done_before = sum(History.steps_done(d) for d in run_dirs)
    t0 = time.perf_counter()
    _upgrade_checkpoints(run_dirs[0], trainee)
    h_float = fit(trainee, loader, max_steps=float_steps, lr=b.lr, run_name=f"{name}_float", **common)
    float_model = copy.deepcopy(model).eval()
    ai8x.initiate_qat(model, policy)
    _upgrade_checkpoints(run_dirs[1], trainee, step_offset=float_steps)
    opt = torch.optim.Adam(trainee.parameters(), lr=b.lr / 10)
    h_qat = fit(trainee, loader, max_steps=qat_steps, optimizer=opt, run_name=f"{name}_qat", **common)
    wall = time.perf_counter() - t0
    run_dir = run_dirs[1]
    info = _read_json(run_dir / "run_info.json") or {}
    if sum(History.steps_done(d) for d in run_dirs) > done_before:   # trained now (not only loaded)
        info["train_time_s"] = round(info.get("train_time_s", 0.0) + wall, 1)
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
    return Ai8xRun(name, model, float_model, {"float": h_float, "qat": h_qat}, metrics, results, run_dir)
