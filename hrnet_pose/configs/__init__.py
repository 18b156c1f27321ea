"""HRNet experiment configs as YAML files named like the paper's table rows.

``load_configs("w48_384x288")`` (a name from this folder or a path to any YAML file) returns a
:class:`Config`: a plain ``dict`` tree that also allows attribute access
(``cfg.MODEL.EXTRA.STAGE2.NUM_CHANNELS``), so code written for the official yacs configs keeps
working without yacs. Values from the file are laid over :data:`DEFAULTS`, so a short file that
only gives ``MODEL.EXTRA`` is still complete.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent

#: Fallback values for keys a YAML file leaves out (those of the base config, w32_256x192).
DEFAULTS: dict = {
    "MODEL": {
        "NAME": "pose_hrnet",
        "INIT_WEIGHTS": True,
        "PRETRAINED": "",
        "NUM_JOINTS": 17,
        "TARGET_TYPE": "gaussian",
        "IMAGE_SIZE": [192, 256],
        "HEATMAP_SIZE": [48, 64],
        "SIGMA": 2,
        "EXTRA": {},
    },
    "LOSS": {"USE_TARGET_WEIGHT": True},
    "TEST": {"FLIP_TEST": True, "SHIFT_HEATMAP": True, "POST_PROCESS": True},
}


class Config(dict):
    """A dict whose keys can also be read and written as attributes; nested dicts become Configs."""

    def __init__(self, data: Mapping | None = None, **kwargs):
        super().__init__()
        for key, value in {**(data or {}), **kwargs}.items():
            self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, _wrap(value))

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r} (keys: {sorted(self)})") from None

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        del self[key]

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo))

    def to_dict(self) -> dict:
        """A plain nested ``dict``/``list`` copy (for ``yaml.safe_dump`` or JSON)."""
        return {k: v.to_dict() if isinstance(v, Config) else _unwrap(v) for k, v in self.items()}


def _wrap(value):
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(v) for v in value)
    return value


def _unwrap(value):
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    return value


def merge(base: Mapping, override: Mapping) -> Config:
    """``base`` with ``override`` laid over it, recursively for nested mappings."""
    out = Config(copy.deepcopy(dict(base)))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def available_configs() -> list[str]:
    """Names of the YAML configs shipped in this folder."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """The YAML file for a config name (``w32_256x192``) or an explicit path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise FileNotFoundError(f"HRNet config file not found: {path}")
        return path
    name = text.removesuffix("_adam_lr1e-3")  # the official experiment file names carry this tail
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"unknown HRNet config {text!r}: no {path.name} in {CONFIG_DIR}; "
            f"known configs: {', '.join(available_configs())}")
    return path


def load_configs(name_or_path: str | Path | Mapping = "w32_256x192") -> Config:
    """Load a config by name or path (or wrap a dict), filled in from :data:`DEFAULTS`."""
    if isinstance(name_or_path, Mapping):
        return merge(DEFAULTS, name_or_path)
    path = config_path(name_or_path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return merge(DEFAULTS, data)


__all__ = ["CONFIG_DIR", "DEFAULTS", "Config", "available_configs", "config_path", "load_configs", "merge"]
