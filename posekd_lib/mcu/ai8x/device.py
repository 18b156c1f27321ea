"""The device the ai8x layers emulate (MAX78000 or MAX78002, float or integer-simulate) and the
quantizers they share: round-half-up with straight-through gradients, the QAT output shift."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hardware import Limits, limits

ACTIVATIONS = (None, "ReLU", "Abs")
POOLINGS = (None, "Max", "Avg")
BATCHNORMS = (None, "Affine", "NoAffine")


class Ai8xRuleError(ValueError):
    """A layer or model breaks a MAX7800x hardware rule."""


@dataclass(frozen=True)
class Device:
    """Which chip the layers emulate and how: ``device`` 85 = MAX78000, 87 = MAX78002;
    ``simulate`` = integer arithmetic of the chip; ``round_avg`` = round (not truncate) avg pool."""

    device: int = 85
    simulate: bool = False
    round_avg: bool = False

    def __post_init__(self):
        if self.device not in (85, 87):
            raise ValueError(f"device must be 85 (MAX78000) or 87 (MAX78002), got {self.device!r}")

    @property
    def limits(self) -> Limits:
        return limits(self.device)


_default_device = Device()


def set_device(device: int = 85, simulate: bool = False, round_avg: bool = False) -> Device:
    """Set the device that layers built from now on capture; returns it."""
    global _default_device
    _default_device = Device(device, bool(simulate), bool(round_avg))
    return _default_device


def get_device() -> Device:
    return _default_device



# --------------------------------------------------------------------------------------------
# straight-through rounding

class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _ste(fn, x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` in the forward pass, identity gradient in the backward pass."""
    return _StraightThrough.apply(x, fn)


def quantize(x: torch.Tensor, bits: int, simulate: bool) -> torch.Tensor:
    """Round half up to `bits` bits: QAT on [-1, 1) values, simulate on integer-scaled values
    (``bits`` < 1 there scales up by ``2**(1 - bits)``: sub-8-bit weights to the 8-bit range)."""
    if simulate:
        if bits > 1:
            return _ste(lambda v: v.div(2 ** (bits - 1)).add(0.5).floor(), x)
        if bits < 1:
            return _ste(lambda v: v.mul(2 ** (1 - bits)).add(0.5).floor(), x)
        return _ste(lambda v: v.add(0.5).floor(), x)
    f = 2 ** (bits - 1)
    return _ste(lambda v: v.mul(f).add(0.5).floor().div(f), x)


def _trunc(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v > 0, torch.floor(v), torch.ceil(v))


def abs_quantile(params: torch.Tensor, q: float) -> torch.Tensor:
    """The `q` quantile of ``|params|`` with midpoint interpolation between the two
    neighbouring order statistics (q = 1 gives the maximum)."""
    a = params.detach().abs().flatten()
    if q >= 1.0:
        return a.max()
    s = torch.sort(a).values
    pos = q * (s.numel() - 1)
    return (s[math.floor(pos)] + s[math.ceil(pos)]) / 2


def output_shift_of(params: torch.Tensor, shift_quantile: float = 1.0) -> torch.Tensor:
    """QAT output shift: ``-floor(log2(1 / quantile|params|))`` clamped to [-15, 15]."""
    limit = abs_quantile(params, shift_quantile)
    return -(1.0 / limit).log2().floor().clamp(min=-15.0, max=15.0)
