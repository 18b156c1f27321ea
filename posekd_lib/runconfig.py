"""One run as one YAML file: :class:`RunConfig`, its checks, overrides, id and the recipe it maps to.

A run's settings used to live in five places (the mode's ``Budget``, ``KD_SETTINGS``, keyword
overrides, ``--set`` flags and the run's name); a :class:`RunConfig` holds all of them as plain
dataclasses, read from and written to YAML (``configs/*.yaml``, and ``config.yaml`` in the run's
folder)::

    name: feature                 # the run's tag: folder <tag>_<student>_s<seed>, results setting
    seed: 0
    data: {mode: null, coco_root: null, labelled: 1.0, unlabelled: false, sigma: null}
    model: {student: squeezenet, options: {}}
    augmentation: null            # a Budget.aug preset name; null: the mode budget's
    optim: {steps: null, batch_size: null, lr: null, schedule: cosine, loss: mse, amp: null}
    distill:
      teacher: null               # teachers.load_teacher name; null: the mode's teacher
      schedule: constant
      terms:
        - {kind: hint, weight: 1.0, pairs: {neck.4: stage4}}
        - {kind: fpd, weight: 0.5}
    quantize: {calib_samples: 64, method: MinMax, per_channel: true}
    export: {opset: 17, dynamic_batch: true, dynamo: false}
    stages: [distil, evaluate]       # of STAGES; qat/prune sections are placeholders, not wired yet

``null`` means "the mode's :class:`~posekd_lib.budgets.Budget` value", so one file serves every
mode. :func:`from_dict` checks every key and value and raises a :class:`ConfigError` naming the
dotted key (``distill.terms[1].kind``); :func:`apply_overrides` applies ``--set a.b=c`` items
(values read as YAML); :func:`config_id` is a short hash of the canonical YAML.

:func:`train_run` makes the run with the existing functions of :mod:`posekd_lib.experiments`
(``train_student`` and ``kd_recipe``), so a config that says what a notebook does reuses the
notebook's cached run and gives the same metrics for the same seed: the distillation terms map
onto one ``KD_SETTINGS`` entry plus overrides (``fpd``/``kl`` alone: ``LogitsKD``; a ``hint`` term,
optionally with one logits term: ``FeatureKD``), and only settings that differ from the entry and
from the distiller's defaults are passed, so the stored recipe equals the notebook's.

The runs table (``<mode folder>/runs.csv``, one row per config id, every config field a column)
is :mod:`posekd_lib.runs_table`'s. The mode's ``results.csv`` keeps the rows ``train_student``
writes, as before.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

#: The stages a config may name, in pipeline order. ``python -m posekd_lib.run`` trains (and
#: evaluates: ``train_student`` always does), quantizes, exports, then records the ``evaluate`` row.
STAGES = ("train", "distil", "qat", "quantize", "evaluate", "export", "izer")
#: Stages it runs today; the others are rejected with a message rather than skipped.
WIRED_STAGES = ("train", "distil", "qat", "quantize", "evaluate", "export")
#: The MAX78000 student (``ai8x_models.ai85posenet``, ``options: {variant: tiny}``): trained with
#: ``experiments.train_ai8x``, float steps then QAT steps, always both (its ``qat`` stage).
AI8X_STUDENT = "ai85posenet"
#: The bottom-up MAX78000 student (``ai8x_models.ai85bottomup``, ``options: {variant: tiny_s4}``): whole
#: frames in, heatmaps + PAFs out, trained with ``bottom_up.train_bottom_up``, float then QAT as above.
#: Its ``distil`` stage takes one ``fpd`` term: the MSE to maps drawn from the teacher's keypoints, its
#: weight the KD share α.
BOTTOM_UP_STUDENT = "ai85bottomup"
MCU_STUDENTS = (AI8X_STUDENT, BOTTOM_UP_STUDENT)
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
    pairs: dict = field(default_factory=dict)       # hint: {student layer: teacher layer}; {}: FEATURE_PAIRS


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


# --------------------------------------------------------------------------- reading and checking
def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value, tp, key: str):
    """``value`` as type ``tp`` (a dataclass, list[...], dict, scalar, or Optional of one), or ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = args or (object,)
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)    # PyYAML reads 1e-3 (no dot) as a string
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is object:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, data, key: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    dotted = (lambda k: f"{key}.{k}") if key else (lambda k: k)
    for k in data:
        if k not in hints:
            raise ConfigError(f"{dotted(k)}: unknown key{_suggest(str(k), names)}; "
                              f"{cls.__name__} has {names}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{dotted(missing[0])}: missing (required)")
    return cls(**{k: _convert(v, hints[k], dotted(k)) for k, v in data.items()})


