"""HRNet for top-down pose estimation (pose_hrnet), written to be read.

The network keeps a high-resolution branch alive from start to end and adds lower-resolution
branches stage by stage; inside every stage, HighResolutionModules run residual blocks on each
branch and then exchange information between all branches (SUM fusion: 1×1 conv + nearest
upsampling from lower resolutions, chains of strided 3×3 convs from higher ones). The heatmaps
come from a 1×1 conv on the highest-resolution branch (stride 4).

Module names, nesting and registration order reproduce the official implementation, so the
``state_dict`` keys are identical (1754 entries for the paper configs) and the released
checkpoints load with ``strict=True``:

    conv1 bn1 conv2 bn2                 stem: two stride-2 3×3 convs (1/4 resolution)
    layer1.{0..3}                       Bottleneck blocks
    transition1  stage2                 2 branches, 1 module
    transition2  stage3                 3 branches, 4 modules
    transition3  stage4                 4 branches, 3 modules (the last fuses into branch 0 only)
    final_layer                         conv → NUM_JOINTS heatmaps

``MODEL.EXTRA.STEM_WIDTH`` and ``MODEL.EXTRA.STAGE1`` (``NUM_CHANNELS``/``NUM_BLOCKS`` of the
Bottleneck layer) are optional extras for small demo teachers; left out, they take the fixed
official values (64 and 64×4 = 256 channels, 4 blocks) and the keys do not change.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

BN_MOMENTUM = 0.1
OFFICIAL_STEM_WIDTH = 64
OFFICIAL_STAGE1 = {"NUM_CHANNELS": [64], "NUM_BLOCKS": [4]}


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN, the projection used on residual shortcuts."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
    )


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual shortcut (``expansion`` 1)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3, 1×1 expand (×4) with a residual shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def residual_layer(block: type[nn.Module], inplanes: int, planes: int, num_blocks: int,
                   stride: int = 1) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first projects the shortcut when the shape changes."""
    out_ch = planes * block.expansion
    downsample = conv_bn(inplanes, out_ch, 1, stride) if stride != 1 or inplanes != out_ch else None
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out_ch, planes) for _ in range(num_blocks - 1)]
    return nn.Sequential(*layers)


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
                         nn.ReLU(inplace=True))


def transition_layer(prev_channels: Sequence[int], channels: Sequence[int]) -> nn.ModuleList:
    """Map the previous stage's branches to the next stage's.

    Existing branches get a 3×3 conv only when their width changes (``None`` otherwise); each new
    branch is a chain of stride-2 3×3 convs from the previous lowest-resolution branch, nested
    one Sequential deeper (hence keys like ``transition1.1.0.0.weight``).
    """
    layers: list[nn.Module | None] = []
    for i, ch in enumerate(channels):
        if i < len(prev_channels):
            layers.append(conv_bn_relu(prev_channels[i], ch, 1) if ch != prev_channels[i] else None)
        else:
            steps = i + 1 - len(prev_channels)
            src = prev_channels[-1]
            layers.append(nn.Sequential(*[
                conv_bn_relu(src, ch if k == steps - 1 else src, 2) for k in range(steps)]))
    return nn.ModuleList(layers)


def fuse_path(in_ch: int, out_ch: int, src: int, dst: int) -> nn.Module | None:
    """Path carrying branch ``src`` to branch ``dst``'s resolution and width (``None`` for itself).

    Lower resolution (src > dst): 1×1 conv + BN + nearest upsampling by 2**(src-dst).
    Higher resolution (src < dst): (dst-src) stride-2 3×3 convs; only the last changes the width
    and has no ReLU, since the ReLU comes after the sum.
    """
    if src == dst:
        return None
    if src > dst:
        return nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
            nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest"),
        )
    steps = dst - src
    return nn.Sequential(*[
        conv_bn(in_ch, out_ch, 3, 2) if k == steps - 1 else conv_bn_relu(in_ch, in_ch, 2)
        for k in range(steps)])


