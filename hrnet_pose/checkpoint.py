"""Loading the released HRNet checkpoints strictly, and shipping small teachers in fp16.

The official test script loads weights with ``strict=False``, which silently leaves layers at
their random init when a key or shape does not match. Here every mismatch is an error that
lists what is missing, unexpected and wrongly shaped. Nothing is downloaded: a missing file
raises an error that says which file to fetch from the official model zoo and where to put it.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

MODEL_ZOO_HINT = (
    "The released COCO checkpoints (pose_hrnet_w32_256x192.pth, pose_hrnet_w32_384x288.pth, "
    "pose_hrnet_w48_256x192.pth, pose_hrnet_w48_384x288.pth) are linked from the model zoo section "
    "of the README of github.com/leoxiaobin/deep-high-resolution-net.pytorch (folder pose_coco/). "
    "Download the one matching your config by hand and pass its path; nothing is downloaded automatically."
)
_SHOW = 5
_WRAPPERS = ("state_dict", "model")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model."""


def official_checkpoint_name(config_name: str) -> str:
    """Model-zoo file name for a paper config, e.g. ``w48_384x288`` -> ``pose_hrnet_w48_384x288.pth``."""
    return f"pose_hrnet_{Path(config_name).stem}.pth"


def read_state_dict(path_or_state_dict: str | os.PathLike | Mapping) -> tuple[dict, str]:
    """The plain ``{key: tensor}`` dict inside a checkpoint, and a name for it in messages.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}``, strips a ``module.`` prefix
    (DataParallel) and turns fp16/bf16 floating tensors back into float32.
    """
    if isinstance(path_or_state_dict, Mapping):
        obj, source = path_or_state_dict, "the given state dict"
    else:
        path = Path(path_or_state_dict).expanduser()
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"HRNet checkpoint not found: {path}. Put the official checkpoint "
                                    f"there (e.g. {official_checkpoint_name('w48_384x288')}). {MODEL_ZOO_HINT}")
        obj = torch.load(path, weights_only=True, map_location="cpu")
    while isinstance(obj, Mapping) and not _holds_tensors(obj):
        inner = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointMismatchError(
                f"{source}: not a state dict (top-level keys: {_first(list(obj))})")
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        state[key] = value
    return state, source


def _holds_tensors(d: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def _first(items: list, n: int = _SHOW) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


#: A BatchNorm's step counter: only used with ``momentum=None``; checkpoints older than PyTorch 0.4.1
#: have none, and PyTorch's own loaders accept them without.
BN_COUNTER = "num_batches_tracked"


def with_bn_counters(expected: Mapping, found: Mapping) -> dict:
    """``found`` with the BatchNorm counters it lacks taken from ``expected`` (the model's own), so a
    checkpoint without them loads strictly; nothing else is filled in."""
    return {**{k: v for k, v in expected.items() if k.endswith(BN_COUNTER) and k not in found}, **found}


def compare_state_dicts(expected: Mapping, found: Mapping) -> tuple[list[str], list[str], list[str]]:
    """Missing keys (a BatchNorm counter is not missing: see :func:`with_bn_counters`), unexpected
    keys, and ``key: found vs expected`` shape mismatches."""
    missing = [k for k in expected if k not in found and not k.endswith(BN_COUNTER)]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k}: {tuple(found[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return missing, unexpected, wrong


def load_pose_checkpoint(model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping,
                         strict: bool = True) -> nn.Module:
    """Load a checkpoint file (or dict) into ``model``; returns the model.

    With ``strict=True`` any missing, unexpected or wrongly shaped key raises
    :class:`CheckpointMismatchError` naming the file and the first few keys of each kind.
    With ``strict=False`` only entries whose key and shape match are loaded.
    """
    state, source = read_state_dict(path_or_state_dict)
    expected = model.state_dict()
    missing, unexpected, wrong = compare_state_dicts(expected, state)
    if strict and (missing or unexpected or wrong):
        lines = [f"{source} does not match {type(model).__name__} "
                 f"({len(state)} entries in the checkpoint, {len(expected)} in the model):"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                lines.append(f"  {len(items)} {label}: {_first(items)}")
        lines.append("  Check that the config (channel widths, NUM_JOINTS) matches the checkpoint.")
        raise CheckpointMismatchError("\n".join(lines))
    if not strict:
        bad = {w.split(":")[0] for w in wrong}
        state = {k: v for k, v in state.items() if k in expected and k not in bad}
    model.load_state_dict(with_bn_counters(expected, state), strict=strict)
    return model


def save_fp16_state_dict(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the state dict with floating tensors in fp16 (half the size); returns the path.

    :func:`load_pose_checkpoint` casts them back to float32. BN statistics and weights of a
    trained teacher lose ~1e-3 relative precision, far below what changes a heatmap peak.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_fp16(model), path)
    return path


def fp16_size_bytes(model: nn.Module) -> int:
    """Size in bytes of what :func:`save_fp16_state_dict` would write."""
    buf = io.BytesIO()
    torch.save(_fp16(model), buf)
    return buf.tell()


def _fp16(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
            for k, v in model.state_dict().items()}


def state_dict_manifest(model: nn.Module) -> list[list]:
    """Ordered ``[key, shape]`` list of the state dict (works on the ``meta`` device)."""
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]