def from_dict(data: dict) -> RunConfig:
    """A checked :class:`RunConfig` from plain data (every key and value; errors name the dotted key)."""
    cfg = _build(RunConfig, data)
    validate(cfg)
    return cfg


def from_yaml(source) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (a path), or from YAML text (a string holding a newline).
    Errors of a file start with its path."""
    is_text = isinstance(source, str) and "\n" in source
    text = source if is_text else Path(source).read_text()
    try:
        data = yaml.safe_load(text)
        return from_dict(data if data is not None else {})
    except (ConfigError, yaml.YAMLError) as e:
        msg = str(e) if isinstance(e, ConfigError) else f"config: not valid YAML: {e}"
        raise ConfigError(msg if is_text else f"{source}: {msg}") from None


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig, path=None) -> str:
    """The config as YAML, in field order (written to ``path`` too when given)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        from .config import atomic_write

        atomic_write(path, lambda f: f.write(text), mode="w")
    return text


def config_id(cfg: RunConfig) -> str:
    """A stable 10-hex-digit id: the SHA-1 of the config's canonical YAML (keys sorted)."""
    canonical = yaml.safe_dump(to_dict(cfg), sort_keys=True, default_flow_style=False)
    return hashlib.sha1(canonical.encode()).hexdigest()[:10]


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}{_suggest(str(value), choices)}")


