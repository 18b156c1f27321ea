"""MAX78000 layer emulation: ai8x-style fused layers, BN fusion and quantization-aware training.

A faithful re-implementation of the layer arithmetic of Analog Devices' ``ai8x-training``
(which is not on PyPI and whose training script does not run with current torch), with the
same module and parameter names so state dicts are interchangeable with upstream checkpoints
and the ai8x-synthesis tools.

Three numeric modes, picked by the layer's quantization flags and its `Device`:

- float: no quantization; outputs clamped to [-1, 127/128] (wide layers to +-2**15);
- QAT (``quantize_activation`` set, ``simulate`` off): weights and activations rounded to
  their bit widths with straight-through gradients, the output shift recomputed each forward;
- simulate (``Device(simulate=True)``): integer arithmetic of the chip on a quantized
  checkpoint (inputs are integers in [-128, 127]), computed and returned in float64 so it is
  exact whatever convolution kernel torch picks (float32 sums of many int8 products are not).

Device: a `Device` is captured by every layer when it is built (``device=`` argument, else the
process default from `set_device`), as upstream fixes quantizers at build time. Unlike upstream
it can be changed later for a whole model with `apply_device` (e.g. to evaluate a QAT model in
simulate mode after loading a quantized state dict). The quantization flags are read from the
layer's parameters at every forward, so no ``update_model`` step is needed after loading.

Every hardware rule is checked when a layer is built; a violation raises `Ai8xRuleError`
naming the layer (pass ``name=``, or call `check_model` to re-check with module names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from posekd_lib.hardware import Limits, limits

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


def apply_device(model: nn.Module, device: Device) -> nn.Module:
    """Switch every ai8x layer of `model` to `device` (e.g. ``Device(85, simulate=True)``)."""
    for m in model.modules():
        if isinstance(m, (QuantizationAwareModule, Eltwise)):
            m.device = device
    return model


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


# --------------------------------------------------------------------------------------------
# layers

def _square(v, what: str, where: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise Ai8xRuleError(f"{where}: {what} must be square, got {tuple(v)}")
        v = v[0]
    return int(v)


class QuantizationAwareModule(nn.Module):
    """Shared state and forward of ai8x layers: optional pool, an op (conv/linear) in ``op``,
    optional ``bn``, output shift, activation, rounding and clamps.

    Registers six non-trainable parameters, in upstream's order: ``output_shift``,
    ``weight_bits``, ``bias_bits``, ``quantize_activation``, ``adjust_output_shift``,
    ``shift_quantile``; then the children ``pool`` (no parameters), ``op`` and ``bn``."""

    hw_op = "conv2d"

    def __init__(self, *, pooling, activation, wide, weight_bits, bias_bits, quantize_activation,
                 shift_quantile=1.0, pool=None, op=None, bn=None, device: Device | None = None,
                 name: str | None = None):
        super().__init__()
        self.device = device or get_device()
        self.pooling = pooling
        self.activation = activation
        self.wide = bool(wide)
        self.output_shift = nn.Parameter(torch.tensor([0.0]), requires_grad=False)
        self.weight_bits = nn.Parameter(torch.tensor([0]), requires_grad=False)
        self.bias_bits = nn.Parameter(torch.tensor([0]), requires_grad=False)
        self.quantize_activation = nn.Parameter(torch.tensor([False]), requires_grad=False)
        self.adjust_output_shift = nn.Parameter(torch.tensor([False]), requires_grad=False)
        self.shift_quantile = nn.Parameter(torch.tensor([float(shift_quantile)]), requires_grad=False)
        self.pool = pool
        self.op = op
        self.bn = bn
        self.set_quantization(weight_bits, bias_bits, quantize_activation, shift_quantile, name=name)

    # --- configuration -------------------------------------------------------------------
    def set_quantization(self, weight_bits=None, bias_bits=None, quantize_activation=False,
                         shift_quantile=1.0, name: str | None = None) -> None:
        """Float mode (all None/False) or QAT mode (bits in 1/2/4/8 and quantize_activation);
        bias_bits defaults to weight_bits. QAT adjusts the output shift unless simulating."""
        where = name or self._label()
        if bias_bits is None:
            bias_bits = weight_bits
        if weight_bits is None and not quantize_activation:
            wb, bb, qa = 0, 0, False
        elif weight_bits in (1, 2, 4, 8) and bias_bits in (1, 2, 4, 8) and quantize_activation:
            wb, bb, qa = int(weight_bits), int(bias_bits), True
        else:
            raise Ai8xRuleError(
                f"{where}: weight_bits={weight_bits}, bias_bits={bias_bits}, quantize_activation="
                f"{quantize_activation} is neither float mode (None, None, False) nor QAT "
                f"(bits in 1/2/4/8, True)")
        if not 0.0 < float(shift_quantile) <= 1.0:
            raise ValueError(f"{where}: shift_quantile must lie in (0, 1], got {shift_quantile}")
        with torch.no_grad():
            self.weight_bits.fill_(wb)
            self.bias_bits.fill_(bb)
            self.quantize_activation.fill_(qa)
            self.adjust_output_shift.fill_(qa and not self.device.simulate)
            self.shift_quantile.fill_(float(shift_quantile))

    def _label(self) -> str:
        op = self.op
        if op is None:
            return f"{type(self).__name__}(pool)"
        shape = tuple(op.weight.shape)
        return f"{type(self).__name__}{shape}"

    # --- facts used by export / the resource report ------------------------------------
    @property
    def kernel_size_int(self) -> int | None:
        if self.op is None or isinstance(self.op, nn.Linear):
            return None
        return int(self.op.kernel_size[0])

    @property
    def padding_int(self) -> int:
        if self.op is None or isinstance(self.op, nn.Linear):
            return 0
        return int(self.op.padding[0])

    @property
    def pool_size_int(self) -> int:
        k = self.pool.kernel_size
        return int(k[0] if isinstance(k, (tuple, list)) else k)

    @property
    def pool_stride_int(self) -> int:
        s = self.pool.stride
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    def bits_for_export(self) -> int:
        return int(self.weight_bits.item()) or 8

    def has_bias(self) -> bool:
        b = None if self.op is None else self.op.bias
        return b is not None and bool(torch.any(b != 0))

    def effective_output_shift(self) -> torch.Tensor:
        """The shift the forward uses: recomputed from the parameters during QAT
        (``adjust_output_shift``), else the stored ``output_shift``."""
        if bool(self.adjust_output_shift.item()):
            w = self.op.weight.detach().flatten()
            p = w if self.op.bias is None else torch.cat((w, self.op.bias.detach().flatten()))
            return output_shift_of(p, float(self.shift_quantile.item()))
        return self.output_shift.detach()[0]

    # --- forward -------------------------------------------------------------------------
    def _op_forward(self, x, weight, bias):
        return self.op._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.simulate:
            return self._simulate_forward(x)
        dev = self.device
        lim = dev.limits
        qa = bool(self.quantize_activation.item())
        if self.pool is not None:
            x = self.pool(x)
            if self.pooling == "Avg":
                if qa:
                    f = 2 ** (lim.activation_bits - 1)
                    rnd = torch.round if dev.round_avg else _trunc
                    x = _ste(lambda v: rnd(v.mul(f)).div(f), x)
                x = x.clamp(-1.0, 127.0 / 128.0)
        if self.op is None:
            return x

        wb, bb = int(self.weight_bits.item()), int(self.bias_bits.item())
        shift = self.effective_output_shift()
        weight_scale = torch.exp2(-shift) if bool(self.adjust_output_shift.item()) else None
        out_scale = torch.exp2(shift)
        w, b = self.op.weight, self.op.bias
        if weight_scale is not None:
            w = w.mul(weight_scale)
            b = None if b is None else b.mul(weight_scale)
        if wb or bb:
            w = quantize(w, wb, False).clamp(-1.0, (2 ** (wb - 1) - 1) / 2 ** (wb - 1))
            if b is not None:
                b = quantize(b, bb, False).clamp(-1.0, (2 ** (bb - 1) - 1) / 2 ** (bb - 1))
        x = self._op_forward(x, w, b)
        if self.bn is not None:
            x = self.bn(x).div(4.0)
        if not self.wide:
            x = x.mul(out_scale)
        if self.activation == "ReLU":
            x = torch.relu(x)
        elif self.activation == "Abs":
            x = torch.abs(x)
        if not self.wide:
            if qa:
                x = quantize(x, lim.activation_bits, False)
            return x.clamp(-1.0, (2.0 ** (lim.activation_bits - 1) - 1) / 2.0 ** (lim.activation_bits - 1))
        if qa:
            x = quantize(x, lim.wide_resolution_bits, False)
        bound = 2.0 ** (lim.full_acc_bits - 2 * (lim.data_bits - 1) - 1)
        return x.clamp(-bound, bound)

    def _simulate_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The chip's integer arithmetic, exact whatever kernel torch picks (any CPU ISA, oneDNN
        or not, any thread count; the same argument holds for float64 on a GPU, where float32
        convolutions may also run in TF32): activations, weights and biases are integers, and the
        layer computes and returns them in float64. In float32 a convolution is exact only
        while every partial sum of its int8 x int8 products stays within 2**24, which a fan-in
        above 1024 (1024 x 128 x 128 = 2**24) or a wide layer's accumulator (up to 2**29) can
        exceed, and then each kernel's summation order rounds differently. float64 holds
        integers exactly to 2**53: every order gives the exact sum. The convolution's result is
        also rounded to the integer it must be, which removes the < 0.5 error of any
        FFT/Winograd algorithm a backend might pick. Inputs must be integers (the device's
        int8 data: an image in [-1, 1) times 128, see `export.sample_input`)."""
        dev = self.device
        lim = dev.limits
        x = x.to(torch.float64)
        lo8, hi8 = -(2 ** (lim.data_bits - 1)), 2 ** (lim.data_bits - 1) - 1
        if self.pool is not None:
            if self.pooling == "Avg":
                # the exact integer window sum, then one correctly rounded division: trunc/round
                # of it equal those of the exact quotient (it is an integer, a .5 with an even
                # divisor, or at least 1/(2*k*k) away from both)
                k, stride = self.pool_size_int, self.pool_stride_int
                total = F.avg_pool2d(x, k, stride, 0, divisor_override=1)
                x = _ste(torch.round if dev.round_avg else _trunc, total / (k * k)).clamp(lo8, hi8)
            else:
                x = self.pool(x)
        if self.op is None:
            return x
        if self.bn is not None:
            raise Ai8xRuleError(f"{self._label()}: simulate mode needs batch-norm fused into the "
                                f"convolution (ai8x.fuse_bn_layers, then load the quantized state dict)")
        wb = int(self.weight_bits.item())
        if wb == 0:
            raise Ai8xRuleError(f"{self._label()}: simulate mode needs quantized weights "
                                f"(weight_bits is 0: load a quantized state dict)")
        shift = self.effective_output_shift().to(torch.float64)
        w, b = self.op.weight.to(torch.float64), self.op.bias
        b = None if b is None else b.to(torch.float64)
        if bool(self.adjust_output_shift.item()):
            w = w.mul(torch.exp2(-shift))
            b = None if b is None else b.mul(torch.exp2(-shift))
        w = quantize(w, wb - lim.data_bits + 1, True)
        b = None if b is None else quantize(b, 2 * (wb - lim.data_bits) + 1, True)
        x = _ste(torch.round, self._op_forward(x, w, b))
        if not self.wide:
            x = _ste(torch.floor, x.mul(torch.exp2(shift)))
        if self.activation == "ReLU":
            x = torch.relu(x)
        elif self.activation == "Abs":
            x = torch.abs(x)
        if not self.wide:
            x = quantize(x, lim.data_bits, True)
            return x.clamp(-(2 ** (lim.activation_bits - 1)), 2 ** (lim.activation_bits - 1) - 1)
        x = quantize(x, lim.data_bits - wb + 1, True)
        return x.clamp(-(2 ** (lim.full_acc_bits - 1)), 2 ** (lim.full_acc_bits - 1) - 1)

    def check(self, name: str | None = None, device: Device | None = None) -> None:
        """Re-check the hardware rules of this layer as it is now, for its own device or for
        `device` (see `check_model`)."""
        raise NotImplementedError


