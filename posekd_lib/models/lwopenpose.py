"""Lightweight OpenPose (``PoseEstimationWithMobileNet``): the bottom-up teacher, its checkpoint and input.

The network of Osokin, "Real-time 2D Multi-Person Pose Estimation on CPU: Lightweight OpenPose"
(2018), written so that the officially released checkpoint loads with ``strict=True``: every
module sits at the attribute path and ``nn.Sequential`` index the official code gives it, so the
250 state-dict keys (one refinement stage) are the official ones (``model.7.0.weight``,
``cpm.trunk.0.2.weight``, ``refinement_stages.0.trunk.4.trunk.1.1.running_var``, ...).

Data flow, all at stride 8 of the input::

    image (3, H, W) -> model (MobileNet-v1 trunk, 512 ch) -> cpm (128 ch features)
      -> initial_stage -> heatmaps (19), pafs (38)
      -> refinement_stages[i](cat(features, heatmaps, pafs) = 185 ch) -> heatmaps, pafs

``forward`` returns the flat list ``[hm_0, paf_0, hm_1, paf_1, ...]`` of every stage, as the
official code does (training supervises all of them; inference uses the last two). The
channel meaning (18 OpenPose keypoints + background, 19 limbs x (x, y)) is defined once in
:mod:`posekd_lib.data.keypoints` and encoded/decoded by :class:`posekd_lib.data.codecs.PafCodec`.

Preprocessing is the official one: a **BGR** uint8 image, ``(img - 128) / 256``, resized to a
base height (368 for the published numbers) and padded to a multiple of the stride with 0 (after
normalisation, so the border reads as mid-grey), the padding split evenly between both sides.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.keypoints import NUM_OPENPOSE_HEATMAPS, NUM_OPENPOSE_PAFS

STRIDE = 8
IMG_MEAN = 128.0
IMG_SCALE = 1.0 / 256
PAD_VALUE = 0.0              # in normalised units, i.e. pixel value 128
BASE_HEIGHT = 368            # the official evaluation / demo input height
CHECKPOINT_NAME = "checkpoint_iter_370000.pth"
CHECKPOINT_HINT = (
    f"The released COCO checkpoint ({CHECKPOINT_NAME}, 1 refinement stage) is linked from the README of "
    "github.com/Daniil-Osokin/lightweight-human-pose-estimation.pytorch. Download it by hand and pass "
    "its path; nothing is downloaded automatically."
)


# --------------------------------------------------------------------------- building blocks
# Each returns an nn.Sequential so that the parameter names carry the official indices
# (conv at 0, BatchNorm at 1, ...).
def conv(in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, bn: bool = True,
         dilation: int = 1, stride: int = 1, relu: bool = True, bias: bool = True) -> nn.Sequential:
    """Conv2d [+ BatchNorm] [+ ReLU]."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_dw(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, padding: int = 1) -> nn.Sequential:
    """MobileNet-v1 depthwise-separable block: 3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, padding, dilation=dilation, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


def conv_dw_no_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    """Depthwise-separable block without BatchNorm and with ELU (the CPM trunk)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False), nn.ELU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.ELU(inplace=True),
    )