def validate(cfg: RunConfig) -> None:
    """Check values that types cannot: names, ranges, stage lists, which terms go together."""
    from .config import MODES
    from .distill import SCHEDULES
    from .experiments import LOSSES

    if not cfg.name or not cfg.name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ConfigError(f"name: {cfg.name!r}; use letters, digits, '-', '_' and '.' (it names the run's folder)")
    if cfg.seed < 0:
        raise ConfigError(f"seed: {cfg.seed} is negative")
    if cfg.data.mode is not None:
        _choice("data.mode", cfg.data.mode, MODES)
    if not 0 < cfg.data.labelled <= 1:
        raise ConfigError(f"data.labelled: {cfg.data.labelled} is not a fraction in (0, 1]")
    ai8x = cfg.model.student in MCU_STUDENTS
    ai8x_variant(cfg.model) if ai8x else student_key(cfg.model)
    if cfg.model.student == BOTTOM_UP_STUDENT:
        bottom_up_input(cfg.model)
    for k in ("steps", "batch_size", "eval_every"):
        v = getattr(cfg.optim, k)
        if v is not None and v < 1:
            raise ConfigError(f"optim.{k}: {v} must be at least 1")
    if cfg.optim.lr is not None and not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr: {cfg.optim.lr} must be positive")
    from . import data

    if cfg.augmentation is not None and hasattr(data, "AUGMENTATIONS"):
        _choice("augmentation", cfg.augmentation, data.AUGMENTATIONS)
    if cfg.optim.amp is not None:
        _choice("optim.amp", cfg.optim.amp, AMP_CHOICES)
    _choice("optim.schedule", cfg.optim.schedule, LR_SCHEDULES)
    if cfg.model.student == BOTTOM_UP_STUDENT:
        from .bottom_up import LOSSES as BOTTOM_UP_LOSSES

        _choice("optim.loss", cfg.optim.loss, tuple(BOTTOM_UP_LOSSES))
    else:
        _choice("optim.loss", cfg.optim.loss, LOSSES)
    _choice("distill.schedule", cfg.distill.schedule, SCHEDULES)
    for i, t in enumerate(cfg.distill.terms):
        _choice(f"distill.terms[{i}].kind", t.kind, TERM_KINDS)
        if t.weight < 0:
            raise ConfigError(f"distill.terms[{i}].weight: {t.weight} is negative")
        if t.pairs and t.kind != "hint":
            raise ConfigError(f"distill.terms[{i}].pairs: only a hint term has layer pairs")
    kinds = [t.kind for t in cfg.distill.terms]
    if kinds.count("hint") > 1 or sum(k in LOGIT_TERMS for k in kinds) > 1:
        raise ConfigError(f"distill.terms: {kinds}; at most one hint term and one logits term (fpd or kl)")
    from .onnx_export import CALIBRATION_METHODS

    _choice("quantize.method", cfg.quantize.method, CALIBRATION_METHODS)
    if cfg.quantize.calib_samples < 1:
        raise ConfigError(f"quantize.calib_samples: {cfg.quantize.calib_samples} must be at least 1")
    if cfg.prune.ratio != 0:
        raise ConfigError(f"prune.ratio: {cfg.prune.ratio}; pruning is not wired into posekd_lib.run yet (use 0)")
    for i, s in enumerate(cfg.stages):
        _choice(f"stages[{i}]", s, STAGES)
        if s not in WIRED_STAGES:
            raise ConfigError(f"stages[{i}]: {s!r} is not wired into posekd_lib.run yet (runs {list(WIRED_STAGES)})")
    if len(set(cfg.stages)) != len(cfg.stages):
        raise ConfigError(f"stages: {cfg.stages} names a stage twice")
    if "train" in cfg.stages and "distil" in cfg.stages:
        raise ConfigError("stages: 'train' (ground truth) and 'distil' (with distill.terms) are two runs; name one")
    if "distil" in cfg.stages and not cfg.distill.terms:
        raise ConfigError("distill.terms: empty, but stages name 'distil'")
    if "train" in cfg.stages and cfg.distill.terms:
        raise ConfigError("stages: 'train' trains on ground truth only; use 'distil' for distill.terms")
    if not {"train", "distil"} & set(cfg.stages):
        raise ConfigError("stages: name 'train' or 'distil' (every other stage works on the trained student)")
    if cfg.data.sigma is not None and (cfg.model.student != BOTTOM_UP_STUDENT or not cfg.data.sigma > 0):
        raise ConfigError(f"data.sigma: {cfg.data.sigma}; a positive heatmap σ of the bottom-up student "
                          f"({BOTTOM_UP_STUDENT}) only (the top-down students take the teacher's)")
    if cfg.data.unlabelled and "distil" not in cfg.stages:
        raise ConfigError("data.unlabelled: crops without keypoints need a teacher ('distil' stage)")
    if cfg.data.unlabelled and cfg.data.labelled >= 1:
        raise ConfigError("data.unlabelled: needs data.labelled below 1")
    if ai8x != ("qat" in cfg.stages):
        raise ConfigError(f"stages: 'qat' trains the MAX78000 students (model.student: {' or '.join(MCU_STUDENTS)}), "
                          "which always have it" if ai8x else
                          f"stages: 'qat' is wired for model.student {' or '.join(MCU_STUDENTS)} only")
    if ai8x:
        _check_ai8x(cfg)