def _check_common(where: str, dev: Device, *, in_channels, out_channels, pooling, pool_size,
                  pool_stride, activation, wide, batchnorm, bias, weight_bits, bias_bits) -> None:
    lim = dev.limits
    if activation not in ACTIVATIONS:
        raise Ai8xRuleError(f"{where}: activation {activation!r} is not supported by the "
                            f"hardware (only ReLU, Abs or None)")
    if pooling not in POOLINGS:
        raise Ai8xRuleError(f"{where}: pooling {pooling!r} is not one of Max, Avg, None")
    if batchnorm not in BATCHNORMS:
        raise Ai8xRuleError(f"{where}: batchnorm {batchnorm!r} is not one of Affine, NoAffine, None")
    if wide and activation is not None:
        raise Ai8xRuleError(f"{where}: a wide (32-bit output) layer cannot have an activation "
                            f"({activation})")
    if batchnorm is not None and not bias:
        raise Ai8xRuleError(f"{where}: batchnorm needs bias=True (it is folded into the bias)")
    for what, bits in (("weight_bits", weight_bits), ("bias_bits", bias_bits)):
        if bits not in (None, *lim.weight_bits):
            raise Ai8xRuleError(f"{where}: {what}={bits} is not one of {lim.weight_bits}")
    for what, ch in (("in_channels", in_channels), ("out_channels", out_channels)):
        if ch is not None and ch > lim.max_channels:
            raise Ai8xRuleError(f"{where}: {what}={ch} exceeds {lim.max_channels}")
    if pooling is not None:
        if pool_size < 1 or pool_size > lim.max_pool:
            raise Ai8xRuleError(f"{where}: pool size {pool_size} must lie in 1..{lim.max_pool}")
        if pooling == "Avg" and pool_size > lim.max_avg_pool:
            raise Ai8xRuleError(f"{where}: average pool size {pool_size} exceeds {lim.max_avg_pool}")
        if pool_stride < 1 or pool_stride > lim.max_pool_stride:
            raise Ai8xRuleError(f"{where}: pool stride {pool_stride} must lie in 1..{lim.max_pool_stride}")


