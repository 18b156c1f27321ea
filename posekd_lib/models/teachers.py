"""The teachers of notebooks 02-05: the shipped demo HRNet, or an official HRNet checkpoint.

``load_teacher()`` picks by mode: in ``quick`` and ``workshop`` the demo teacher
(``hrnet_pose/weights/<DEMO_NAME>.pt``, an HRNet-W16 at 128x96 trained on the embedded dataset
by ``python -m posekd_lib.run configs/teacher_w16.yaml`` (:mod:`posekd_lib.train.teacher_training`; the cards
of the teachers trained before it name the former ``scripts/train_teacher.py``, in git history), with its ``.json``
card: command or config, seed, curve, validation AP); in ``full`` the official HRNet-W48
384x288 COCO checkpoint. Nothing is downloaded; a missing file raises an error that says what the
file is and where to put it.

Environment variables:

* ``POSEKD_TEACHER_WEIGHTS``: use this file instead of the shipped demo weights (a state dict, an
  fp16 export, or a ``fit`` checkpoint ``{"model": ...}``); a ``.json`` card next to it is read
  when present.
* ``HRNET_W48_CHECKPOINT``: the official ``pose_hrnet_w48_384x288.pth`` for ``full`` mode
  (default location: ``run_paths("full").checkpoints``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..config import REPO_ROOT, get_mode, read_json, run_paths, shown_path

DEMO_NAME = "demo_w16_128x96_ft2"
DEMO_CONFIG = "w16_128x96"
SHIPPED_DIR = REPO_ROOT / "hrnet_pose" / "weights"
DEMO_WEIGHTS = SHIPPED_DIR / f"{DEMO_NAME}.pt"
FULL_CONFIG = "w48_384x288"
WEIGHTS_ENV = "POSEKD_TEACHER_WEIGHTS"
W48_ENV = "HRNET_W48_CHECKPOINT"


@dataclass(frozen=True)
class TeacherInfo:
    """What a notebook needs to know about a loaded teacher; sizes are ``(w, h)``."""

    name: str
    config: str
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    weights: Path
    val_ap: float | None = None
    params: int = 0
    card: dict = field(default_factory=dict, repr=False)

    def __str__(self) -> str:       # what print() shows: the weights relative to the checkout
        return repr(self).replace(f"weights={self.weights!r}", f"weights={shown_path(self.weights)!r}")


def default_teacher_name(mode: str | None = None) -> str:
    """``"demo"`` for quick/workshop, the official ``"w48_384x288"`` for full."""
    return FULL_CONFIG if get_mode(mode) == "full" else "demo"


def shipped_teacher(name: str) -> bool:
    """Whether ``name`` is a teacher of the demo line shipped in ``hrnet_pose/weights/`` by its file
    name (``"demo_w16_128x96_x5"``: the continued W16), which ``load_teacher`` loads by that name."""
    return name.startswith("demo_") and (SHIPPED_DIR / f"{name}.pt").is_file()


def teacher_weights_path(name: str = "demo", mode: str | None = None, path=None) -> Path:
    """The weights file ``load_teacher`` would read (it may not exist yet)."""
    if path is not None:
        return Path(path).expanduser()
    if name == "demo":
        return Path(os.environ.get(WEIGHTS_ENV) or DEMO_WEIGHTS).expanduser()
    if shipped_teacher(name):
        return SHIPPED_DIR / f"{name}.pt"
    from hrnet_pose.checkpoint import official_checkpoint_name

    env = os.environ.get(W48_ENV) if name == FULL_CONFIG else None
    return Path(env).expanduser() if env else run_paths(mode).checkpoints / official_checkpoint_name(name)


def _missing_error(name: str, weights: Path, mode: str | None) -> FileNotFoundError:
    if name == "demo":
        return FileNotFoundError(
            f"demo teacher weights not found: {weights}. This is the small HRNet-W16 (128x96) trained on "
            f"the embedded dataset; it ships with the repository as hrnet_pose/weights/{DEMO_NAME}.pt. "
            f"Restore it from git, train one with `python -m posekd_lib.run configs/teacher_w16.yaml` "
            f"(--set model.options.init_from=null to start from scratch; hours on "
            f"2 cores), or set {WEIGHTS_ENV} to another checkpoint of the {DEMO_CONFIG} config.")
    from hrnet_pose.checkpoint import MODEL_ZOO_HINT, official_checkpoint_name

    fname = official_checkpoint_name(name)
    env = os.environ.get(W48_ENV) if name == FULL_CONFIG else None
    if env:   # the variable overrides the default place, so the default place is no advice
        return FileNotFoundError(
            f"teacher checkpoint not found: {weights}, which {W48_ENV} names. Point {W48_ENV} at the "
            f"official HRNet COCO checkpoint {fname} (pose_hrnet {name}, trained by the HRNet authors), "
            f"or unset it to use {run_paths(mode).checkpoints / fname}. {MODEL_ZOO_HINT}")
    where = f"set {W48_ENV}=/path/to/{fname}, " if name == FULL_CONFIG else ""
    return FileNotFoundError(
        f"teacher checkpoint not found: {weights}. The {name} teacher is the official HRNet COCO "
        f"checkpoint {fname} (pose_hrnet {name}, trained by the HRNet authors). Put it at "
        f"{run_paths(mode).checkpoints / fname}, {where}or pass path=... to load_teacher. {MODEL_ZOO_HINT}")


def _read_card(weights: Path) -> dict:
    return read_json(weights.with_suffix(".json"), "teacher card", missing={})


def load_teacher(name: str | None = None, mode: str | None = None, path=None,
                 device="cpu") -> tuple[nn.Module, TeacherInfo]:
    """Build an HRNet teacher, load its weights strictly and return ``(model in eval mode, info)``.

    ``name``: ``"demo"`` (the shipped W16, config ``w16_128x96``), another shipped teacher of the
    demo line by its file name (``"demo_w16_128x96_x5"``, :func:`shipped_teacher`), or an HRNet
    config name whose official checkpoint you provide (``"w48_384x288"``, ``"w32_256x192"``, ...);
    ``None`` picks by mode (:func:`default_teacher_name`). ``path`` overrides the weights file. ``info.val_ap`` is
    the validation AP from the weights' card (``None`` without a card).
    """
    from hrnet_pose.checkpoint import load_pose_checkpoint
    from hrnet_pose.configs import load_configs
    from hrnet_pose.hrnetpose_model import get_pose_net

    name = name or default_teacher_name(mode)
    weights = teacher_weights_path(name, mode, path)
    if not weights.is_file():
        raise _missing_error(name, weights, mode)
    card = _read_card(weights)
    demo_line = name == "demo" or shipped_teacher(name)
    config = card.get("config", DEMO_CONFIG) if demo_line else name
    cfg = load_configs(config)
    model = get_pose_net(cfg, is_train=False)
    load_pose_checkpoint(model, weights)
    model.to(device).eval()
    val_ap = (card.get("val_metrics_flip_gt_boxes") or {}).get("AP")
    info = TeacherInfo(
        name=card.get("name", DEMO_NAME if name == "demo" else name) if demo_line else f"hrnet_{name}", config=config,
        input_size=tuple(int(v) for v in cfg.MODEL.IMAGE_SIZE),
        heatmap_size=tuple(int(v) for v in cfg.MODEL.HEATMAP_SIZE), sigma=float(cfg.MODEL.SIGMA),
        weights=weights, val_ap=None if val_ap is None else float(val_ap),
        params=sum(p.numel() for p in model.parameters()), card=card)
    return model, info
