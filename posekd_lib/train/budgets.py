"""The run budget of each mode and the data it trains on.

A :class:`Budget` per mode (quick / workshop / full, read from ``configs/modes/<mode>.yaml``) fixes the crop and heatmap size (those of the
demo teacher in ``quick`` and ``workshop``), the batch size, the number of steps, the learning rate,
the augmentation preset and the device; :func:`budget` resolves it, and :func:`budget_fields`
overrides fields of it for one run (how a :class:`~posekd_lib.runs.runconfig.RunConfig` sets them).
:func:`training_set` is the mode's augmented training persons at the budget's sizes.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from dataclasses import asdict, dataclass

import torch

from ..config import REPO_ROOT, get_mode


@dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes of one mode; sizes are ``(w, h)``."""

    mode: str
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    batch_size: int = 32
    steps: int = 500
    feature_steps: int | None = None  # steps of a feature-KD run (None: ``steps``); its step also runs
                                      # the teacher forward, so at a time budget it gets fewer steps
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


#: The folder of the modes' budget files (``<mode>.yaml``: Budget fields, plus ``ai8x_steps``).
MODES_DIR = REPO_ROOT / "configs" / "modes"
_MODE_ONLY_KEYS = ("ai8x_steps",)     # mode settings that are not Budget fields


def mode_settings(mode: str | None = None) -> dict:
    """The settings of ``configs/modes/<mode>.yaml`` (Budget fields and ``ai8x_steps``), checked:
    an unknown key or a malformed value is an error naming the file and the key."""
    return dict(_mode_settings(get_mode(mode)))


@functools.lru_cache(maxsize=None)
def _mode_settings(mode: str) -> tuple:
    import yaml

    path = MODES_DIR / f"{mode}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: the budget file of mode {mode!r} is missing") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of budget fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Budget)}
    allowed = (set(fields) - {"mode"}) | set(_MODE_ONLY_KEYS)
    if set(data) - allowed:
        raise ValueError(f"{path}: unknown key(s) {sorted(set(data) - allowed)}; allowed: {sorted(allowed)}")
    out = {}
    for key, value in data.items():
        if key in ("input_size", "heatmap_size", "ai8x_steps"):
            if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
                raise ValueError(f"{path}: {key} must be two integers, got {value!r}")
            value = tuple(value)
        elif key == "num_workers" and value == "auto":
            value = min(8, os.cpu_count() or 1)
        elif isinstance(fields[key].default, bool) and not isinstance(value, bool):
            raise ValueError(f"{path}: {key} must be true or false, got {value!r}")
        elif isinstance(fields[key].default, (int, float)) and not isinstance(fields[key].default, bool) \
                and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: {key} must be a number, got {value!r}")
        out[key] = value
    return tuple(out.items())


def demo_teacher_sizes() -> dict:
    """``input_size``, ``heatmap_size`` (w, h) and ``sigma`` of the demo teacher's config."""
    return dict(_demo_teacher_sizes())


@functools.lru_cache(maxsize=1)
def _demo_teacher_sizes() -> tuple:
    from hrnet_pose.configs import load_configs

    from ..models.teachers import DEMO_CONFIG

    m = load_configs(DEMO_CONFIG).MODEL
    return (("input_size", tuple(int(v) for v in m.IMAGE_SIZE)),
            ("heatmap_size", tuple(int(v) for v in m.HEATMAP_SIZE)), ("sigma", float(m.SIGMA)))


def budget(mode: str | Budget | None = None) -> Budget:
    """The :class:`Budget` of ``mode`` (default: ``$POSEKD_MODE``); a :class:`Budget` is returned as
    it is, so a run resolves its mode once and passes the budget to the functions it calls."""
    if isinstance(mode, Budget):
        return mode
    mode = get_mode(mode)
    sizes = {} if mode == "full" else demo_teacher_sizes()
    fields = {k: v for k, v in mode_settings(mode).items() if k not in _MODE_ONLY_KEYS}
    return Budget(mode, **{**sizes, **fields, **_BUDGET_FIELDS.get()})


_BUDGET_FIELDS: contextvars.ContextVar[dict] = contextvars.ContextVar("budget_fields", default={})


