"""The ai8x layers: `QuantizationAwareModule` (pool, op, batch-norm, output shift, activation,
clamps in float, QAT and simulate mode), the convolutions, linear and pooling layers, the fused
names upstream models use, and the element-wise `Add` / `Sub`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .device import Ai8xRuleError, Device, _ste, _trunc, get_device, output_shift_of, quantize
from .rules import _check_common, _check_conv, _square


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
