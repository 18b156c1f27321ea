"""Student networks: small ImageNet backbones + an upsampling neck + a heatmap head at stride 4.

Every student has the same three named parts, so feature-distillation hooks can find them:
``backbone`` (stride 16 or 32 features), ``neck`` (upsampling back to stride 4) and ``head``
(one conv to K heatmaps). At a 256x192 input the output is K x 64 x 48, like HRNet's.

ImageNet weights are never downloaded: ``pretrained=True`` loads torchvision's file from the local
torch hub cache (``torch.hub.get_dir()/checkpoints``) when it is there, and otherwise warns and
starts from scratch.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from ..data.keypoints import NUM_COCO_KEYPOINTS


def conv_bn_relu(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def deconv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """A SimpleBaseline upsampling step: 4x4 transposed conv, stride 2 (exact x2), BN, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def hub_weights_path(weights: tvm.WeightsEnum) -> Path:
    """Where torchvision would cache ``weights`` (``<torch hub dir>/checkpoints/<file name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def load_cached_imagenet(model: nn.Module, weights: tvm.WeightsEnum) -> bool:
    """Load ``weights`` into the torchvision ``model`` from the local cache only; warn and return False if absent."""
    path = hub_weights_path(weights)
    if not path.is_file():
        warnings.warn(
            f"ImageNet weights not found: starting from scratch; to use ImageNet weights put "
            f"{path.name} in {path.parent} (download {weights.url} on a machine with internet)",
            stacklevel=3)
        return False
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return True


class PoseNet(nn.Module):
    """``head(neck(backbone(x)))``: heatmaps of shape (N, K, H/4, W/4)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))


def squeezenet_pose(num_joints: int = NUM_COCO_KEYPOINTS, pretrained: bool = False,
                    neck_channels: tuple[int, int, int] = (128, 64, 32)) -> PoseNet:
    """SqueezePoseNet: ``squeezenet1_1().features`` (512 ch, stride 16) + a light neck + a 3x3 head.

    Neck: 1x1 conv 512 -> c0 at stride 16, then twice (bilinear x2, 3x3 conv) to stride 4. The
    stem conv gets ``padding=1`` (torchvision has 0) so the features are exactly input/16 for any
    input divisible by 16; the ImageNet weights still fit (padding has no parameters).
    """
    net = tvm.squeezenet1_1()
    if pretrained:
        load_cached_imagenet(net, tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1)
    backbone = net.features
    backbone[0].padding = (1, 1)
    c0, c1, c2 = neck_channels
    neck = nn.Sequential(
        conv_bn_relu(512, c0, k=1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), conv_bn_relu(c0, c1),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), conv_bn_relu(c1, c2))
    head = nn.Conv2d(c2, num_joints, 3, padding=1)
    return PoseNet(backbone, neck, head)


def mobilenetv3_pose(num_joints: int = NUM_COCO_KEYPOINTS, pretrained: bool = False,
                     output_stride: int = 32, deconv_channels: int = 64) -> PoseNet:
    """MobileNetV3-Small features + SimpleBaseline deconv neck + 1x1 head.

    ``output_stride=32`` keeps all features (576 ch) and uses 3 deconvs; ``16`` cuts after block 8
    (48 ch) and uses 2, which is lighter and keeps more spatial detail.
    """
    net = tvm.mobilenet_v3_small()
    if pretrained:
        load_cached_imagenet(net, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1)
    cuts = {32: (len(net.features), 576, 3), 16: (9, 48, 2)}
    if output_stride not in cuts:
        raise ValueError(f"mobilenetv3_pose: output_stride must be 16 or 32, got {output_stride}")
    n_blocks, c_in, n_deconv = cuts[output_stride]
    backbone = net.features[:n_blocks]
    neck = nn.Sequential(*[deconv_bn_relu(c_in if i == 0 else deconv_channels, deconv_channels)
                           for i in range(n_deconv)])
    head = nn.Conv2d(deconv_channels, num_joints, 1)
    return PoseNet(backbone, neck, head)


STUDENTS = {"squeezenet": squeezenet_pose, "mobilenetv3": mobilenetv3_pose}


def build_student(name: str, num_joints: int = NUM_COCO_KEYPOINTS, pretrained: bool = False, **kw) -> PoseNet:
    """A student by name (``"squeezenet"``, ``"mobilenetv3"``); extra keywords go to its builder."""
    if name not in STUDENTS:
        raise KeyError(f"unknown student {name!r}; choose one of {sorted(STUDENTS)}")
    return STUDENTS[name](num_joints=num_joints, pretrained=pretrained, **kw)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def complexity(model: nn.Module, input_size: tuple[int, int] = (192, 256)) -> dict:
    """Parameters, MACs of one forward pass at ``input_size=(w, h)`` (calflops), and the int8 weight size.

    ``int8_kb`` assumes one byte per parameter (1 kB = 1000 bytes), the MAX78000 weight format.
    """
    import warnings

    with warnings.catch_warnings():   # calflops imports tqdm.auto, which warns in a kernel without widgets
        warnings.filterwarnings("ignore", message="IProgress not found")
        from calflops import calculate_flops

    w, h = input_size
    was_training = model.training
    model.eval()
    try:
        _, macs, params = calculate_flops(model=model, input_shape=(1, 3, h, w), print_results=False,
                                          print_detailed=False, output_as_string=False)
    finally:
        model.train(was_training)
    params = int(params)
    return {"params": params, "macs": int(macs), "int8_kb": params / 1000}
