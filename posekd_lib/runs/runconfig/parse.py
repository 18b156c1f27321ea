"""A config read from YAML or a dict, checked key by key (errors name the dotted key), written
back, overridden with ``--set a.b=c`` items, and identified by a short hash."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import types
import typing
from pathlib import Path

import yaml

from .schema import (
    AMP_CHOICES, BOTTOM_UP_STUDENT, ConfigError, LOGIT_TERMS, LR_SCHEDULES, MCU_STUDENTS,
    ModelConfig, RunConfig, STAGES, TEACHER_MODEL, TERM_KINDS, WIRED_STAGES, _FLOAT,
)


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
    if tp is str and value is False and key == "optim.amp":
        return "off"           # YAML 1.1 reads a bare off as false: --set optim.amp=off means float32
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
        from ...config import atomic_write

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
    from ...config import MODES
    from ...distill import SCHEDULES
    from ...distill.losses import TOPDOWN_LOSSES as LOSSES

    if not cfg.name or not cfg.name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ConfigError(f"name: {cfg.name!r}; use letters, digits, '-', '_' and '.' (it names the run's folder)")
    if cfg.seed < 0:
        raise ConfigError(f"seed: {cfg.seed} is negative")
    if cfg.data.mode is not None:
        _choice("data.mode", cfg.data.mode, MODES)
    if not 0 < cfg.data.labelled <= 1:
        raise ConfigError(f"data.labelled: {cfg.data.labelled} is not a fraction in (0, 1]")
    ai8x = cfg.model.student in MCU_STUDENTS
    if cfg.model.student == TEACHER_MODEL:
        _check_teacher(cfg)
    else:
        ai8x_variant(cfg.model) if ai8x else student_key(cfg.model)
    if cfg.model.student == BOTTOM_UP_STUDENT:
        bottom_up_input(cfg.model)
    for k in ("steps", "batch_size", "eval_every"):
        v = getattr(cfg.optim, k)
        if v is not None and v < 1:
            raise ConfigError(f"optim.{k}: {v} must be at least 1")
    if cfg.optim.lr is not None and not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr: {cfg.optim.lr} must be positive")
    from ...data import datasets as data

    if cfg.augmentation is not None and hasattr(data, "AUGMENTATIONS"):
        _choice("augmentation", cfg.augmentation, data.AUGMENTATIONS)
    if cfg.optim.amp is not None:
        _choice("optim.amp", cfg.optim.amp, AMP_CHOICES)
    _choice("optim.schedule", cfg.optim.schedule, LR_SCHEDULES)
    if cfg.model.student == BOTTOM_UP_STUDENT:
        from ...distill.losses import BOTTOM_UP_LOSSES

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
    from ...mcu.onnx_export import CALIBRATION_METHODS

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
    if cfg.data.extra_unlabelled < 0:
        raise ConfigError(f"data.extra_unlabelled: {cfg.data.extra_unlabelled} is a negative image count")
    if cfg.data.extra_unlabelled and "distil" not in cfg.stages:
        raise ConfigError("data.extra_unlabelled: crops without keypoints need a teacher ('distil' stage)")
    if cfg.data.extra_unlabelled and (cfg.data.labelled < 1 or cfg.data.unlabelled):
        raise ConfigError("data.extra_unlabelled: adds images to every label; leave data.labelled at 1 and "
                          "data.unlabelled false")
    if cfg.data.extra_unlabelled and (ai8x or cfg.model.student == TEACHER_MODEL):
        raise ConfigError(f"data.extra_unlabelled: wired for the top-down students of train_student, "
                          f"not {cfg.model.student}")
    if ai8x != ("qat" in cfg.stages):
        raise ConfigError(f"stages: 'qat' trains the MAX78000 students (model.student: {' or '.join(MCU_STUDENTS)}), "
                          "which always have it" if ai8x else
                          f"stages: 'qat' is wired for model.student {' or '.join(MCU_STUDENTS)} only")
    if ai8x:
        _check_ai8x(cfg)


def _check_teacher(cfg: RunConfig) -> None:
    """What ``teacher_training.train_teacher`` does: ground truth (MSE), every label, no KD, no QAT."""
    teacher_options(cfg.model)
    allowed = ("train", "evaluate", "export")
    for i, s in enumerate(cfg.stages):
        if s not in allowed:
            raise ConfigError(f"stages[{i}]: {s!r}; a {cfg.model.student} teacher run has the stages {list(allowed)}")
    if cfg.distill.terms:
        raise ConfigError(f"distill.terms: a {cfg.model.student} teacher trains on the ground truth only")
    if cfg.optim.loss != "mse":
        raise ConfigError(f"optim.loss: {cfg.optim.loss!r}; the {cfg.model.student} teacher trains with 'mse'")
    if cfg.data.labelled < 1 or cfg.data.unlabelled:
        raise ConfigError(f"data.labelled: {cfg.data.labelled}; the {cfg.model.student} teacher trains on every label")


def _check_ai8x(cfg: RunConfig) -> None:
    """What ``experiments.train_ai8x`` can do: every label, GT MSE, one logits term as its recipe."""
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
    if cfg.model.student == BOTTOM_UP_STUDENT:
        if any(t.kind != "fpd" or set(t.options) - {"targets"} for t in cfg.distill.terms):
            raise ConfigError("distill.terms: the bottom-up student distils with one fpd term (the MSE to the "
                              "teacher's maps; its weight is the KD share) whose one option is 'targets'")
        for t in cfg.distill.terms:
            _choice("distill.terms[0].options.targets", t.options.get("targets", "keypoints"),
                    BOTTOM_UP_TARGETS)


#: What the bottom-up student's KD heatmaps are: Gaussians drawn at the teacher's keypoints, or the
#: teacher's own heatmaps pasted into the frame (``BottomUpDataset(teacher_maps=...)``).
BOTTOM_UP_TARGETS = ("keypoints", "heatmaps")


def bottom_up_input(model: ModelConfig) -> tuple[int, int]:
    """``model.options.input_size`` (w, h) of the bottom-up student, default
    ``ai8x_models.BOTTOM_UP_INPUT``; both multiples of 16."""
    from ...models.ai8x_models import BOTTOM_UP_INPUT

    size = model.options.get("input_size", list(BOTTOM_UP_INPUT))
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
            and not any(v % 16 for v in size)):
        raise ConfigError(f"model.options.input_size: {size!r}; give [width, height], multiples of 16")
    return int(size[0]), int(size[1])


def ai8x_variant(model: ModelConfig) -> str:
    """The variant name of a MAX78000 student (``options: {variant: tiny}``): one of its
    ``registry.MODELS`` entry's variants (``ai8x_models.VARIANTS`` or ``BOTTOM_UP_VARIANTS``)."""
    from ...models.registry import model_entry

    entry = model_entry(model.student)
    extra = sorted(set(model.options) - set(entry.options))
    if extra:
        raise ConfigError(f"model.options.{extra[0]}: unknown option of {model.student}; it has "
                          + ", ".join(repr(k) for k in entry.options))
    variant = model.options.get("variant", "tiny")
    _choice("model.options.variant", variant, entry.variants())
    return variant