def _check_conv(where: str, dev: Device, *, transposed: bool, in_channels, out_channels, k,
                stride, padding, dilation, groups, pooling, pool_size, pool_stride, pool_dilation,
                activation, wide, batchnorm, bias, weight_bits, bias_bits) -> None:
    lim = dev.limits
    _check_common(where, dev, in_channels=in_channels, out_channels=out_channels,
                  pooling=pooling, pool_size=pool_size, pool_stride=pool_stride,
                  activation=activation, wide=wide, batchnorm=batchnorm, bias=bias,
                  weight_bits=weight_bits, bias_bits=bias_bits)
    if pool_dilation != 1:
        raise Ai8xRuleError(f"{where}: pool dilation {pool_dilation} is not supported (1 only)")
    if k is None:
        if pooling is None:
            raise Ai8xRuleError(f"{where}: a layer without a kernel must pool")
        return
    if transposed:
        if k != 3:
            raise Ai8xRuleError(f"{where}: ConvTranspose2d needs a 3x3 kernel, got {k}x{k}")
        if stride != 2:
            raise Ai8xRuleError(f"{where}: ConvTranspose2d needs stride 2, got {stride}")
    else:
        if k not in (1, 3):
            raise Ai8xRuleError(f"{where}: kernel {k}x{k} is not supported (1x1 or 3x3)")
        if stride != 1:
            raise Ai8xRuleError(f"{where}: stride {stride} is not supported (izer accepts stride 1 "
                                f"only; downsample with a fused max/avg pool)")
    if not 0 <= padding <= lim.max_padding:
        raise Ai8xRuleError(f"{where}: padding {padding} must lie in 0..{lim.max_padding}")
    if padding >= k:
        raise Ai8xRuleError(f"{where}: padding {padding} must be smaller than the kernel ({k}x{k})")
    if dilation != 1:
        raise Ai8xRuleError(f"{where}: dilation {dilation} is not supported (1 only)")
    if groups != 1:
        if not lim.depthwise:
            raise Ai8xRuleError(f"{where}: groups={groups} (depthwise) needs the MAX78002 "
                                f"({lim.name} supports groups=1 only)")
        if not groups == in_channels == out_channels:
            raise Ai8xRuleError(f"{where}: groups must be 1 or equal in = out channels")


