"""The models a run config may name (``model.student``), in one table: how each is built, what its
head outputs, how it trains and which ``model.options`` it takes.

Four families train differently: ``topdown`` students (person crops in, heatmaps out; float
training, ONNX export), the two MAX78000 students, ``mcu_topdown`` (the same task on ai8x
layers) and ``mcu_bottomup`` (whole frames in, heatmaps + part affinity fields out), both trained
float then quantization-aware (``qat``), and the ``teacher`` (an HRNet trained on the embedded
dataset by ``teacher_training.train_teacher``, exported as the fp16 weights and card the
notebooks load). The runner, the config checks, the reference loader and
``experiments.STUDENTS`` read this table instead of comparing names.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from torch import nn

TOPDOWN, MCU_TOPDOWN, MCU_BOTTOMUP, TEACHER = "topdown", "mcu_topdown", "mcu_bottomup", "teacher"


@dataclass(frozen=True)
class ModelEntry:
    """One model of :data:`MODELS`. ``builder`` is ``"module:function"`` (imported on first use);
    ``defaults`` are its keywords for this entry (a top-down variant); ``base`` is the
    ``models.build_student`` name of a top-down student; ``hint_pairs`` its feature-KD layer pairs,
    ``{student layer: teacher layer}`` (the feature recipe's hints; empty: none chosen)."""

    name: str
    family: str
    outputs: str
    options: tuple[str, ...]
    builder: str
    defaults: dict = field(default_factory=dict)
    base: str | None = None
    hint_pairs: dict = field(default_factory=dict)

    @property
    def qat(self) -> bool:
        """Whether it trains float then quantization-aware (the MAX78000 students)."""
        return self.family in (MCU_TOPDOWN, MCU_BOTTOMUP)

    def build(self, **kw) -> nn.Module:
        """A fresh model (no downloaded weights); ``kw`` go to the builder after ``defaults``."""
        module, fn = self.builder.split(":")
        make = getattr(importlib.import_module(module), fn)
        return make(self.base, **self.defaults, **kw) if self.base else make(**self.defaults, **kw)

    def variants(self) -> dict | None:
        """The MAX78000 students' variant tables (``options: {variant: ...}``); None for the others."""
        from . import ai8x_models

        return {MCU_TOPDOWN: ai8x_models.VARIANTS, MCU_BOTTOMUP: ai8x_models.BOTTOM_UP_VARIANTS}.get(self.family)


_HEATMAPS = "17 COCO keypoint heatmaps of a person crop, at a quarter of its size"
# The feature recipe's hints: the student's last neck layer to HRNet's ``stage4`` output (its
# high-resolution branch), both at 1/4 of the crop (chosen on measured runs: docs/experiments.md).
MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("squeezenet", TOPDOWN, _HEATMAPS, (), "posekd_lib.models.students:build_student", base="squeezenet",
               hint_pairs={"neck.4": "stage4"}),
    ModelEntry("mobilenetv3", TOPDOWN, _HEATMAPS, ("output_stride",), "posekd_lib.models.students:build_student",
               base="mobilenetv3", hint_pairs={"neck.2": "stage4"}),
    ModelEntry("mobilenetv3_os16", TOPDOWN, _HEATMAPS, (), "posekd_lib.models.students:build_student",
               {"output_stride": 16}, base="mobilenetv3"),
    ModelEntry("ai85posenet", MCU_TOPDOWN, _HEATMAPS + " (96x128 crops, ai8x layers)", ("variant",),
               "posekd_lib.models.ai8x_models:ai85posenet"),
    ModelEntry("ai85bottomup", MCU_BOTTOMUP, "19 keypoint heatmaps + 38 part affinity fields of a whole "
               "frame (ai8x layers)", ("variant", "input_size"), "posekd_lib.models.ai8x_models:ai85bottomup"),
    ModelEntry("hrnet", TEACHER, _HEATMAPS + " (an HRNet teacher; its config sets the crop)",
               ("config", "init_from", "train_multiple"), "posekd_lib.train.teacher_training:hrnet_teacher"),
)}
#: The MAX78000 students' config names.
AI8X_STUDENT = next(n for n, e in MODELS.items() if e.family == MCU_TOPDOWN)
BOTTOM_UP_STUDENT = next(n for n, e in MODELS.items() if e.family == MCU_BOTTOMUP)
MCU_STUDENTS = tuple(n for n, e in MODELS.items() if e.qat)
#: The top-down students as ``experiments.STUDENTS`` names them: ``{name: (models.build_student base, its keywords)}``.
TOPDOWN_STUDENTS: dict[str, tuple[str, dict]] = {n: (e.base, dict(e.defaults)) for n, e in MODELS.items()
                                                 if e.family == TOPDOWN}
#: The teacher's config name, and its ``model.options`` when a config leaves them out: an
#: ``hrnet_pose`` config, the weights it starts from, how many times the training images it sees.
TEACHER_MODEL = next(n for n, e in MODELS.items() if e.family == TEACHER)
TEACHER_OPTIONS = {"config": "w16_128x96", "init_from": None, "train_multiple": 1}


def model_entry(name: str) -> ModelEntry:
    """The :data:`MODELS` entry called ``name`` (KeyError naming the known ones)."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]