def _check_ai8x(cfg: RunConfig) -> None:
    """What ``experiments.train_ai8x`` can do: every label, GT MSE, one logits term as in KD_SETTINGS."""
    if cfg.data.labelled < 1:
        raise ConfigError(f"data.labelled: {cfg.data.labelled}; the MAX78000 student trains on every label")
    if cfg.optim.loss != "mse" and cfg.model.student != BOTTOM_UP_STUDENT:
        raise ConfigError(f"optim.loss: {cfg.optim.loss!r}; the MAX78000 student trains with 'mse'")
    if cfg.optim.amp is not None:
        raise ConfigError(f"optim.amp: {cfg.optim.amp!r}; train_ai8x trains in float32 (leave it null)")
    if cfg.qat.lr_scale != 0.1:
        raise ConfigError(f"qat.lr_scale: {cfg.qat.lr_scale}; train_ai8x trains QAT at lr / 10 (0.1)")
    if cfg.qat.steps is not None and cfg.qat.steps < 1:
        raise ConfigError(f"qat.steps: {cfg.qat.steps} must be at least 1")
    for stage in ("quantize", "export"):
        if stage in cfg.stages:
            raise ConfigError(f"stages: {stage!r} is the ONNX path; the MAX78000 student's export (izer) is not wired")
    if any(t.kind == "hint" for t in cfg.distill.terms):
        raise ConfigError("distill.terms: the MAX78000 student distils with one logits term (fpd or kl)")
    if cfg.model.student == BOTTOM_UP_STUDENT and any(t.kind != "fpd" or t.options for t in cfg.distill.terms):
        raise ConfigError("distill.terms: the bottom-up student distils with one fpd term and no options (the MSE "
                          "to maps drawn from the teacher's keypoints; its weight is the KD share)")


def bottom_up_input(model: ModelConfig) -> tuple[int, int]:
    """``model.options.input_size`` (w, h) of the bottom-up student, default
    ``ai8x_models.BOTTOM_UP_INPUT``; both multiples of 16."""
    from .ai8x_models import BOTTOM_UP_INPUT

    size = model.options.get("input_size", list(BOTTOM_UP_INPUT))
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
            and not any(v % 16 for v in size)):
        raise ConfigError(f"model.options.input_size: {size!r}; give [width, height], multiples of 16")
    return int(size[0]), int(size[1])


def ai8x_variant(model: ModelConfig) -> str:
    """The variant name of a MAX78000 student (``options: {variant: tiny}``): one of
    ``ai8x_models.VARIANTS``, or ``BOTTOM_UP_VARIANTS`` for the bottom-up student."""
    from .ai8x_models import BOTTOM_UP_VARIANTS, VARIANTS

    known = ("variant", "input_size") if model.student == BOTTOM_UP_STUDENT else ("variant",)
    extra = sorted(set(model.options) - set(known))
    if extra:
        raise ConfigError(f"model.options.{extra[0]}: unknown option of {model.student}; it has "
                          + ", ".join(repr(k) for k in known))
    variant = model.options.get("variant", "tiny")
    _choice("model.options.variant", variant, BOTTOM_UP_VARIANTS if model.student == BOTTOM_UP_STUDENT else VARIANTS)
    return variant


def student_key(model: ModelConfig) -> str:
    """The ``experiments.STUDENTS`` name of ``model``: a name, or a base name (or name) plus options
    that pick a variant (``mobilenetv3`` with ``{output_stride: 16}`` is ``mobilenetv3_os16``)."""
    from .experiments import STUDENTS

    bases = {b for b, _ in STUDENTS.values()}
    if model.student not in STUDENTS and model.student not in bases:
        known = [*sorted(STUDENTS), *MCU_STUDENTS]
        raise ConfigError(f"model.student: {model.student!r} is not one of {known}{_suggest(model.student, known)}")
    base, kw = STUDENTS.get(model.student, (model.student, {}))
    want = {**kw, **model.options}
    for name, (b, k) in STUDENTS.items():
        if b == base and k == want:
            return name
    raise ConfigError(f"model.options: {model.options} of {model.student!r} is no known variant; known: "
                      + ", ".join(f"{n} = {b} {k}" for n, (b, k) in STUDENTS.items()))