def _head(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    """Two 1x1 convs (ReLU between, none after): the heatmap / PAF output of a stage."""
    return nn.Sequential(conv(in_ch, mid_ch, 1, 0, bn=False), conv(mid_ch, out_ch, 1, 0, bn=False, relu=False))


def mobilenet_trunk() -> nn.Sequential:
    """MobileNet-v1 up to conv5_5 at stride 8 (3 stride-2 steps instead of 5; conv4_2 ... conv5_5
    at full stride-8 resolution, the second of them dilated to widen the receptive field)."""
    return nn.Sequential(
        conv(3, 32, stride=2, bias=False),
        conv_dw(32, 64),
        conv_dw(64, 128, stride=2),
        conv_dw(128, 128),
        conv_dw(128, 256, stride=2),
        conv_dw(256, 256),
        conv_dw(256, 512),                            # conv4_2
        conv_dw(512, 512, dilation=2, padding=2),
        conv_dw(512, 512),
        conv_dw(512, 512),
        conv_dw(512, 512),
        conv_dw(512, 512),                            # conv5_5
    )


class Cpm(nn.Module):
    """Convolutional pose machine adapter: 1x1 ``align`` to 128 ch, a residual trunk of three ELU
    depthwise blocks, then a 3x3 ``conv``. Its output is the feature map every stage reads."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.align = conv(in_channels, out_channels, 1, 0, bn=False)
        self.trunk = nn.Sequential(*(conv_dw_no_bn(out_channels, out_channels) for _ in range(3)))
        self.conv = conv(out_channels, out_channels, bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.align(x)
        return self.conv(x + self.trunk(x))


class InitialStage(nn.Module):
    """Three 3x3 convs shared by two heads (512-wide 1x1 convs) for heatmaps and PAFs."""

    def __init__(self, num_channels: int, num_heatmaps: int, num_pafs: int):
        super().__init__()
        self.trunk = nn.Sequential(*(conv(num_channels, num_channels, bn=False) for _ in range(3)))
        self.heatmaps = _head(num_channels, 512, num_heatmaps)
        self.pafs = _head(num_channels, 512, num_pafs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.trunk(x)
        return [self.heatmaps(f), self.pafs(f)]


class RefinementStageBlock(nn.Module):
    """1x1 ``initial`` conv, then a residual pair of 3x3 conv+BN+ReLU (the second dilated by 2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.initial = conv(in_channels, out_channels, 1, 0, bn=False)
        self.trunk = nn.Sequential(conv(out_channels, out_channels),
                                   conv(out_channels, out_channels, dilation=2, padding=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        return x + self.trunk(x)


class RefinementStage(nn.Module):
    """Five refinement blocks on ``cat(features, heatmaps, pafs)``, then 128-wide 1x1 heads."""

    def __init__(self, in_channels: int, out_channels: int, num_heatmaps: int, num_pafs: int):
        super().__init__()
        self.trunk = nn.Sequential(RefinementStageBlock(in_channels, out_channels),
                                   *(RefinementStageBlock(out_channels, out_channels) for _ in range(4)))
        self.heatmaps = _head(out_channels, out_channels, num_heatmaps)
        self.pafs = _head(out_channels, out_channels, num_pafs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.trunk(x)
        return [self.heatmaps(f), self.pafs(f)]


class PoseEstimationWithMobileNet(nn.Module):
    """Lightweight OpenPose. ``forward(x)`` with ``x`` ``(N, 3, H, W)`` (H, W multiples of 8) returns
    ``[heatmaps, pafs] * (1 + num_refinement_stages)``, each ``(N, 19 | 38, H / 8, W / 8)``.

    One refinement stage is the released model (4,091,698 parameters); the official recipe trains
    its last step with three and drops two afterwards.
    """

    def __init__(self, num_refinement_stages: int = 1, num_channels: int = 128,
                 num_heatmaps: int = NUM_OPENPOSE_HEATMAPS, num_pafs: int = NUM_OPENPOSE_PAFS):
        super().__init__()
        self.model = mobilenet_trunk()
        self.cpm = Cpm(512, num_channels)
        self.initial_stage = InitialStage(num_channels, num_heatmaps, num_pafs)
        self.refinement_stages = nn.ModuleList(
            RefinementStage(num_channels + num_heatmaps + num_pafs, num_channels, num_heatmaps, num_pafs)
            for _ in range(num_refinement_stages))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.cpm(self.model(x))
        outputs = self.initial_stage(features)
        for stage in self.refinement_stages:
            outputs.extend(stage(torch.cat([features, outputs[-2], outputs[-1]], dim=1)))
        return outputs


# --------------------------------------------------------------------------- checkpoint
def _refinement_stages_in(state: Mapping) -> int:
    """How many refinement stages a state dict holds (from its ``refinement_stages.<i>.`` keys)."""
    idx = {int(k.split(".")[1]) for k in state if k.startswith("refinement_stages.") and k.split(".")[1].isdigit()}
    return max(idx) + 1 if idx else 0


def load_lwopenpose_checkpoint(path_or_state_dict, num_refinement_stages: int = 1,
                               device="cpu") -> PoseEstimationWithMobileNet:
    """A :class:`PoseEstimationWithMobileNet` with the checkpoint's weights loaded strictly, in eval
    mode on ``device``.

    Accepts a file path or a dict: the official ``{"state_dict": ...}`` wrapping (training
    checkpoints of the official code also hold ``optimizer`` / ``scheduler`` / ``iter``), a
    ``{"model": ...}`` wrapping, or a bare state dict; a ``module.`` prefix (DataParallel) is
    stripped and fp16 / bf16 tensors become float32 (``hrnet_pose.checkpoint.read_state_dict``, shared
    with the HRNet loader).

    The released ``checkpoint_iter_370000.pth`` holds three refinement stages, while upstream's demo
    and validation build a one-refinement model and load it non-strictly, so its published AP is the
    output of the initial stage and the *first* refinement stage. The same happens here with the
    defaults: a checkpoint with more refinement stages than ``num_refinement_stages`` loads its first
    ones, with a warning naming the stored stages left unused. Anything else — a missing key (except
    the BatchNorm counters old checkpoints lack), another unexpected key, a wrong shape, fewer stages
    than asked — raises :class:`hrnet_pose.checkpoint.CheckpointMismatchError` naming the file and the
    first keys of each kind, and the number of refinement stages the checkpoint holds when it differs.
    """
    import warnings

    from hrnet_pose.checkpoint import (CheckpointMismatchError, _first, compare_state_dicts, read_state_dict,
                                       with_bn_counters)

    if not isinstance(path_or_state_dict, Mapping):
        path = Path(path_or_state_dict).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Lightweight OpenPose checkpoint not found: {path}. {CHECKPOINT_HINT}")
        path_or_state_dict = os.fspath(path)
    state, source = read_state_dict(path_or_state_dict)
    model = PoseEstimationWithMobileNet(num_refinement_stages=num_refinement_stages)
    expected = model.state_dict()
    missing, unexpected, wrong = compare_state_dicts(expected, state)
    found = _refinement_stages_in(state)
    unused = [k for k in unexpected if k.startswith("refinement_stages.")
              and int(k.split(".")[1]) >= num_refinement_stages]
    if found > num_refinement_stages and len(unused) == len(unexpected) and not (missing or wrong):
        warnings.warn(f"{source} holds {found} refinement stages; the model uses the first "
                      f"{num_refinement_stages} (as upstream's demo and validation do), so stored stage(s) "
                      f"{list(range(num_refinement_stages, found))} ({len(unused)} entries) are left unused",
                      stacklevel=2)
        dropped = set(unused)
        state = {k: v for k, v in state.items() if k not in dropped}
        unexpected = []
    if missing or unexpected or wrong:
        lines = [f"{source} does not match PoseEstimationWithMobileNet(num_refinement_stages="
                 f"{num_refinement_stages}) ({len(state)} entries in the checkpoint, {len(expected)} in the model):"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                lines.append(f"  {len(items)} {label}: {_first(items)}")
        if found != num_refinement_stages:
            lines.append(f"  The checkpoint has {found} refinement stage(s): pass num_refinement_stages={found}.")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(with_bn_counters(expected, state), strict=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------- preprocessing
def normalize(img, mean: float = IMG_MEAN, scale: float = IMG_SCALE) -> np.ndarray:
    """uint8 image ``(H, W, 3)`` -> float32 ``(img - 128) / 256`` in [-0.5, 0.496] (channels untouched)."""
    return (np.asarray(img, dtype=np.float32) - np.float32(mean)) * np.float32(scale)


def pad_to_stride(img: np.ndarray, stride: int = STRIDE, pad_value: float = PAD_VALUE,
                  min_size: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pad ``(H, W, C)`` to multiples of ``stride`` (and at least ``min_size`` = ``(h, w)``) with ``pad_value``.

    The padding is split between both sides, the odd pixel going to the bottom / right, as the
    official ``pad_width``. Returns the padded image and ``(top, left, bottom, right)``; a map
    coordinate ``x`` of the padded input is ``x - left`` in the unpadded one.
    """
    img = np.asarray(img)
    if img.ndim != 3:
        raise ValueError(f"pad_to_stride expects an (H, W, C) image, got shape {img.shape}")
    h, w = img.shape[:2]
    th = math.ceil(max(h, min_size[0]) / stride) * stride
    tw = math.ceil(max(w, min_size[1]) / stride) * stride
    top, left = (th - h) // 2, (tw - w) // 2
    pad = (top, left, th - h - top, tw - w - left)
    out = np.full((th, tw, img.shape[2]), pad_value, dtype=img.dtype)
    out[top:top + h, left:left + w] = img
    return out, pad


def preprocess(img, base_height: int | None = BASE_HEIGHT, channel_order: str = "bgr",
               stride: int = STRIDE) -> tuple[torch.Tensor, float, tuple[int, int, int, int]]:
    """uint8 ``(H, W, 3)`` image -> ``(input (1, 3, H', W') float32, scale, pad)``, the official way.

    ``channel_order`` says what ``img`` is: the network was trained on cv2's BGR, so an RGB image
    (what :func:`posekd_lib.data.images.read_rgb` returns) is flipped first. With ``base_height`` the
    image is resized (bilinear) by ``scale = base_height / H``; then normalised and padded to a
    multiple of ``stride``, at least ``base_height`` high and wide (the official ``infer_fast``).
    A point at input pixel ``(x, y)`` of the network input is ``((x - pad[1]) / scale,
    (y - pad[0]) / scale)`` in the original image.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"preprocess expects an (H, W, 3) image, got shape {img.shape}")
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    if channel_order == "rgb":
        img = img[..., ::-1]
    scale = 1.0
    if base_height is not None:
        import cv2

        scale = base_height / img.shape[0]
        img = cv2.resize(np.ascontiguousarray(img), (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    x = normalize(img)
    side = base_height or 0
    x, pad = pad_to_stride(x, stride, PAD_VALUE, min_size=(side, max(side, x.shape[1])))
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], scale, pad