class Conv2d(QuantizationAwareModule):
    """Optional pool ('Max'/'Avg'), 3x3 or 1x1 stride-1 convolution, optional batch-norm,
    activation ('ReLU'/'Abs'/None). ``kernel_size=None`` gives a pool-only layer."""

    transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, *, pooling=None,
                 pool_size=2, pool_stride=2, pool_dilation=1, stride=1, padding=0, dilation=1,
                 bias=True, activation=None, wide=False, batchnorm=None, weight_bits=None,
                 bias_bits=None, quantize_activation=False, groups=1, eps=1e-5, momentum=0.05,
                 shift_quantile=1.0, device: Device | None = None, name: str | None = None):
        dev = device or get_device()
        where = name or f"{type(self).__name__}({in_channels}->{out_channels})"
        k = _square(kernel_size, "kernel_size", where)
        pool_size = _square(pool_size, "pool_size", where)
        pool_stride = pool_size if pool_stride is None else _square(pool_stride, "pool_stride", where)
        cfg = dict(transposed=self.transposed, in_channels=in_channels, out_channels=out_channels,
                   k=k, stride=_square(stride, "stride", where),
                   padding=_square(padding, "padding", where),
                   dilation=_square(dilation, "dilation", where), groups=groups, pooling=pooling,
                   pool_size=pool_size, pool_stride=pool_stride,
                   pool_dilation=_square(pool_dilation, "pool_dilation", where),
                   activation=activation, wide=wide, batchnorm=batchnorm, bias=bias,
                   weight_bits=weight_bits, bias_bits=bias_bits)
        _check_conv(where, dev, **cfg)
        pool = None
        if pooling == "Max":
            pool = nn.MaxPool2d(kernel_size=pool_size, stride=pool_stride, padding=0)
        elif pooling == "Avg":
            pool = nn.AvgPool2d(kernel_size=pool_size, stride=pool_stride, padding=0)
        bn = None
        if batchnorm is not None:
            bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum, affine=batchnorm == "Affine")
        op = None
        if k is not None:
            if self.transposed:
                op = nn.ConvTranspose2d(in_channels, out_channels, k, stride=cfg["stride"],
                                        padding=cfg["padding"], output_padding=1, bias=bias,
                                        groups=groups)
            else:
                op = nn.Conv2d(in_channels, out_channels, k, stride=1, padding=cfg["padding"],
                               bias=bias, groups=groups)
        super().__init__(pooling=pooling, activation=activation, wide=wide,
                         weight_bits=weight_bits, bias_bits=bias_bits,
                         quantize_activation=quantize_activation, shift_quantile=shift_quantile,
                         pool=pool, op=op, bn=bn, device=dev, name=name)
        if op is None:
            self.hw_op = "passthrough"

    def check(self, name: str | None = None, device: Device | None = None) -> None:
        op, pool = self.op, self.pool
        _check_conv(
            name or self._label(), device or self.device, transposed=self.transposed,
            in_channels=None if op is None else op.in_channels,
            out_channels=None if op is None else op.out_channels,
            k=None if op is None else _square(op.kernel_size, "kernel_size", name or ""),
            stride=1 if op is None else op.stride[0], padding=0 if op is None else op.padding[0],
            dilation=1 if op is None else op.dilation[0], groups=1 if op is None else op.groups,
            pooling=self.pooling, pool_size=self.pool_size_int if pool else 2,
            pool_stride=self.pool_stride_int if pool else 2,
            pool_dilation=getattr(pool, "dilation", 1) if pool else 1,
            activation=self.activation, wide=self.wide,
            batchnorm=None if self.bn is None else ("Affine" if self.bn.affine else "NoAffine"),
            bias=op is None or op.bias is not None, weight_bits=None, bias_bits=None)


