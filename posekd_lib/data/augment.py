"""Training augmentation of a person crop: the presets (HRNet's recipe, a light one for short
budgets, one for whole images), colour jitter folded into one linear pass, half-body boxes, and the
per-sample generator seeded from torch's RNG (:mod:`posekd_lib.data.datasets` applies them)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .keypoints import COCO_LOWER_BODY_IDS, COCO_UPPER_BODY_IDS
from .transforms import box_to_center_scale


@dataclass
class AugConfig:
    """Training augmentation of a top-down crop; the defaults are HRNet's COCO recipe plus a light
    colour jitter. Pick a preset by name with :func:`augmentation` (:data:`AUGMENTATIONS`)."""

    scale_factor: float = 0.35
    rotation: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    @classmethod
    def hrnet(cls) -> "AugConfig":
        """HRNet's COCO recipe (scale ±35 %, rotation ±45° at p 0.6, half-body 0.3): made for 210
        epochs on GPUs, it slows a model that sees the data only a few times."""
        return cls()

    @classmethod
    def light(cls) -> "AugConfig":
        """For short budgets (a few epochs): scale ±15 %, rotation ±15° at p 0.3, no half-body crops."""
        return cls(scale_factor=0.15, rotation=15.0, rotation_prob=0.3, half_body_prob=0.0)

    @classmethod
    def whole_image(cls) -> "AugConfig":
        """Milder settings for whole-image (bottom-up) training."""
        return cls(scale_factor=0.2, rotation=10.0, rotation_prob=0.5, half_body_prob=0.0)


#: Augmentation presets by name (what recipes and ``benchmarks/bench_learning.py`` refer to).
AUGMENTATIONS = {"hrnet": AugConfig.hrnet, "light": AugConfig.light, "whole_image": AugConfig.whole_image}


def augmentation(name_or_config: "str | AugConfig | None") -> AugConfig:
    """An :class:`AugConfig` from a preset name of :data:`AUGMENTATIONS` (or the config itself)."""
    if name_or_config is None or isinstance(name_or_config, AugConfig):
        return name_or_config or AugConfig()
    if name_or_config not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name_or_config!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name_or_config]()


def jitter_factors(cfg: AugConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    """Random brightness, contrast and saturation factors in ``1 ± cfg.<name>`` (drawn in that order)."""
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) if cfg.brightness else 1.0
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else 1.0
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) if cfg.saturation else 1.0
    return float(b), float(c), float(s)


def jitter_weights(factors) -> tuple[float, float, float]:
    """``(a, g, m)`` of the jitter ``a·x + g·gray + m·mean(gray)`` for factors ``(b, c, s)``.

    Brightness, contrast and saturation are all linear, so applied in that order they fold into
    one pass; the batched device path (:mod:`posekd_lib.data.device_data`) uses the same weights.
    """
    b, c, s = factors
    return s * c * b, (1 - s) * c * b, (1 - c) * b


def colour_jitter(rgb: np.ndarray, cfg: AugConfig, rng: np.random.Generator, factors=None) -> np.ndarray:
    """Random brightness, contrast and saturation (uint8 in and out); ``factors`` as drawn by
    :func:`jitter_factors`, or drawn here from ``rng``."""
    a, g, m = jitter_weights(factors if factors is not None else jitter_factors(cfg, rng))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mean = float(gray.mean())
    gray3 = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(rgb, a, gray3, g, m * mean)


def half_body_box(joints: np.ndarray, aspect_ratio: float, rng: np.random.Generator):
    """HRNet's half-body crop: center/scale around the upper or lower body joints, or None."""
    vis = joints[:, 2] > 0
    upper = [j for j in COCO_UPPER_BODY_IDS if vis[j]]
    lower = [j for j in COCO_LOWER_BODY_IDS if vis[j]]
    chosen = upper if (rng.random() < 0.5 and len(upper) > 2) else (lower if len(lower) > 2 else upper)
    if len(chosen) < 2:
        return None
    pts = joints[chosen, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return box_to_center_scale([lo[0], lo[1], *(hi - lo)], aspect_ratio, padding=1.5)


def sample_rng() -> np.random.Generator:
    """A numpy generator seeded from torch's RNG, so ``torch.manual_seed`` and the DataLoader's
    per-worker seeds decide the augmentation (workers never repeat each other)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
