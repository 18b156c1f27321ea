"""The run budget of each mode and the data it trains on.

A :class:`Budget` per mode (quick / workshop / full) fixes the crop and heatmap size (those of the
demo teacher in ``quick`` and ``workshop``), the batch size, the number of steps, the learning rate,
the augmentation preset and the device; :func:`budget` resolves it, and :func:`budget_fields`
overrides fields of it for one run (how a :class:`~posekd_lib.runconfig.RunConfig` sets them).
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

from .config import get_mode


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


# quick: seconds in CI. workshop: one live training run <= 8 min on 2 cores (the live limit),
# so the budget is set in time: 3000 steps x 32 crops (96k crops, 8 epochs) of a plain or cached
# logits-KD step (0.128 s per step on 2 idle threads, 385 s for the baseline, docs/experiments.md
# E9) and 1500 of a feature-KD step, which also runs the teacher forward (about twice the cost).
# Measured per step before (one thread of a busy machine): squeezenet 0.19 s under bf16 autocast
# (0.53 s float32), mobilenetv3 0.21 s float32 (0.43 s under bf16: its depthwise convolutions are
# slower in bf16, so it trains in float32, see student_amp). Light augmentation because HRNet's
# (scale 0.35, rotation 45 deg, half-body) is made for 210 epochs: at 1000 steps it scores 0.003 AP
# against light's 0.0085 (docs/experiments.md, section 1). Both at the demo teacher's crop, heatmap
# and sigma (read from its config). full: real COCO on a GPU at HRNet's 256x192 with HRNet's augmentation.
_OVERRIDES = {
    "quick": {"batch_size": 8, "steps": 4, "eval_batch_size": 32},
    "workshop": {"steps": 3000, "feature_steps": 1500},
    "full": {"input_size": (192, 256), "heatmap_size": (48, 64), "sigma": 2.0, "batch_size": 64,
             "steps": 30_000, "lr": 1e-3, "num_workers": min(8, os.cpu_count() or 1), "eval_batch_size": 128, "device": "auto",
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


def budget(mode: str | Budget | None = None) -> Budget:
    """The :class:`Budget` of ``mode`` (default: ``$POSEKD_MODE``); a :class:`Budget` is returned as
    it is, so a run resolves its mode once and passes the budget to the functions it calls."""
    if isinstance(mode, Budget):
        return mode
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


def steps_for(b: Budget, method: str | None = None) -> int:
    """The steps a run of ``method`` (``kd_recipe``'s ``"logits"`` / ``"feature"``, None for ground
    truth only) trains for under ``b``: ``b.feature_steps`` for feature KD when set, else ``b.steps``."""
    return int(b.feature_steps) if method == "feature" and b.feature_steps else int(b.steps)


def budget_dict(mode: str | None = None) -> dict:
    """The budget as a plain dict (for printing and cards)."""
    return asdict(budget(mode))


#: Students whose CPU training is slower under bf16 autocast (measured: mobilenetv3 0.43 s against
#: 0.21 s per step of 32 in float32; its depthwise convolutions have no fast bf16 kernel here).
FLOAT32_ON_CPU = frozenset({"mobilenetv3", "mobilenetv3_os16"})


def student_amp(student_name: str, b: Budget) -> str | None:
    """``fit(amp=...)`` for a student under a budget: the budget's, except float32 (None) for the
    :data:`FLOAT32_ON_CPU` students on a CPU budget."""
    if b.device == "cpu" and student_name in FLOAT32_ON_CPU:
        return None
    return b.amp


def training_set(mode: str | Budget | None = None, input_size=None, heatmap_size=None, labelled: float = 1.0,
                 unlabelled: bool = False, split=None):
    """The mode's training persons with augmentation, at the budget's crop/heatmap size (or the given).

    ``mode`` is a mode name or an already resolved :class:`Budget` (a run resolves its mode once and
    passes the budget down), ``split`` the training split when the caller has it (default: the
    mode's). ``labelled < 1`` keeps the keypoints of that fraction of the training images only
    (:func:`~posekd_lib.data.split_labelled`, the same images for every seed); ``unlabelled`` then
    adds the other images' persons without keypoints, for a teacher to label.
    """
    from .data import TopDownDataset, dataset_splits, split_labelled

    b = mode if isinstance(mode, Budget) else budget(mode)
    split = split if split is not None else dataset_splits(b.mode).train
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
