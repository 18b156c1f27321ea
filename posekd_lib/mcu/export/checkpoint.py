"""Checkpoints for izer: lean (weights-only, no BN keys) and quantized (integer weights, biases and
output shifts as upstream ``quantize.py`` computes them)."""
from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .. import ai8x
from ..hardware import MAX78000, limits


_PLAIN = (int, float, str, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain value "
                    f"(int, float, str, bool, None, list, dict) and would need pickle to load")


def lean_checkpoint(model: nn.Module | Mapping[str, torch.Tensor], epoch: int, arch: str,
                    extras: Mapping[str, Any] | None = None) -> dict:
    """``{'epoch', 'state_dict', 'arch', 'extras'}`` with CPU tensors and plain values only, so
    ``torch.load(weights_only=True)`` opens it. Refuses a state dict that still holds batch-norm
    keys (izer would read ``*.bn.weight`` as a layer): fuse first."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    bn = [k for k in sd if ".bn." in f".{k}"]
    if bn:
        raise ValueError(f"state dict still has batch-norm entries ({bn[:3]}{'...' if len(bn) > 3 else ''}); "
                         f"call ai8x.fuse_bn_layers(model) (or initiate_qat) first")
    extras = dict(extras or {})
    _check_plain(extras, "extras")
    return {"epoch": int(epoch),
            "state_dict": OrderedDict((k, v.detach().cpu().clone()) for k, v in sd.items()),
            "arch": str(arch), "extras": extras}


def save_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """Save a lean or quantized checkpoint (``.pth.tar``) and check it loads weights-only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(ckpt), path)
    torch.load(path, map_location="cpu", weights_only=True)
    return path


def _layer_prefix(key: str) -> str:
    if not key.endswith(".op.weight"):
        raise ValueError(f"state dict key {key!r}: every '*.weight' must belong to an ai8x layer "
                         f"('<layer>.op.weight'); izer maps each one onto a hardware layer")
    return key[: -len(".op.weight")]


def _scalar(t) -> float:
    return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


def quantize_checkpoint(ckpt: Mapping[str, Any], device: int = MAX78000,
                        clip: str = "MAX_BIT_SHIFT", weight_bits: int | None = None) -> dict:
    """The quantized checkpoint izer consumes, computed from a QAT checkpoint with upstream
    ``quantize.py``'s MAX_BIT_SHIFT rules, per layer with ``b`` = its ``weight_bits`` (else
    `weight_bits`, else 8) and ``s = clamp(floor(log2(1 / quantile|[w; bias]|)), -7-b, 23-b)``:

    - weight ``clamp(floor(w * 2**s * 2**(b-1) + 0.5), -2**(b-1), 2**(b-1)-1)`` (float32);
    - bias quantized the same way, then times ``2**(b-8) * 128``;
    - ``output_shift = -s`` (a float; 0 comes out as -0.0, as upstream writes it),
      ``bias_bits = b`` (float32), ``adjust_output_shift = 0.``, ``quantize_activation = 1.``.

    The quantile uses the layer's ``shift_quantile`` with the same midpoint interpolation as
    the QAT forward (upstream quantize.py interpolates linearly; both give the max at 1.0).
    The input is not modified; ``extras['clipping_method']`` is recorded."""
    if clip != "MAX_BIT_SHIFT":
        raise ValueError(f"clip={clip!r}: only 'MAX_BIT_SHIFT' (the QAT method) is implemented")
    if "state_dict" not in ckpt:
        raise ValueError("checkpoint has no 'state_dict'")
    lim = limits(device)
    out = copy.deepcopy(dict(ckpt))
    src = ckpt["state_dict"]
    sd = OrderedDict((k, v.clone()) for k, v in src.items())
    for key in list(src):
        if not key.endswith(".weight"):
            continue
        layer = _layer_prefix(key)
        bits = None
        if f"{layer}.weight_bits" in src and int(_scalar(src[f"{layer}.weight_bits"])) != 0:
            bits = int(_scalar(src[f"{layer}.weight_bits"]))
        bits = bits or weight_bits or 8
        if bits not in lim.weight_bits:
            raise ValueError(f"{layer}: weight_bits {bits} is not one of {lim.weight_bits}")
        w = src[key].float()
        bias_key = f"{layer}.op.bias"
        params = torch.cat((w.flatten(), src[bias_key].float().flatten())) if bias_key in src else w.flatten()
        q = _scalar(src[f"{layer}.shift_quantile"]) if f"{layer}.shift_quantile" in src else 1.0
        limit = ai8x.abs_quantile(params, q)
        if not limit > 0:
            raise ValueError(f"{layer}: all weights and biases are zero; cannot pick an output shift")
        shift = torch.floor(torch.log2(1.0 / limit)).clamp(min=-7.0 - bits, max=23.0 - bits)
        scale = torch.pow(2.0, shift)
        hi, lo = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        sd[key] = (2 ** (bits - 1) * scale * w).add(0.5).floor().clamp(min=lo, max=hi)
        wb_key = f"{layer}.weight_bits"
        if wb_key not in sd or int(_scalar(sd[wb_key])) == 0:
            sd[wb_key] = torch.tensor([float(bits)])
        if bias_key in src:
            b = (2 ** (bits - 1) * (src[bias_key].float() * scale)).add(0.5).floor().clamp(min=lo, max=hi)
            sd[bias_key] = b * 2 ** (bits - 8) * 2 ** (lim.activation_bits - 1)
            sd[f"{layer}.bias_bits"] = torch.tensor([float(bits)])
        hw_shift = -float(shift) + (8 - bits)
        if not -15 <= hw_shift <= 15:
            raise ValueError(f"{layer}: hardware output shift {hw_shift:g} (output_shift + 8 - bits) "
                             f"is outside [-15, 15]; the layer's weights are too small or too large")
        sd[f"{layer}.output_shift"] = (-shift).reshape(1).float()
    for key in list(sd):
        if key.endswith(".adjust_output_shift"):
            sd[key] = torch.tensor([0.0])
        elif key.endswith(".quantize_activation"):
            sd[key] = torch.tensor([1.0])
    out["state_dict"] = sd
    out.setdefault("extras", {})
    out["extras"] = dict(out["extras"] or {}, clipping_method=clip)
    return out