# --------------------------------------------------------------------------- --set overrides
def _parse_value(text: str):
    """``text`` as a YAML value; ``1e-3`` as a float (PyYAML's YAML 1.1 wants ``1.0e-3``)."""
    if _FLOAT.fullmatch(text.strip()):
        return float(text)
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: RunConfig, items) -> RunConfig:
    """A new config with ``["a.b=c", ...]`` applied; values are YAML (``0.25``, ``null``, ``[a, b]``,
    ``{neck.2: stage3}``), keys dotted, list items by index (``distill.terms.0.weight=0.25``). A key
    that the config does not have is an error, except inside free-form ``options`` / ``pairs`` maps."""
    data = to_dict(cfg)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        parts = key.split(".")
        node, where = data, []
        for p in parts[:-1]:
            node = _child(node, p, where, item)
            where.append(p)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, where, item)] = _parse_value(text)
        elif isinstance(node, dict):
            if last not in node and not _free_form(where):
                known = list(node)
                raise ConfigError(f"{'.'.join(where + [last])}: unknown key{_suggest(last, known)} "
                                  f"(in --set {item!r}); known: {known}")
            node[last] = _parse_value(text)
        else:
            raise ConfigError(f"{'.'.join(where)}: is a value, not a section (in --set {item!r})")
    return from_dict(data)


def _free_form(where: list[str]) -> bool:
    return bool(where) and where[-1] in ("options", "pairs")


def _index(node: list, p: str, where: list[str], item: str) -> int:
    if not p.lstrip("-").isdigit() or not -len(node) <= int(p) < len(node):
        raise ConfigError(f"{'.'.join(where)}[{p}]: no such item ({len(node)} items; in --set {item!r})")
    return int(p)