def teacher_options(model: ModelConfig) -> dict:
    """The teacher's ``model.options`` with their defaults (``registry.TEACHER_OPTIONS``):
    ``config`` an ``hrnet_pose`` config name, ``init_from`` a weights file or null, ``train_multiple``
    a whole number >= 1."""
    from ...models.registry import TEACHER_OPTIONS

    extra = sorted(set(model.options) - set(TEACHER_OPTIONS))
    if extra:
        raise ConfigError(f"model.options.{extra[0]}: unknown option of {model.student}; it has "
                          + ", ".join(repr(k) for k in TEACHER_OPTIONS))
    opts = {**TEACHER_OPTIONS, **model.options}
    from hrnet_pose.configs import available_configs

    _choice("model.options.config", opts["config"], available_configs())
    if opts["init_from"] is not None and not isinstance(opts["init_from"], str):
        raise ConfigError(f"model.options.init_from: {opts['init_from']!r}; a weights file (a path) or null")
    m = opts["train_multiple"]
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ConfigError(f"model.options.train_multiple: {m!r}; a whole number >= 1 (3: three times the images)")
    return opts


def student_key(model: ModelConfig) -> str:
    """The ``experiments.STUDENTS`` name of ``model``: a name, or a base name (or name) plus options
    that pick a variant (``mobilenetv3`` with ``{output_stride: 16}`` is ``mobilenetv3_os16``)."""
    from ...models.registry import TOPDOWN_STUDENTS as STUDENTS

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
