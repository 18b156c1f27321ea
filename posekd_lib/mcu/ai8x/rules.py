"""The hardware rules of one ai8x layer, checked when it is built (`Ai8xRuleError` names the layer)."""
from __future__ import annotations

from .device import ACTIVATIONS, BATCHNORMS, POOLINGS, Ai8xRuleError, Device


def _square(v, what: str, where: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise Ai8xRuleError(f"{where}: {what} must be square, got {tuple(v)}")
        v = v[0]
    return int(v)


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
