"""Operations on a whole model of ai8x layers: switch its device, re-check its rules, fold its
batch-norms, read a wide output as float, and the QAT policy (which layers quantize, when)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .device import Ai8xRuleError, Device
from .layers import Eltwise, QuantizationAwareModule


def apply_device(model: nn.Module, device: Device) -> nn.Module:
    """Switch every ai8x layer of `model` to `device` (e.g. ``Device(85, simulate=True)``)."""
    for m in model.modules():
        if isinstance(m, (QuantizationAwareModule, Eltwise)):
            m.device = device
    return model


def ai8x_layers(model: nn.Module) -> list[tuple[str, QuantizationAwareModule]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizationAwareModule)]


def wide_output_to_float(y: torch.Tensor, layer: QuantizationAwareModule) -> torch.Tensor:
    """The float value a wide (32-bit) layer's output stands for. A wide layer skips the
    ``2**output_shift`` rescale, so during QAT its output is the float value x 2**-shift (and
    changes scale whenever the shift changes: divide it out before a heatmap loss); in
    simulate mode it is additionally x 2**14 (Q17.14 integers)."""
    if not layer.wide:
        raise ValueError(f"{layer._label()} is not a wide layer")
    scale = torch.exp2(layer.effective_output_shift())
    if layer.device.simulate:
        scale = scale / 2 ** (layer.device.limits.wide_resolution_bits - 1)
    return y * scale


_UNSUPPORTED = (nn.ELU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU,
                nn.Hardswish, nn.Softmax, nn.ReLU6, nn.Upsample)


def check_model(model: nn.Module, device: int | Device | None = None) -> None:
    """Re-check every ai8x layer with its module name, and reject plain torch layers the
    device cannot run (Conv2d, BatchNorm, ELU, sigmoid, ...) outside ai8x layers. Each layer
    is checked for its own device, or for `device` (85 / 87 or a `Device`) when given; the
    layers' attributes are read as they are now, so a change made after construction (a
    stride set on ``op``, another ``op`` swapped in) is caught."""
    if device is not None and not isinstance(device, Device):
        device = Device(int(device))
    inner = {id(c) for _, m in ai8x_layers(model) for c in m.modules()}
    for name, m in model.named_modules():
        if isinstance(m, QuantizationAwareModule):
            m.check(name, device)
        elif id(m) in inner:
            continue
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d,
                            nn.MaxPool2d, nn.AvgPool2d, *_UNSUPPORTED)):
            raise Ai8xRuleError(f"{name}: {type(m).__name__} is not an ai8x layer and cannot run "
                                f"on the MAX7800x (use the ai8x fused layers; activations are "
                                f"ReLU, Abs or none)")


def fuse_bn_layers(model: nn.Module) -> nn.Module:
    """Fold every batch-norm into its convolution (in place) and drop ``bn``:
    ``w' = w * k``, ``b' = (b - mean) * k + beta / 4`` with ``k = gamma / 4 / sqrt(var + eps)`` per output channel (dim 0 of a Conv2d weight, dim 1 of a
    ConvTranspose2d weight). The 1/4 matches the forward's ``bn(x) / 4``."""
    for _, m in ai8x_layers(model):
        if m.bn is None:
            continue
        bn, w = m.bn, m.op.weight.data
        b = m.op.bias.data
        inv_std = torch.rsqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(inv_std)
        gamma, beta = 0.25 * gamma.detach(), 0.25 * beta.detach()
        out_dim = 1 if isinstance(m.op, nn.ConvTranspose2d) else 0
        shape = [1] * w.dim()
        shape[out_dim] = -1
        m.op.weight.data = w * (gamma * inv_std).reshape(shape)
        m.op.bias.data = (b - bn.running_mean) * inv_std * gamma + beta
        m.bn = None
    return model


_POLICY_KEYS = {"start_epoch", "weight_bits", "shift_quantile", "overrides"}


def load_qat_policy(policy: str | Path | Mapping[str, Any], source: str | None = None) -> dict:
    """A validated QAT policy dict from a YAML file, YAML text or a dict:
    ``start_epoch`` (int >= 0), ``weight_bits`` (1/2/4/8), optional ``shift_quantile``
    (0 < q <= 1) and ``overrides: {module_name: {weight_bits: N}}``."""
    if isinstance(policy, Path) or (isinstance(policy, str) and "\n" not in policy
                                    and Path(policy).suffix in (".yaml", ".yml")):
        import yaml

        source = source or str(policy)
        policy = yaml.safe_load(Path(policy).read_text())
    elif isinstance(policy, str):
        import yaml

        policy = yaml.safe_load(policy)
    where = f"QAT policy {source}" if source else "QAT policy"
    if not isinstance(policy, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(policy).__name__}")
    unknown = set(policy) - _POLICY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_POLICY_KEYS)})")
    for key in ("start_epoch", "weight_bits"):
        if key not in policy:
            raise ValueError(f"{where}: missing required key {key!r}")
    out = {"start_epoch": policy["start_epoch"], "weight_bits": policy["weight_bits"]}
    if not isinstance(out["start_epoch"], int) or isinstance(out["start_epoch"], bool) \
            or out["start_epoch"] < 0:
        raise ValueError(f"{where}: start_epoch must be an integer >= 0, got {out['start_epoch']!r}")
    if out["weight_bits"] not in (1, 2, 4, 8):
        raise ValueError(f"{where}: weight_bits must be 1, 2, 4 or 8, got {out['weight_bits']!r}")
    if "shift_quantile" in policy:
        q = policy["shift_quantile"]
        if not isinstance(q, (int, float)) or not 0.0 < float(q) <= 1.0:
            raise ValueError(f"{where}: shift_quantile must lie in (0, 1], got {q!r}")
        out["shift_quantile"] = float(q)
    overrides = policy.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}: overrides must map module names to {{weight_bits: N}}")
    for name, o in overrides.items():
        if not isinstance(o, Mapping) or set(o) != {"weight_bits"} or o["weight_bits"] not in (1, 2, 4, 8):
            raise ValueError(f"{where}: overrides[{name!r}] must be {{weight_bits: 1|2|4|8}}, got {o!r}")
    if "overrides" in policy:
        out["overrides"] = {str(k): {"weight_bits": v["weight_bits"]} for k, v in overrides.items()}
    return out


def initiate_qat(model: nn.Module, policy) -> nn.Module:
    """Start QAT: fuse batch-norm, then give every ai8x layer its weight bits (policy default
    or override), ``quantize_activation`` and ``adjust_output_shift``. Rebuild the optimizer
    afterwards (the BN parameters are gone)."""
    policy = load_qat_policy(policy)
    layers = dict(ai8x_layers(model))
    overrides = policy.get("overrides", {})
    missing = [n for n in overrides if n not in layers]
    if missing:
        raise ValueError(f"QAT policy overrides name no ai8x layer: {missing} "
                         f"(layers: {list(layers)})")
    fuse_bn_layers(model)
    q = policy.get("shift_quantile", 1.0)
    for name, m in layers.items():
        bits = overrides.get(name, {}).get("weight_bits", policy["weight_bits"])
        m.set_quantization(bits, bits, True, q, name=name)
    return model


def qat_should_start(epoch: int, policy) -> bool:
    """True exactly at the policy's ``start_epoch`` (epoch 0 included)."""
    return policy is not None and epoch == load_qat_policy(policy)["start_epoch"]