class HighResolutionModule(nn.Module):
    """Parallel residual branches followed by all-to-all SUM fusion.

    With ``multi_scale_output=False`` only the highest-resolution output is fused (the last
    module of the last stage), so ``fuse_layers`` has a single entry.
    """

    def __init__(self, num_branches: int, block: type[nn.Module], num_blocks: Sequence[int],
                 in_channels: Sequence[int], num_channels: Sequence[int], fuse_method: str = "SUM",
                 multi_scale_output: bool = True):
        super().__init__()
        for name, seq in (("NUM_BLOCKS", num_blocks), ("NUM_CHANNELS", num_channels),
                          ("input channels", in_channels)):
            if len(seq) != num_branches:
                raise ValueError(f"NUM_BRANCHES={num_branches} but {name} has {len(seq)} entries: {list(seq)}")
        if fuse_method != "SUM":
            raise ValueError(f"FUSE_METHOD {fuse_method!r} is not supported (the official code only has SUM)")
        self.num_branches = num_branches
        self.fuse_method = fuse_method
        self.multi_scale_output = multi_scale_output
        self.branches = nn.ModuleList([
            residual_layer(block, in_channels[b], num_channels[b], num_blocks[b]) for b in range(num_branches)])
        self.out_channels = [c * block.expansion for c in num_channels]
        if num_branches == 1:
            self.fuse_layers = None
        else:
            num_out = num_branches if multi_scale_output else 1
            self.fuse_layers = nn.ModuleList([
                nn.ModuleList([fuse_path(self.out_channels[j], self.out_channels[i], j, i)
                               for j in range(num_branches)])
                for i in range(num_out)])
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for paths in self.fuse_layers:
            y = None
            for path, x in zip(paths, xs):
                term = x if path is None else path(x)
                y = term if y is None else y + term
            fused.append(self.relu(y))
        return fused


def _stage_cfg(extra: Mapping, name: str) -> Mapping:
    try:
        stage = extra[name]
    except KeyError:
        raise KeyError(f"MODEL.EXTRA.{name} is missing from the config") from None
    for key in ("NUM_MODULES", "NUM_BRANCHES", "BLOCK", "NUM_BLOCKS", "NUM_CHANNELS"):
        if key not in stage:
            raise KeyError(f"MODEL.EXTRA.{name}.{key} is missing from the config")
    if stage["BLOCK"] not in BLOCKS:
        raise ValueError(f"MODEL.EXTRA.{name}.BLOCK={stage['BLOCK']!r}; expected one of {sorted(BLOCKS)}")
    return stage


def make_stage(stage: Mapping, in_channels: Sequence[int],
               multi_scale_output: bool = True) -> tuple[nn.Sequential, list[int]]:
    """``NUM_MODULES`` HighResolutionModules in a Sequential, and the stage's output widths."""
    block = BLOCKS[stage["BLOCK"]]
    modules = []
    channels = list(in_channels)
    for m in range(stage["NUM_MODULES"]):
        last = m == stage["NUM_MODULES"] - 1
        module = HighResolutionModule(
            stage["NUM_BRANCHES"], block, stage["NUM_BLOCKS"], channels, stage["NUM_CHANNELS"],
            stage.get("FUSE_METHOD", "SUM"), multi_scale_output or not last)
        modules.append(module)
        channels = module.out_channels
    return nn.Sequential(*modules), channels