class ConvTranspose2d(Conv2d):
    """Optional pool, 3x3 stride-2 transposed convolution (output padding 1, doubles H and W),
    optional batch-norm, activation."""

    transposed = True
    hw_op = "convtranspose2d"

    def __init__(self, in_channels, out_channels, kernel_size=3, *, stride=2, padding=1, **kw):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, **kw)

    def _op_forward(self, x, weight, bias):
        op = self.op
        return F.conv_transpose2d(x, weight, bias, op.stride, op.padding, op.output_padding,
                                  op.groups, op.dilation)


class Linear(QuantizationAwareModule):
    """Fully connected layer (in/out <= 1024, no pooling, no batch-norm), activation."""

    hw_op = "linear"

    def __init__(self, in_features: int, out_features: int, *, bias=True, activation=None,
                 wide=False, pooling=None, batchnorm=None, weight_bits=None, bias_bits=None,
                 quantize_activation=False, shift_quantile=1.0, device: Device | None = None,
                 name: str | None = None):
        dev = device or get_device()
        where = name or f"{type(self).__name__}({in_features}->{out_features})"
        if pooling is not None or batchnorm is not None:
            raise Ai8xRuleError(f"{where}: Linear takes neither pooling nor batchnorm")
        _check_common(where, dev, in_channels=in_features, out_channels=out_features, pooling=None,
                      pool_size=1, pool_stride=1, activation=activation, wide=wide, batchnorm=None,
                      bias=bias, weight_bits=weight_bits, bias_bits=bias_bits)
        super().__init__(pooling=None, activation=activation, wide=wide, weight_bits=weight_bits,
                         bias_bits=bias_bits, quantize_activation=quantize_activation,
                         shift_quantile=shift_quantile, op=nn.Linear(in_features, out_features, bias),
                         device=dev, name=name)

    def _op_forward(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def check(self, name: str | None = None, device: Device | None = None) -> None:
        Linear(self.op.in_features, self.op.out_features, bias=self.op.bias is not None,
               activation=self.activation, wide=self.wide, device=device or self.device,
               name=name or self._label())


def _named(name: str, base, **fixed):
    """A convenience subclass of `base` with some arguments fixed (``batchnorm`` is only a
    default, as upstream: ``batchnorm="NoAffine"`` may still be passed)."""

    def __init__(self, *args, **kwargs):
        for k, v in fixed.items():
            if k == "batchnorm":
                kwargs.setdefault(k, v)
            elif k in kwargs:
                raise TypeError(f"{name} fixes {k}={v!r}; use {base.__name__} to choose it")
            else:
                kwargs[k] = v
        base.__init__(self, *args, **kwargs)

    return type(name, (base,), {"__init__": __init__, "__module__": __name__, "__qualname__": name,
                                "__doc__": f"{base.__name__} with {fixed}."})


_BN = dict(batchnorm="Affine")
FusedConv2dReLU = _named("FusedConv2dReLU", Conv2d, activation="ReLU")
FusedConv2dAbs = _named("FusedConv2dAbs", Conv2d, activation="Abs")
FusedConv2dBN = _named("FusedConv2dBN", Conv2d, **_BN)
FusedConv2dBNReLU = _named("FusedConv2dBNReLU", Conv2d, activation="ReLU", **_BN)
FusedConv2dBNAbs = _named("FusedConv2dBNAbs", Conv2d, activation="Abs", **_BN)
FusedMaxPoolConv2d = _named("FusedMaxPoolConv2d", Conv2d, pooling="Max")
FusedMaxPoolConv2dReLU = _named("FusedMaxPoolConv2dReLU", Conv2d, pooling="Max", activation="ReLU")
FusedMaxPoolConv2dAbs = _named("FusedMaxPoolConv2dAbs", Conv2d, pooling="Max", activation="Abs")
FusedMaxPoolConv2dBN = _named("FusedMaxPoolConv2dBN", Conv2d, pooling="Max", **_BN)
FusedMaxPoolConv2dBNReLU = _named("FusedMaxPoolConv2dBNReLU", Conv2d, pooling="Max",
                                  activation="ReLU", **_BN)
FusedMaxPoolConv2dBNAbs = _named("FusedMaxPoolConv2dBNAbs", Conv2d, pooling="Max",
                                 activation="Abs", **_BN)
FusedAvgPoolConv2d = _named("FusedAvgPoolConv2d", Conv2d, pooling="Avg")
FusedAvgPoolConv2dReLU = _named("FusedAvgPoolConv2dReLU", Conv2d, pooling="Avg", activation="ReLU")
FusedAvgPoolConv2dAbs = _named("FusedAvgPoolConv2dAbs", Conv2d, pooling="Avg", activation="Abs")
FusedAvgPoolConv2dBNReLU = _named("FusedAvgPoolConv2dBNReLU", Conv2d, pooling="Avg",
                                  activation="ReLU", **_BN)
FusedAvgPoolConv2dBNAbs = _named("FusedAvgPoolConv2dBNAbs", Conv2d, pooling="Avg",
                                 activation="Abs", **_BN)
FusedConvTranspose2dReLU = _named("FusedConvTranspose2dReLU", ConvTranspose2d, activation="ReLU")
FusedConvTranspose2dAbs = _named("FusedConvTranspose2dAbs", ConvTranspose2d, activation="Abs")
FusedConvTranspose2dBNReLU = _named("FusedConvTranspose2dBNReLU", ConvTranspose2d,
                                    activation="ReLU", **_BN)
FusedMaxPoolConvTranspose2d = _named("FusedMaxPoolConvTranspose2d", ConvTranspose2d, pooling="Max")
FusedMaxPoolConvTranspose2dReLU = _named("FusedMaxPoolConvTranspose2dReLU", ConvTranspose2d,
                                         pooling="Max", activation="ReLU")
FusedMaxPoolConvTranspose2dBNReLU = _named("FusedMaxPoolConvTranspose2dBNReLU", ConvTranspose2d,
                                           pooling="Max", activation="ReLU", **_BN)
FusedAvgPoolConvTranspose2d = _named("FusedAvgPoolConvTranspose2d", ConvTranspose2d, pooling="Avg")
FusedAvgPoolConvTranspose2dReLU = _named("FusedAvgPoolConvTranspose2dReLU", ConvTranspose2d,
                                         pooling="Avg", activation="ReLU")
FusedAvgPoolConvTranspose2dBNReLU = _named("FusedAvgPoolConvTranspose2dBNReLU", ConvTranspose2d,
                                           pooling="Avg", activation="ReLU", **_BN)
FusedLinearReLU = _named("FusedLinearReLU", Linear, activation="ReLU")
FusedLinearAbs = _named("FusedLinearAbs", Linear, activation="Abs")


class MaxPool2d(Conv2d):
    """Pool-only layer (a hardware pass-through with max pooling)."""

    def __init__(self, kernel_size, stride=None, **kw):
        super().__init__(0, 0, None, pooling="Max", pool_size=kernel_size,
                         pool_stride=stride, bias=False, **kw)


class AvgPool2d(Conv2d):
    """Pool-only layer (a hardware pass-through with average pooling)."""

    def __init__(self, kernel_size, stride=None, **kw):
        super().__init__(0, 0, None, pooling="Avg", pool_size=kernel_size,
                         pool_stride=stride, bias=False, **kw)


class Eltwise(nn.Module):
    """Element-wise operation on two or more tensors, clamped like an 8-bit activation.
    On the device it runs inside the next layer (izer ``eltwise``)."""

    hw_name = "add"

    def __init__(self, device: Device | None = None):
        super().__init__()
        self.device = device or get_device()

    def combine(self, a, b):
        raise NotImplementedError

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0]
        for x in xs[1:]:
            y = self.combine(y, x)
        if self.device.simulate:                    # integers in float64, as the layers'
            bits = self.device.limits.activation_bits
            return y.to(torch.float64).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return y.clamp(-1.0, 127.0 / 128.0)