def _child(node, p: str, where: list[str], item: str):
    if isinstance(node, list):
        return node[_index(node, p, where, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"{'.'.join(where)}: is a value, not a section (in --set {item!r})")
    if p not in node:
        if _free_form(where):
            node[p] = {}
        else:
            raise ConfigError(f"{'.'.join(where + [p])}: unknown key{_suggest(p, list(node))} (in --set {item!r})")
    return node[p]


# --------------------------------------------------------------------------- onto experiments.py
def resolved_mode(cfg: RunConfig) -> str:
    from .config import get_mode

    return get_mode(cfg.data.mode)


def run_dir(cfg: RunConfig) -> Path:
    """The run's folder, the one ``train_student`` trains in: ``<checkpoints>/<name>_<student>_s<seed>``;
    for the MAX78000 students the QAT folder, ``<checkpoints>/<name>_s<seed>_qat``."""
    from .config import run_paths

    root = run_paths(resolved_mode(cfg)).checkpoints
    if cfg.model.student in MCU_STUDENTS:
        return root / f"{cfg.name}_s{cfg.seed}_qat"
    return root / f"{cfg.name}_{student_key(cfg.model)}_s{cfg.seed}"


def ai8x_steps(cfg: RunConfig) -> tuple[int, int]:
    """(float steps, QAT steps) of a MAX78000 run: the config's, else ``experiments.AI8X_STEPS``."""
    from .experiments import AI8X_STEPS

    float_steps, qat_steps = AI8X_STEPS[resolved_mode(cfg)]
    return (cfg.optim.steps or float_steps, cfg.qat.steps or qat_steps)


def budget_fields(cfg: RunConfig) -> dict:
    """The :class:`~posekd_lib.budgets.Budget` fields the config sets (its non-null ones).

    ``augmentation`` and ``optim.amp`` map onto ``Budget.aug`` / ``Budget.amp``; setting them on a
    budget without those fields is a :class:`ConfigError`."""
    from .budgets import Budget

    have = {f.name for f in dataclasses.fields(Budget)}
    out = {}
    for key, name, value in (("optim.batch_size", "batch_size", cfg.optim.batch_size),
                             ("optim.lr", "lr", cfg.optim.lr), ("augmentation", "aug", cfg.augmentation),
                             ("optim.amp", "amp", cfg.optim.amp)):
        if value is None:
            continue
        if name not in have:
            raise ConfigError(f"{key}: {value!r} set, but this library's Budget has no {name!r} field")
        out[name] = value
    return out


def kd_setting(cfg: RunConfig) -> tuple[str, dict]:
    """``(KD_SETTINGS tag, kd_recipe overrides)`` equivalent to ``cfg.distill``.

    Only settings that differ from the tag's entry are passed, and a keyword the entry does not
    have only when it differs from the distiller's default, so a config that spells out a
    notebook's recipe yields exactly that recipe (and reuses its cached run)."""
    from .distill import FeatureKD, LogitsKD
    from .recipes import KD_SETTINGS

    terms = cfg.distill.terms
    i_hint = next((i for i, t in enumerate(terms) if t.kind == "hint"), None)
    i_logit = next((i for i, t in enumerate(terms) if t.kind in LOGIT_TERMS), None)
    hint = terms[i_hint] if i_hint is not None else None
    logit = terms[i_logit] if i_logit is not None else None
    wanted: dict = {}
    if hint is None:
        tag, cls = ("fpd" if logit.kind == "fpd" else "kl"), LogitsKD
        wanted.update(kind=LOGIT_TERMS[logit.kind], alpha=logit.weight)
    else:
        tag, cls = "feature", FeatureKD
        wanted.update(beta=hint.weight, alpha_logits=logit.weight if logit else 0.0,
                      kind=LOGIT_TERMS[logit.kind] if logit else KD_SETTINGS["feature"]["kind"])
        if hint.pairs:
            wanted["pairs"] = {str(k): str(v) for k, v in hint.pairs.items()}
    params = set(inspect.signature(cls).parameters)
    shared = params - {"teacher", "student", "total_steps", "pairs", "alpha", "beta", "alpha_logits", "kind",
                       "input_size", "schedule", *LOGIT_OPTIONS, *HINT_OPTIONS}
    if cls is LogitsKD:
        shared |= {"teacher_cache"}      # recipes.kd_recipe's: the teacher's heatmaps computed once
    for where, term, allowed in ((f"distill.terms[{i_logit}]", logit, set(LOGIT_OPTIONS) & params),
                                 (f"distill.terms[{i_hint}]", hint, set(HINT_OPTIONS) & params),
                                 ("distill", cfg.distill, shared)):
        for k, v in (term.options if term is not None else {}).items():
            if k not in allowed:
                label = f"a {term.kind} term" if where != "distill" else f"the {cls.__name__} distiller"
                raise ConfigError(f"{where}.options.{k}: unknown option{_suggest(k, allowed)}; "
                                  f"{label} takes {sorted(allowed)}")
            wanted[k] = v
    wanted["schedule"] = cfg.distill.schedule
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    entry = KD_SETTINGS[tag]
    overrides = {k: v for k, v in wanted.items()
                 if (k in entry and entry[k] != v) or (k not in entry and defaults.get(k, inspect.Parameter.empty) != v)}
    return tag, overrides


def train_run(cfg: RunConfig, teacher=None, progress: bool = True):
    """Train (or load, or resume) the run ``cfg`` describes with ``experiments.train_student``.

    A ``distil`` stage builds the distiller with ``recipes.kd_recipe`` (:func:`kd_setting`);
    ``teacher`` is the frozen teacher (loaded from ``distill.teacher`` when None). Returns
    ``train_student``'s :class:`~posekd_lib.experiments.Run`: the model, metrics and results row;
    for the MAX78000 student ``experiments.train_ai8x``'s :class:`~posekd_lib.experiments.Ai8xRun`
    (float, QAT and integer-simulated metrics; its logits term must be a KD_SETTINGS entry as is).
    """
    import os

    from .budgets import budget_fields as with_budget
    from .experiments import train_student
    from .recipes import kd_recipe

    mode = resolved_mode(cfg)
    if cfg.data.coco_root is not None:
        os.environ["COCO_ROOT"] = str(cfg.data.coco_root)
    if cfg.model.student == AI8X_STUDENT:
        return _train_ai8x(cfg, teacher, progress)
    if cfg.model.student == BOTTOM_UP_STUDENT:
        return _train_bottom_up(cfg, teacher, progress)
    student = student_key(cfg.model)
    with with_budget(**budget_fields(cfg)):
        kd = None
        if "distil" in cfg.stages:
            if teacher is None:
                teacher = load_frozen_teacher(cfg)
            tag, overrides = kd_setting(cfg)
            kd = kd_recipe(tag, teacher, student, mode, **overrides)
        return train_student(student, mode=mode, seed=cfg.seed, loss=cfg.optim.loss, kd=kd, tag=cfg.name,
                             progress=progress, steps=cfg.optim.steps, labelled=cfg.data.labelled,
                             unlabelled=cfg.data.unlabelled, curve_every=cfg.optim.eval_every)


def check_mapping(cfg: RunConfig) -> None:
    """The checks that need the mapping onto experiments.py (budget fields, distiller options), so
    ``run`` can make them before it writes anything."""
    budget_fields(cfg)
    if "distil" in cfg.stages and cfg.model.student != BOTTOM_UP_STUDENT:
        tag, overrides = kd_setting(cfg)
        if cfg.model.student == AI8X_STUDENT and overrides:
            raise ConfigError(f"distill.terms: {overrides} differ from recipes.KD_SETTINGS[{tag!r}], which "
                              "train_ai8x distils with as is")


def _train_ai8x(cfg: RunConfig, teacher, progress: bool):
    from .budgets import budget_fields as with_budget
    from .experiments import train_ai8x

    check_mapping(cfg)
    kd = None
    if "distil" in cfg.stages:
        kd = kd_setting(cfg)[0]
        if teacher is None:
            teacher = load_frozen_teacher(cfg)
    with with_budget(**budget_fields(cfg)):
        return train_ai8x(ai8x_variant(cfg.model), mode=resolved_mode(cfg), seed=cfg.seed, kd=kd, teacher=teacher,
                          tag=f"{cfg.name}_s{cfg.seed}", steps=ai8x_steps(cfg), progress=progress,
                          curve_every=cfg.optim.eval_every)


def _train_bottom_up(cfg: RunConfig, teacher, progress: bool):
    from .bottom_up import teacher_keypoints, train_bottom_up
    from .budgets import budget_fields as with_budget

    teacher_kp, alpha = None, 0.5
    if "distil" in cfg.stages:
        if teacher is None:
            teacher = load_frozen_teacher(cfg)
        teacher_kp, alpha = teacher_keypoints(teacher, resolved_mode(cfg)), cfg.distill.terms[0].weight
    with with_budget(**budget_fields(cfg)):
        return train_bottom_up(ai8x_variant(cfg.model), resolved_mode(cfg), seed=cfg.seed, teacher_kp=teacher_kp,
                               alpha=alpha, steps=ai8x_steps(cfg), tag=f"{cfg.name}_s{cfg.seed}", progress=progress,
                               curve_every=cfg.optim.eval_every, loss=cfg.optim.loss, sigma=cfg.data.sigma,
                               input_size=bottom_up_input(cfg.model))


def load_frozen_teacher(cfg: RunConfig):
    """The frozen teacher a ``distil`` stage of ``cfg`` distils from (as notebooks 03-04 load it)."""
    from .distill import freeze
    from .teachers import load_teacher

    return freeze(load_teacher(cfg.distill.teacher, mode=resolved_mode(cfg))[0])