class PoseHighResolutionNet(nn.Module):
    """pose_hrnet: image (N,3,H,W) → heatmaps (N, NUM_JOINTS, H/4, W/4)."""

    def __init__(self, cfg: Mapping, **kwargs):
        super().__init__()
        model_cfg = cfg["MODEL"]
        extra = model_cfg["EXTRA"]
        #: (w, h) of the person crop the config trains and tests at (None when the config omits it)
        self.image_size = tuple(int(v) for v in model_cfg["IMAGE_SIZE"]) if "IMAGE_SIZE" in model_cfg else None
        stem = int(extra.get("STEM_WIDTH", OFFICIAL_STEM_WIDTH))
        stage1 = {**OFFICIAL_STAGE1, **extra.get("STAGE1", {})}
        self.stage2_cfg = _stage_cfg(extra, "STAGE2")
        self.stage3_cfg = _stage_cfg(extra, "STAGE3")
        self.stage4_cfg = _stage_cfg(extra, "STAGE4")

        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = residual_layer(Bottleneck, stem, stage1["NUM_CHANNELS"][0], stage1["NUM_BLOCKS"][0])
        channels = [stage1["NUM_CHANNELS"][0] * Bottleneck.expansion]

        for n, stage in ((2, self.stage2_cfg), (3, self.stage3_cfg), (4, self.stage4_cfg)):
            widths = [c * BLOCKS[stage["BLOCK"]].expansion for c in stage["NUM_CHANNELS"]]
            setattr(self, f"transition{n - 1}", transition_layer(channels, widths))
            module, channels = make_stage(stage, widths, multi_scale_output=n < 4)
            setattr(self, f"stage{n}", module)

        k = extra.get("FINAL_CONV_KERNEL", 1)
        self.final_layer = nn.Conv2d(channels[0], model_cfg["NUM_JOINTS"], kernel_size=k, stride=1,
                                     padding=1 if k == 3 else 0)
        self.pretrained_layers = list(extra.get("PRETRAINED_LAYERS", []))

    @staticmethod
    def _transit(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs of the next stage: existing branches (optionally re-widthed), new ones from the lowest."""
        out = []
        for i, layer in enumerate(transition):
            x = xs[i] if i < len(xs) else xs[-1]
            out.append(x if layer is None else layer(x))
        return out

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Every intermediate output by name: ``stem``, ``layer1``, ``stage2..4`` (lists, high
        resolution first) and ``heatmaps`` — the hooks a feature-distillation loss needs."""
        feats: dict = {}
        x = self.relu(self.bn1(self.conv1(x)))
        feats["stem"] = x = self.relu(self.bn2(self.conv2(x)))
        feats["layer1"] = x = self.layer1(x)
        ys = [x]
        for n in (2, 3, 4):
            ys = getattr(self, f"stage{n}")(self._transit(getattr(self, f"transition{n - 1}"), ys))
            feats[f"stage{n}"] = ys
        feats["heatmaps"] = self.final_layer(ys[0])
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"HRNet expects an (N,3,H,W) batch with H and W multiples of 32, got {tuple(x.shape)}")
        return self.forward_features(x)["heatmaps"]

    def init_weights(self) -> None:
        """The official training init: convs ~ N(0, 0.001²) with zero bias, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def check_config(cfg: Mapping) -> None:
    """Reject configs whose sizes the network cannot honour, naming the offending keys."""
    model_cfg = cfg["MODEL"]
    image_wh = list(model_cfg.get("IMAGE_SIZE", []))
    heatmap_wh = list(model_cfg.get("HEATMAP_SIZE", []))
    if len(image_wh) != 2 or any(int(s) % 32 for s in image_wh):
        raise ValueError(f"MODEL.IMAGE_SIZE must be [w, h] with multiples of 32, got {image_wh}")
    if heatmap_wh and heatmap_wh != [s // 4 for s in image_wh]:
        raise ValueError(f"MODEL.HEATMAP_SIZE {heatmap_wh} must be MODEL.IMAGE_SIZE / 4 = "
                         f"{[s // 4 for s in image_wh]} (the network's output stride is 4)")
    for n in (2, 3, 4):
        stage = _stage_cfg(model_cfg["EXTRA"], f"STAGE{n}")
        if stage["NUM_BRANCHES"] != n:
            raise ValueError(f"MODEL.EXTRA.STAGE{n}.NUM_BRANCHES must be {n}, got {stage['NUM_BRANCHES']}")


def get_pose_net(cfg: Mapping, is_train: bool = False, **kwargs) -> PoseHighResolutionNet:
    """Build pose_hrnet from a config (see :func:`hrnet_pose.configs.load_configs`).

    ``is_train=True`` applies the official training init (when ``MODEL.INIT_WEIGHTS``). Unlike
    the official code it does not read the ImageNet file named by ``MODEL.PRETRAINED``, and
    nothing is ever downloaded: load weights with :func:`hrnet_pose.checkpoint.load_pose_checkpoint`.
    """
    check_config(cfg)
    model = PoseHighResolutionNet(cfg, **kwargs)
    if is_train and cfg["MODEL"].get("INIT_WEIGHTS", True):
        model.init_weights()
        if cfg["MODEL"].get("PRETRAINED"):
            warnings.warn(f"MODEL.PRETRAINED={cfg['MODEL']['PRETRAINED']!r} is ignored; load it with "
                          "hrnet_pose.checkpoint.load_pose_checkpoint(model, path, strict=False)", stacklevel=2)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameter elements (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
