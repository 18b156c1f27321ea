"""Top-down pose students for the MAX78000, their QAT training and integer-simulate evaluation.

Two variants, ``tiny`` and ``small``, of one plain encoder-decoder built only from legal ai8x
layers: stride-1 3x3 convolutions with batch-norm (bias on) and ReLU, downsampling by max pools
fused into the next convolution, 3x3 stride-2 transposed convolutions to upsample, and a wide
(32-bit) 1x1 head without activation for the 17 heatmaps. The chain has no skip connections,
so every hidden layer feeds exactly one plain convolution (which `posekd_lib.mcu.pruning` relies on).

Input size (w, h) = (96, 128), the demo teacher's crop, chosen with `max78000.resource_report`:

- HWC input would need 128*96*4 = 49,152 B in one 32 KiB data-memory instance: does not fit
  (the report streams it, and a streamed layer may not have a bias on the MAX78000);
- CHW input (first layer only) keeps one channel per instance: 128*96 = 12,288 B: fits. A
  128x96 *output* would again need 49,152 B (HWC from layer 2 on), so the first layer pools
  (max 2x2) before its convolution and no later map is larger than 64x48 (12,288 B);
- 48x64 HWC input with stride-2 heatmaps also fits (and runs ~3x faster), but throws away half
  of the teacher's resolution: CHW at 96x128 is the simple fit.

Measured with ``resource_report(model, (3, 128, 96), data_format="CHW")`` and confirmed by
running the real izer (ai8x-synthesis, same weight bytes and cycle estimate; its computed output
equals the simulate-mode model's); ``benchmarks/bench_ai8x_students.py`` prints the table:

| variant | params | MACs | weight bytes | bias bytes | max data / instance | cycles | latency |
|---|---|---|---|---|---|---|---|
| tiny  | 168,081 | 34.9M | 166,864 (37.7 %) | 417 | 28,672 (ping-pong) | 181,381 | 3.63 ms |
| small | 265,233 | 49.5M | 263,632 (59.6 %) | 545 | 28,672 (ping-pong) | 196,933 | 3.94 ms |

Latency is set mostly by the 64x48 and 32x24 layers (cycles grow with output pixels x output
channels), weight memory by the 64-channel layers at 16x12 and 8x6: ``small`` adds width and
depth only there. All widths are <= 64 (one pass per layer).

Output: 17 heatmaps at (w/4, h/4) = 24x32, the teacher's heatmap size, so KD compares maps
cell by cell with no resizing (for another ``input_size`` the maps are input/4; a teacher map
of another size would be resized bilinearly to the student's, as `data.predict_topdown` does).

Inputs: the datasets give ImageNet-normalised images; `to_ai8x_range` maps them back to pixels
and onto the device's 8-bit input range [-1, 127/128] (``pixel/128 - 1``), and the device sees
these x 128, rounded and clamped to [-128, 127]. `heatmaps_float` undoes the wide head's
``2**-output_shift`` (QAT) and ``2**14`` (simulate) factors so losses and decoding see the
true heatmap scale in every mode.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..mcu import ai8x
from ..data.datasets import IMAGENET_MEAN, IMAGENET_STD

AI8X_STUDENT_INPUT = (96, 128)          # (w, h): the demo teacher's crop, CHW first layer
AI8X_STUDENT_HEATMAP = (24, 32)         # (w, h): the demo teacher's heatmaps (input / 4)
AI8X_DATA_FORMAT = "CHW"
STRIDE = 4                              # input / heatmap

# Layer chains: (name, kind, out_channels); kind "pool" = 2x2 max pool fused into a 3x3 conv,
# "conv" = 3x3 conv, "up" = 3x3 stride-2 transposed conv; all BN + ReLU. The wide 1x1 head follows.
VARIANTS = {
    "tiny": (("enc1", "pool", 16), ("enc2", "pool", 32), ("enc3", "pool", 48), ("enc3b", "conv", 48),
             ("enc4", "pool", 64), ("enc4b", "conv", 64), ("up3", "up", 48), ("dec3", "conv", 48),
             ("up2", "up", 32)),
    "small": (("enc1", "pool", 16), ("enc2", "pool", 32), ("enc3", "pool", 64), ("enc3b", "conv", 64),
              ("enc4", "pool", 64), ("enc4b", "conv", 64), ("enc4c", "conv", 64), ("up3", "up", 64),
              ("dec3", "conv", 64), ("up2", "up", 32)),
    # small + one more 64-channel conv at 1/16 and one after the first upsampling (1/8): the next
    # capacity step if small's curve still rises (337,360 weight bytes, 213,049 cycles = 4.26 ms;
    # docs/experiments.md, section 12)
    "medium": (("enc1", "pool", 16), ("enc2", "pool", 32), ("enc3", "pool", 64), ("enc3b", "conv", 64),
               ("enc4", "pool", 64), ("enc4b", "conv", 64), ("enc4c", "conv", 64), ("enc4d", "conv", 64),
               ("up3", "up", 64), ("dec3", "conv", 64), ("dec3b", "conv", 64), ("up2", "up", 32)),
}

DEFAULT_QAT_POLICY = {"start_epoch": 1, "weight_bits": 8}
# A mixed-precision example: 4-bit weights on the two widest encoder layers (half their weight
# bytes). Names are `named_modules()` names of an `ai85posenet` model (both variants have them).
QAT_POLICY_4BIT_EXAMPLE = {"start_epoch": 1, "weight_bits": 8,
                           "overrides": {"enc4": {"weight_bits": 4}, "enc4b": {"weight_bits": 4}}}

_KINDS = {"pool": ai8x.FusedMaxPoolConv2dBNReLU, "conv": ai8x.FusedConv2dBNReLU,
          "up": ai8x.FusedConvTranspose2dBNReLU}


class AI85PoseNet(nn.Module):
    """Plain encoder-decoder pose student (see the module docstring): the layers of ``spec``
    (``(name, kind, out_channels)``, kinds pool/conv/up) in order, then a wide 1x1 ``head``.
    `pruning` rebuilds it from a spec with fewer channels."""

    def __init__(self, spec, num_joints: int = 17, in_channels: int = 3, **layer_kw):
        super().__init__()
        self.spec = tuple((str(n), str(k), int(c)) for n, k, c in spec)
        kw = dict(bias=True, **layer_kw)
        c_in = in_channels
        for name, kind, c in self.spec:
            if kind not in _KINDS:
                raise ValueError(f"layer {name}: kind {kind!r} is not one of {sorted(_KINDS)}")
            extra = dict(pool_size=2, pool_stride=2, padding=1) if kind == "pool" else \
                dict(padding=1) if kind == "conv" else {}
            self.add_module(name, _KINDS[kind](c_in, c, 3, name=name, **extra, **kw))
            c_in = c
        self.head = ai8x.Conv2d(c_in, num_joints, 1, padding=0, wide=True, name="head", **kw)
        self.num_joints, self.layer_kw = num_joints, layer_kw

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x

    @property
    def stride(self) -> int:
        kinds = [k for _, k, _ in self.spec]
        return 2 ** (kinds.count("pool") - kinds.count("up"))


def ai85posenet(variant: str = "tiny", num_joints: int = 17, input_size=AI8X_STUDENT_INPUT,
                spec=None, **layer_kw) -> AI85PoseNet:
    """A MAX78000 pose student (``variant`` tiny or small, or an explicit layer ``spec``);
    ``input_size`` (w, h) must be a multiple of 16 (four 2x pools); heatmaps come out at
    input/4. ``layer_kw`` (e.g. ``device=``) go to every layer."""
    if spec is None:
        if variant not in VARIANTS:
            raise KeyError(f"unknown ai8x pose variant {variant!r}; choose one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
    w, h = input_size
    if w % 16 or h % 16:
        raise ValueError(f"input_size {input_size}: width and height must be multiples of 16")
    model = AI85PoseNet(spec, num_joints, **layer_kw)
    model.variant, model.input_size = variant, (int(w), int(h))
    return model


# --------------------------------------------------------------------------------------------
# Bottom-up students: whole 128x128 frames in, OpenPose-18 heatmaps + PAFs out at stride 8

#: (w, h) of the bottom-up student's input: a whole (letterboxed) camera frame, CHW first layer
#: (128 x 128 = 16,384 B per channel: one data-memory instance each).
BOTTOM_UP_INPUT = (128, 128)
#: Output channels: 19 heatmaps (18 OpenPose keypoints + background) and 38 PAF channels, in
#: ``codecs.PafCodec``'s order, from one wide head.
BOTTOM_UP_OUTPUTS = 19 + 38
#: Encoder-only chains (three fused 2x2 pools: stride 8, 16x16 maps) for the bottom-up student.
#: ``max78000.resource_report(m, (3, 128, 128), data_format="CHW")``: tiny 145,737 params,
#: 144,624 weight bytes (32.7 % of 442,368), 218,261 cycles (4.37 ms at 50 MHz); small 222,165
#: params, 220,656 B (49.9 %), 278,765 cycles (5.58 ms). The 64-channel 16x16 layers (4 and 5 of
#: them) give the receptive field that links a person's joints through the PAFs: 3x3 layers at
#: stride 8 add 16 input pixels each.
BOTTOM_UP_VARIANTS = {
    "tiny": (("enc1", "pool", 16), ("enc2", "pool", 32), ("enc3", "pool", 48), ("enc3b", "conv", 48),
             ("enc4", "conv", 64), ("enc4b", "conv", 64), ("enc4c", "conv", 64)),
    "small": (("enc1", "pool", 16), ("enc2", "pool", 32), ("enc2b", "conv", 32), ("enc3", "pool", 64),
              ("enc3b", "conv", 64), ("enc4", "conv", 64), ("enc4b", "conv", 64), ("enc4c", "conv", 64),
              ("enc4d", "conv", 64)),
}
#: Stride 4 (32x32 maps from 128x128): the tiny chain, then a 3x3 stride-2 transposed conv and a 3x3
#: conv. The decoder's ceiling (ground-truth maps decoded, whole validation frames) rises from AP
#: 0.475 at stride 8 to 0.685 (docs/experiments.md, issue 34). Resource report: 192,096 weight bytes,
#: 7.34 ms at 128x128.
BOTTOM_UP_VARIANTS["tiny_s4"] = BOTTOM_UP_VARIANTS["tiny"] + (("up4", "up", 48), ("dec4", "conv", 48))
#: The capacity candidate (issue 34: the heatmaps, not the PAFs, fail): the small encoder (one more
#: layer at 1/4 and 1/16, 64 channels from 1/16 on) and two 3x3 convs at stride 4. At 144x112:
#: 288,864 weight bytes (65 % of 442,368; tiny_s4: 192,096) and 471,445 cycles = 9.43 ms (7.22).
BOTTOM_UP_VARIANTS["small_s4_d2"] = BOTTOM_UP_VARIANTS["small"] + (("up4", "up", 48), ("dec4", "conv", 48),
                                                                     ("dec4b", "conv", 48))


def ai85bottomup(variant: str = "tiny", input_size=BOTTOM_UP_INPUT, **layer_kw) -> AI85PoseNet:
    """A bottom-up MAX78000 student: a whole frame in, ``BOTTOM_UP_OUTPUTS`` maps (heatmaps, then
    PAFs) out at input/``model.stride`` (8; 4 for ``tiny_s4``), from the legal layers of
    :class:`AI85PoseNet` (``variant``: :data:`BOTTOM_UP_VARIANTS`). Split its output with ``out[:, :19]``
    / ``out[:, 19:]``."""
    if variant not in BOTTOM_UP_VARIANTS:
        raise KeyError(f"unknown bottom-up ai8x variant {variant!r}; choose one of {sorted(BOTTOM_UP_VARIANTS)}")
    model = ai85posenet(variant, num_joints=BOTTOM_UP_OUTPUTS, input_size=input_size,
                        spec=BOTTOM_UP_VARIANTS[variant], **layer_kw)
    model.variant = f"bottom_up_{variant}"
    return model


def input_shape(model_or_size=AI8X_STUDENT_INPUT) -> tuple[int, int, int]:
    """(C, H, W) for `resource_report` / `network_yaml` from a model or an (w, h) size."""
    w, h = getattr(model_or_size, "input_size", model_or_size)
    return (3, int(h), int(w))


def head_layer(model: nn.Module) -> ai8x.QuantizationAwareModule:
    layers = ai8x.ai8x_layers(model)
    if not layers or not layers[-1][1].wide:
        raise ValueError("model's last ai8x layer is not a wide head")
    return layers[-1][1]


def heatmaps_float(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's heatmaps at their true scale in float, QAT and simulate mode, in the dtype of
    `x` (simulate computes its integers in float64; the heatmaps they stand for are floats)."""
    y = ai8x.wide_output_to_float(model(x), head_layer(model))
    return y.to(x.dtype) if x.is_floating_point() else y


