"""Checkpoints written atomically (a kill never leaves half a file) and read strictly."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import config


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    config.atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, model: nn.Module | None = None, strict: bool = True) -> dict:
    """Load a checkpoint written by ``fit`` (or a bare state dict) into ``model``; return the other entries."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if "model" not in ckpt:
        ckpt = {"model": ckpt}
    if model is not None:
        try:
            model.load_state_dict(ckpt["model"], strict=strict)
        except RuntimeError as e:
            raise RuntimeError(f"checkpoint {path} does not fit {type(model).__name__}: {e}") from None
    return {k: v for k, v in ckpt.items() if k != "model"}
