"""The run config's schema: its dataclasses, the stages, students and term kinds it may name, and
`ConfigError`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...models.registry import AI8X_STUDENT, BOTTOM_UP_STUDENT, MCU_STUDENTS, TEACHER_MODEL  # noqa: F401 (re-exported)

#: The stages a config may name, in pipeline order. ``python -m posekd_lib.run`` trains (and
#: evaluates: ``train_student`` always does), quantizes, exports, then records the ``evaluate`` row.
STAGES = ("train", "distil", "qat", "quantize", "evaluate", "export", "izer")
#: Stages it runs today; the others are rejected with a message rather than skipped.
WIRED_STAGES = ("train", "distil", "qat", "quantize", "evaluate", "export")
# The students a config may name are ``registry.MODELS``. The MAX78000 student (``ai85posenet``,
# ``options: {variant: tiny}``) trains with ``experiments.train_ai8x``, float steps then QAT steps,
# always both (its ``qat`` stage); the bottom-up one (``ai85bottomup``, ``options: {variant:
# tiny_s4}``: whole frames in, heatmaps + PAFs out) with ``bottom_up.train_bottom_up``, float then QAT
# as above; its ``distil`` stage takes one ``fpd`` term: the MSE to maps drawn from the teacher's
# keypoints, its weight the KD share α. The teacher (``hrnet``, ``options: {config: w16_128x96,
# init_from: <weights>, train_multiple: 5}``) trains with ``teacher_training.train_teacher``; its stages
# are ``train``, ``evaluate`` and ``export`` (the fp16 weights and card the notebooks load).
#: Distillation term kinds: FPD's heatmap MSE, the spatial-softmax KL, FitNets hints.
LOGIT_TERMS = {"fpd": "mse", "kl": "kl"}
#: Distiller keywords a term's ``options`` may set; the others go in ``distill.options``.
LOGIT_OPTIONS = ("temperature", "teacher_weight")
HINT_OPTIONS = ("normalize", "branches", "feature_loss", "feature_temperature")
TERM_KINDS = (*LOGIT_TERMS, "hint")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")   # train.fit(amp=...); off: float32
LR_SCHEDULES = ("cosine",)   # what train_student trains with (fit's default); others are not wired


class ConfigError(ValueError):
    """A run config that cannot be run; the message starts with the dotted key at fault."""


# --------------------------------------------------------------------------- the dataclasses
@dataclass
class DataConfig:
    """Which data: the mode's dataset (``mode``; ``full`` reads COCO under ``coco_root``) and the label budget."""

    mode: str | None = None            # quick | workshop | full; null: $POSEKD_MODE, else workshop
    coco_root: str | None = None       # full mode only; null: $COCO_ROOT
    labelled: float = 1.0              # fraction of training images whose keypoints are used
    unlabelled: bool = False           # the other images' persons too, without keypoints (needs distil)
    extra_unlabelled: int = 0          # persons of N more generated images, without keypoints (needs distil)
    sigma: float | None = None         # bottom-up heatmap Gaussian, input pixels; null: 7 (LW-OpenPose's)


@dataclass
class ModelConfig:
    """The student: an ``experiments.STUDENTS`` name, or its base name with the variant's options."""

    student: str = "squeezenet"
    options: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimisation; ``null`` fields take the mode budget's value."""

    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    schedule: str = "cosine"
    loss: str = "mse"                  # ground-truth loss of a train stage: mse | awing (bottom-up: mse | mse_pos10)
    eval_every: int | None = None      # a learning curve: validation AP on fixed images every N steps
    amp: str | None = None             # Budget.amp: auto | bf16 | fp16 | off (float32); null: the budget's.
                                       # budgets.student_amp still trains FLOAT32_ON_CPU students in float32


@dataclass
class DistillTerm:
    """One weighted loss term: ``fpd`` / ``kl`` (weight = α) or ``hint`` (weight = β, with layer pairs)."""

    kind: str
    weight: float = 1.0
    options: dict = field(default_factory=dict)     # LogitsKD / FeatureKD keywords (temperature, normalize, ...)
    pairs: dict = field(default_factory=dict)       # hint: {student layer: teacher layer}; {}: the student's registry hint_pairs


@dataclass
class DistillConfig:
    """The teacher and the list of distillation terms of a ``distil`` stage."""

    teacher: str | None = None
    schedule: str = "constant"         # the KD weight schedule (distill.SCHEDULES)
    options: dict = field(default_factory=dict)     # distiller keywords shared by all terms (teacher_flip_test, ...)
    terms: list[DistillTerm] = field(default_factory=list)


@dataclass
class QatConfig:
    """The MAX78000 student's quantisation-aware training after its float steps (``qat`` stage)."""

    steps: int | None = None           # null: experiments.AI8X_STEPS of the mode
    lr_scale: float = 0.1              # QAT learning rate = lr x this (train_ai8x: 0.1)


@dataclass
class PruneConfig:
    """Channel pruning (not wired into ``run`` yet: a ratio other than 0 is an error, not ignored)."""

    ratio: float = 0.0


@dataclass
class QuantizeConfig:
    """The ``quantize`` stage: static int8 ONNX (onnxruntime, QDQ) of the exported student, evaluated."""

    calib_samples: int = 64            # un-augmented training crops that set the activation ranges
    method: str = "MinMax"             # onnx_export.CALIBRATION_METHODS
    per_channel: bool = True


@dataclass
class ExportConfig:
    """The ``export`` stage: an ONNX file of the trained student in the run's folder."""

    opset: int = 17
    dynamic_batch: bool = True
    dynamo: bool = False               # torch.export-based exporter; the TorchScript one is ~40x faster, same graph


@dataclass
class RunConfig:
    """Everything one run needs; see the module docstring for the YAML layout."""

    name: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augmentation: str | None = None    # Budget.aug, a data.AUGMENTATIONS preset (light, hrnet); null: the budget's
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    stages: list[str] = field(default_factory=lambda: ["train", "evaluate"])