@contextlib.contextmanager
def budget_fields(**fields):
    """Within the block, :func:`budget` returns every mode's budget with ``fields`` replaced.

    How a :class:`~posekd_lib.runs.runconfig.RunConfig` sets the batch size, learning rate and other
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


def steps_for(b: Budget, method: str | None = None, teacher_cache: bool = False) -> int:
    """The steps a run of ``method`` (``kd_recipe``'s ``"logits"`` / ``"feature"``, None for ground
    truth only) trains for under ``b``: ``b.feature_steps`` for feature KD with the live teacher when
    set (its step also runs the teacher), else ``b.steps`` — a hinted step served by the teacher
    caches costs about a plain step (1.04-1.10x, ``benchmarks/bench_kd_step.py``), so it gets the
    baseline's steps."""
    live_feature = method == "feature" and not teacher_cache
    return int(b.feature_steps) if live_feature and b.feature_steps else int(b.steps)


def budget_dict(mode: str | None = None) -> dict:
    """The budget as a plain dict (for printing and cards)."""
    return asdict(budget(mode))


#: Students whose CPU training is slower under bf16 autocast (measured: mobilenetv3 0.43 s against
#: 0.21 s per step of 32 in float32; its depthwise convolutions have no fast bf16 kernel here).
FLOAT32_ON_CPU = frozenset({"mobilenetv3", "mobilenetv3_os16"})


def student_amp(student_name: str, b: Budget) -> str | None:
    """``fit(amp=...)`` for a student under a budget: the budget's, except float32 (None) for the
    :data:`FLOAT32_ON_CPU` students on a CPU budget, and wherever ``fit`` trains in float32 anyway
    (bf16 on a CPU without native bf16, ``loop.cpu_has_native_bf16``), so the run's recipe says
    what it trained in."""
    from .loop import _resolve_amp

    if b.device == "cpu" and student_name in FLOAT32_ON_CPU:
        return None
    if b.device == "cpu" and b.amp in ("bf16", "bfloat16") and _resolve_amp(b.amp, torch.device("cpu")) is None:
        return None
    return b.amp


def training_set(mode: str | Budget | None = None, input_size=None, heatmap_size=None, labelled: float = 1.0,
                 unlabelled: bool = False, split=None, extra_unlabelled: int = 0):
    """The mode's training persons with augmentation, at the budget's crop/heatmap size (or the given).

    ``mode`` is a mode name or an already resolved :class:`Budget` (a run resolves its mode once and
    passes the budget down), ``split`` the training split when the caller has it (default: the
    mode's). ``labelled < 1`` keeps the keypoints of that fraction of the training images only
    (:func:`~posekd_lib.data.datasets.split_labelled`, the same images for every seed); ``unlabelled`` then
    adds the other images' persons without keypoints, for a teacher to label. ``extra_unlabelled``
    (``N > 0``, every training label kept) adds the persons of ``N`` more generated images without
    keypoints (:func:`~posekd_lib.data.synth.ensure_extra_train`, the images the demo teacher's
    continuations trained on; :func:`~posekd_lib.data.datasets.add_unlabelled`): KD on unlabelled
    images at the full label budget.
    """
    from ..data.datasets import TopDownDataset, dataset_splits, split_labelled

    b = mode if isinstance(mode, Budget) else budget(mode)
    split = split if split is not None else dataset_splits(b.mode).train
    ds = TopDownDataset(split.ann_file, split.img_dir, input_size or b.input_size, heatmap_size or b.heatmap_size,
                        b.sigma, train=True, aug=b.aug)
    if extra_unlabelled:
        if labelled < 1 or unlabelled or int(extra_unlabelled) < 0:
            raise ValueError(f"training_set(extra_unlabelled={extra_unlabelled}) needs a positive image count, "
                             "every label kept (labelled=1) and unlabelled=False")
        from ..data.datasets import add_unlabelled
        from ..data.synth import ensure_extra_train

        extra = ensure_extra_train(b.mode, int(extra_unlabelled))
        return add_unlabelled(ds, TopDownDataset(extra.ann_file, extra.img_dir, ds.input_size, heatmap_size or
                                                 b.heatmap_size, b.sigma, train=True, aug=b.aug))
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
