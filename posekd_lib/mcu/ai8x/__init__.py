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

The package, one job a module: `device` (the chip and the shared quantizers), `rules` (one
layer's hardware rules), `layers`, `model` (whole-model operations and the QAT policy), `trace`
(the dataflow for the network YAML) and `example` (the golden test net). Import from here.
"""
from .device import (
    ACTIVATIONS, POOLINGS, BATCHNORMS, Ai8xRuleError, Device, set_device, get_device, quantize,
    abs_quantile, output_shift_of,
)
from .layers import (
    QuantizationAwareModule, Conv2d, ConvTranspose2d, Linear, FusedConv2dReLU, FusedConv2dAbs,
    FusedConv2dBN, FusedConv2dBNReLU, FusedConv2dBNAbs, FusedMaxPoolConv2d,
    FusedMaxPoolConv2dReLU, FusedMaxPoolConv2dAbs, FusedMaxPoolConv2dBN,
    FusedMaxPoolConv2dBNReLU, FusedMaxPoolConv2dBNAbs, FusedAvgPoolConv2d,
    FusedAvgPoolConv2dReLU, FusedAvgPoolConv2dAbs, FusedAvgPoolConv2dBNReLU,
    FusedAvgPoolConv2dBNAbs, FusedConvTranspose2dReLU, FusedConvTranspose2dAbs,
    FusedConvTranspose2dBNReLU, FusedMaxPoolConvTranspose2d, FusedMaxPoolConvTranspose2dReLU,
    FusedMaxPoolConvTranspose2dBNReLU, FusedAvgPoolConvTranspose2d,
    FusedAvgPoolConvTranspose2dReLU, FusedAvgPoolConvTranspose2dBNReLU, FusedLinearReLU,
    FusedLinearAbs, MaxPool2d, AvgPool2d, Eltwise, Add, Sub,
)
from .model import (
    apply_device, ai8x_layers, wide_output_to_float, check_model, fuse_bn_layers,
    load_qat_policy, initiate_qat, qat_should_start,
)
from .trace import (
    TracedNode, trace_layers,
)
from .example import (
    AI85PoseLike, ai85poselike,
)

__all__ = [
    'ACTIVATIONS', 'POOLINGS', 'BATCHNORMS', 'Ai8xRuleError', 'Device', 'set_device',
    'get_device', 'quantize', 'abs_quantile', 'output_shift_of', 'QuantizationAwareModule',
    'Conv2d', 'ConvTranspose2d', 'Linear', 'FusedConv2dReLU', 'FusedConv2dAbs', 'FusedConv2dBN',
    'FusedConv2dBNReLU', 'FusedConv2dBNAbs', 'FusedMaxPoolConv2d', 'FusedMaxPoolConv2dReLU',
    'FusedMaxPoolConv2dAbs', 'FusedMaxPoolConv2dBN', 'FusedMaxPoolConv2dBNReLU',
    'FusedMaxPoolConv2dBNAbs', 'FusedAvgPoolConv2d', 'FusedAvgPoolConv2dReLU',
    'FusedAvgPoolConv2dAbs', 'FusedAvgPoolConv2dBNReLU', 'FusedAvgPoolConv2dBNAbs',
    'FusedConvTranspose2dReLU', 'FusedConvTranspose2dAbs', 'FusedConvTranspose2dBNReLU',
    'FusedMaxPoolConvTranspose2d', 'FusedMaxPoolConvTranspose2dReLU',
    'FusedMaxPoolConvTranspose2dBNReLU', 'FusedAvgPoolConvTranspose2d',
    'FusedAvgPoolConvTranspose2dReLU', 'FusedAvgPoolConvTranspose2dBNReLU', 'FusedLinearReLU',
    'FusedLinearAbs', 'MaxPool2d', 'AvgPool2d', 'Eltwise', 'Add', 'Sub', 'apply_device',
    'ai8x_layers', 'wide_output_to_float', 'check_model', 'fuse_bn_layers', 'load_qat_policy',
    'initiate_qat', 'qat_should_start', 'TracedNode', 'trace_layers', 'AI85PoseLike',
    'ai85poselike',
]