_MEAN = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).reshape(1, 3, 1, 1)
_STD = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).reshape(1, 3, 1, 1)


def to_ai8x_range(image: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (N, 3, H, W) -> the device's input range: ``round(pixel - 128) / 128``
    clamped to [-1, 127/128] (multiples of 1/128, exactly what the chip sees /128)."""
    mean, std = _MEAN.to(image), _STD.to(image)
    pixel = (image * std + mean) * 255.0
    return torch.round(pixel - 128.0).clamp(-128, 127) / 128.0


class HeatmapView(nn.Module):
    """Wraps an ai8x student so it takes the datasets' ImageNet-normalised images and returns
    float heatmaps: float/QAT feed ``to_ai8x_range(x)``, simulate feeds it x 128 (integers
    in [-128, 127]) as the device does. Use it for `fit` and `evaluation.evaluate_topdown`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = to_ai8x_range(image)
        if head_layer(self.model).device.simulate:
            x = x * 128.0
        return heatmaps_float(self.model, x)


# --------------------------------------------------------------------------------------------
# QAT training and simulate evaluation

def train_ai8x_student(model: nn.Module, train_loader, *, mode: str | None = None,
                       qat_policy=DEFAULT_QAT_POLICY, loss_fn: Callable | None = None,
                       float_steps: int = 100, qat_steps: int = 50, out_dir: Path | None = None,
                       run_name: str = "ai8x", lr: float = 1e-3, qat_lr: float | None = None,
                       wrap: Callable[[nn.Module], nn.Module] | None = None, **fit_kw) -> dict:
    """Float training, then QAT: ``fit`` for `float_steps` (run ``<run_name>_float``),
    `ai8x.initiate_qat` (BN fusion, bit widths), a new optimizer, and ``fit`` for `qat_steps`
    (run ``<run_name>_qat``, lr `qat_lr`, default lr/10). The model is trained through a
    `HeatmapView`, so `loss_fn(outputs, batch)` (default JointsMSE) sees ImageNet-normalised
    inputs mapped to the device range and heatmaps with the wide head's shift divided out.
    ``wrap(view)`` returns the module ``fit`` trains instead of the view, e.g. a distiller built
    around it (its own ``loss``; one distiller for both phases, so its KD schedule runs over float
    + QAT steps).
    The policy's ``start_epoch`` is not used: QAT starts after `float_steps`. ``mode``
    (quick/workshop/full) only picks the default ``out_dir``; ``fit_kw`` go to both ``fit``
    calls (both runs resume or return their cached result as ``fit`` does). Returns
    ``{'float': History, 'qat': History, 'float_model': the float phase's network (a copy, eval
    mode)}``; `model` ends in QAT mode (eval it or export it)."""
    from .. import config
    from ..train import fit

    if out_dir is None:
        out_dir = config.run_paths(mode).checkpoints
    trainee = HeatmapView(model)
    if wrap is not None:
        trainee = wrap(trainee)
    common = dict(loss_fn=loss_fn, out_dir=out_dir, **fit_kw)
    hist_float = fit(trainee, train_loader, max_steps=float_steps, lr=lr, run_name=f"{run_name}_float",
                     **common) if float_steps > 0 else None
    float_model = copy.deepcopy(model).eval()
    ai8x.initiate_qat(model, qat_policy)
    opt = torch.optim.Adam(trainee.parameters(), lr=qat_lr if qat_lr is not None else lr / 10)
    hist_qat = fit(trainee, train_loader, max_steps=qat_steps, optimizer=opt, run_name=f"{run_name}_qat",
                   **common)
    return {"float": hist_float, "qat": hist_qat, "float_model": float_model}


def simulate_copy(model: nn.Module, arch: str = "ai85posenet") -> nn.Module:
    """An integer (simulate-mode) copy of a QAT `model`: lean checkpoint -> `export.quantize_checkpoint`
    (izer's weights) -> loaded into a deep copy switched to ``Device(simulate=True)``."""
    from ..mcu import export

    if not any(int(m.weight_bits.item()) for _, m in ai8x.ai8x_layers(model)):
        raise ValueError("simulate_copy needs a QAT model (call ai8x.initiate_qat / train_ai8x_student)")
    dev = head_layer(model).device
    q = export.quantize_checkpoint(export.lean_checkpoint(model, 0, arch), device=dev.device)
    sim = copy.deepcopy(model).cpu()
    ai8x.apply_device(sim, ai8x.Device(dev.device, simulate=True, round_avg=dev.round_avg))
    sim.load_state_dict(q["state_dict"])
    return sim.eval()


def evaluate_ai8x(model: nn.Module, split, input_size=AI8X_STUDENT_INPUT, heatmap_size=None, *,
                  simulate: bool = True, sigma: float = 2.0, **eval_kw) -> dict:
    """COCO keypoint metrics of an ai8x student via `evaluation.evaluate_topdown`: in integer
    simulate mode (``simulate=True``, needs a QAT model; see `simulate_copy`) or as it is.
    ``heatmap_size`` defaults to input/4."""
    from ..evaluation.coco import evaluate_topdown

    net = simulate_copy(model) if simulate else model
    if heatmap_size is None:
        heatmap_size = (input_size[0] // STRIDE, input_size[1] // STRIDE)
    eval_kw.setdefault("device", next(net.parameters()).device)
    return evaluate_topdown(HeatmapView(net), split, input_size, heatmap_size, sigma, **eval_kw)