class Add(Eltwise):
    hw_name = "add"

    def combine(self, a, b):
        return a + b


class Sub(Eltwise):
    hw_name = "sub"

    def combine(self, a, b):
        return a - b


# --------------------------------------------------------------------------------------------
# model-level operations

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


# --------------------------------------------------------------------------------------------
# tracing (for the network YAML and the resource report)

@dataclass
class TracedNode:
    """One leaf of the traced dataflow: an ai8x layer, an element-wise op or a flatten."""

    name: str
    kind: str                 # layer | eltwise | flatten
    inputs: list[str]         # node names, "input" for the network input
    in_shape: tuple[int, ...]
    pooled_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    module: Any = None
    op: str | None = None


def trace_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[TracedNode]:
    """The model's dataflow between ai8x layers and element-wise ops (torch.fx, with those as
    leaves), with the per-sample shapes of one float forward. Raises `Ai8xRuleError` for any
    other operation than flatten/view before a Linear."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (QuantizationAwareModule, Eltwise)) or super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    shapes: dict[str, tuple] = {}
    pooled: dict[str, tuple] = {}
    hooks = []
    for name, m in modules.items():
        if isinstance(m, (QuantizationAwareModule, Eltwise)):
            def hook(mod, args, out, name=name):
                shapes[name] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))
                if isinstance(mod, QuantizationAwareModule) and mod.pool is not None:
                    pooled[name] = tuple(mod.pool(args[0][:1]).shape[1:])
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    nodes: list[TracedNode] = []
    alias: dict[str, str] = {}
    for n in graph.nodes:
        if n.op == "placeholder":
            alias[n.name] = "input"
            continue
        if n.op == "output":
            continue
        ins = [alias[a.name] for a in n.all_input_nodes]
        if n.op == "call_module" and isinstance(modules[n.target], (QuantizationAwareModule, Eltwise)):
            m = modules[n.target]
            i_shape, o_shape = shapes[n.target]
            if isinstance(m, Eltwise):
                nodes.append(TracedNode(n.target, "eltwise", ins, i_shape, i_shape, o_shape, m, m.hw_name))
            else:
                nodes.append(TracedNode(n.target, "layer", ins, i_shape, pooled.get(n.target, i_shape),
                                        o_shape, m))
            alias[n.name] = n.target
        elif (n.op == "call_function" and n.target in (torch.flatten,)) or \
                (n.op == "call_method" and n.target in ("flatten", "view", "reshape")) or \
                (n.op == "call_module" and isinstance(modules[n.target], nn.Flatten)):
            nodes.append(TracedNode(n.name, "flatten", ins, (), (), ()))
            alias[n.name] = n.name
        else:
            raise Ai8xRuleError(f"{n.name}: {n.op} {getattr(n.target, '__name__', n.target)} is not an "
                                f"ai8x layer or element-wise op; the device cannot run it")
    return nodes


# --------------------------------------------------------------------------------------------
# example network (the golden AI85PoseLike test net)

class AI85PoseLike(nn.Module):
    """A 25k-parameter pose-like MAX78000 network (3x64x64 -> 17x16x16): BN and non-BN layers,
    max and average pooling, a 1x1 conv, a residual add and a wide (32-bit) 1x1 head.
    ``layer_kwargs`` (e.g. ``weight_bits=8, quantize_activation=True``) go to every layer."""

    def __init__(self, num_keypoints: int = 17, **layer_kwargs):
        super().__init__()
        kw = dict(bias=True, **layer_kwargs)
        self.conv1 = FusedConv2dBNReLU(3, 16, kernel_size=3, padding=1, **kw)
        self.conv2 = FusedMaxPoolConv2dBNReLU(16, 32, kernel_size=3, pool_size=2, pool_stride=2,
                                              padding=1, **kw)
        self.conv3 = FusedConv2dReLU(32, 32, kernel_size=3, padding=1, **kw)
        self.conv4 = FusedConv2dBNReLU(32, 32, kernel_size=1, padding=0, **kw)
        self.add = Add(device=layer_kwargs.get("device"))
        self.conv5 = FusedAvgPoolConv2dReLU(32, 32, kernel_size=3, pool_size=2, pool_stride=2,
                                            padding=1, **kw)
        self.head = Conv2d(32, num_keypoints, kernel_size=1, padding=0, wide=True, **kw)

    def forward(self, x):
        r = self.conv2(self.conv1(x))
        y = self.conv4(self.conv3(r))
        return self.head(self.conv5(self.add(r, y)))


def ai85poselike(**layer_kwargs) -> AI85PoseLike:
    return AI85PoseLike(**layer_kwargs)
