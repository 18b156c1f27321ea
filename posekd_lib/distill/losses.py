"""Heatmap losses: HRNet's JointsMSE and the Adaptive Wing loss, as functions and as modules.

Shapes: predictions and targets (N, K, h, w); ``target_weight`` (N, K) or (N, K, 1), one weight per
joint (0 for joints that are not labelled). ``batch_loss`` turns any of them into the
``loss_fn(outputs, batch)`` that :func:`posekd_lib.train.fit` expects.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: The top-down students' ground-truth losses by name (``experiments.build_loss``; a config's ``optim.loss``).
TOPDOWN_LOSSES = ("mse", "awing", "mse_ce")
#: The bottom-up student's: the masked map MSE with keypoint and limb cells weighted
#: ``1 + weight·|target|`` (``bottom_up.gt_loss``).
BOTTOM_UP_LOSSES = {"mse": 0.0, "mse_pos10": 10.0}


def _joint_weight(target_weight: torch.Tensor | None, pred: torch.Tensor) -> torch.Tensor | None:
    """Per-joint weights reshaped to (N, K, 1, 1) so they broadcast over heatmap pixels."""
    if target_weight is None:
        return None
    n, k = pred.shape[:2]
    if target_weight.numel() != n * k:
        raise ValueError(f"target_weight has shape {tuple(target_weight.shape)}; expected ({n}, {k}) "
                         f"for predictions of shape {tuple(pred.shape)}")
    return target_weight.reshape(n, k, 1, 1).to(pred.dtype)


def joints_mse(pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None) -> torch.Tensor:
    """HRNet's loss: ``0.5 * mean((w * pred - w * target)^2)`` over batch, joints and pixels.

    The weight multiplies both heatmaps before squaring (so it counts as w^2), and masked joints
    still count in the mean, exactly as the official ``JointsMSELoss``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    w = _joint_weight(target_weight, pred)
    diff = pred - target if w is None else w * (pred - target)
    return 0.5 * diff.pow(2).mean()


def adaptive_wing_map(pred: torch.Tensor, target: torch.Tensor, omega: float = 14.0, theta: float = 0.5,
                      epsilon: float = 1.0, alpha: float = 2.1) -> torch.Tensor:
    """Per-pixel Adaptive Wing loss (Wang et al., ICCV 2019).

    With d = |target - pred| and p = alpha - target:  omega * ln(1 + (d/epsilon)^p) for d < theta,
    else A * d - C, where A and C make the two pieces meet with the same value and slope at theta.
    """
    d = (target - pred).abs()
    p = alpha - target
    r = theta / epsilon
    a = omega / (1 + r ** p) * p * r ** (p - 1) / epsilon
    c = theta * a - omega * torch.log1p(r ** p)
    return torch.where(d < theta, omega * torch.log1p((d / epsilon) ** p), a * d - c)


def foreground_weight_map(target: torch.Tensor, w: float = 10.0, threshold: float = 0.2) -> torch.Tensor:
    """The paper's loss weighting: ``1 + w`` on the 3x3-dilated region where ``target > threshold``, else 1."""
    fg = F.max_pool2d((target > threshold).to(target.dtype), 3, stride=1, padding=1)
    return 1 + w * fg


def adaptive_wing(pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None, *,
                  omega: float = 14.0, theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1,
                  weight_map: bool = False) -> torch.Tensor:
    """Adaptive Wing loss averaged over the pixels of the joints with a non-zero ``target_weight``.

    Masked joints contribute nothing and do not enter the count, so the value does not shrink as
    more joints are unlabelled. Fractional weights scale their joint's terms. With ``weight_map``
    the paper's foreground weighting (:func:`foreground_weight_map`) multiplies each pixel.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    loss = adaptive_wing_map(pred, target, omega, theta, epsilon, alpha)
    if weight_map:
        loss = loss * foreground_weight_map(target)
    w = _joint_weight(target_weight, pred)
    if w is None:
        return loss.mean()
    pixels = math.prod(pred.shape[2:])
    n_used = (w > 0).sum() * pixels
    return (loss * w).sum() / n_used.clamp_min(1)


def heatmap_softmax_ce(pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None,
                       temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy of each joint's spatial softmax ``softmax(pred / T)`` against its target
    Gaussian normalised to sum 1, averaged over the labelled joints (weight > 0 and a target that
    is not empty). Unlike the MSE, whose gradient is spread over every pixel of the map, it pulls
    probability mass toward the joint from the whole map at once (the localisation signal of
    soft-argmax / SimCC-style losses); added to the MSE with a small weight (:func:`mse_with_ce`),
    which keeps the heatmaps' scale for the decoders and the keypoint scores."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    n, k = pred.shape[:2]
    logp = F.log_softmax(pred.float().reshape(n, k, -1) / temperature, dim=-1)
    t = target.float().reshape(n, k, -1)
    mass = t.sum(dim=-1)
    ce = -(t / mass.clamp_min(1e-12)[..., None] * logp).sum(dim=-1)         # (N, K)
    w = (mass > 0).float()
    if target_weight is not None:
        w = w * _joint_weight(target_weight, pred).reshape(n, k).float()
    return (ce * w).sum() / w.sum().clamp_min(1)


def mse_with_ce(pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None,
                ce_weight: float = 1e-4, temperature: float = 0.1) -> torch.Tensor:
    """:func:`joints_mse` + ``ce_weight`` x :func:`heatmap_softmax_ce`. Per pixel and unit of error
    the CE's gradient is about ``h·w / T`` times the MSE's (7,680x at 24x32, T = 0.1), so 1e-4 puts
    the two at a similar scale."""
    return joints_mse(pred, target, target_weight) + ce_weight * heatmap_softmax_ce(pred, target, target_weight,
                                                                                     temperature)


def bottom_up_mse(outputs, batch: dict, positive_weight: float = 0.0) -> torch.Tensor:
    """Masked MSE of bottom-up maps: ``0.5 * mean(mask * (pred - target)^2)`` over the heatmaps and
    the PAFs of ``batch`` (``heatmaps`` (N, 19, h, w), ``pafs`` (N, 38, h, w), ``mask`` (N, 1, h, w):
    0 over crowds and unlabelled people, as ``data.BottomUpDataset`` makes them), summed over the
    stages. ``outputs`` is one tensor with the heatmap channels first (an ai8x bottom-up student)
    or LW-OpenPose's list ``[heatmaps, pafs, heatmaps, pafs, ...]`` (one pair per stage).

    ``positive_weight`` λ > 0 weights each cell by ``1 + λ·|target|`` on the keypoint heatmaps and
    the PAFs (not the last, background heatmap): at stride 8 a keypoint's Gaussian and a limb's PAF
    cover a few per cent of the cells, so the plain MSE is mostly the empty background's."""
    hm_t, paf_t, mask = batch["heatmaps"], batch["pafs"], batch["mask"]
    n_hm = hm_t.shape[1]
    if torch.is_tensor(outputs):
        if outputs.shape[1] != n_hm + paf_t.shape[1]:
            raise ValueError(f"bottom-up output has {outputs.shape[1]} channels; expected {n_hm} heatmaps + "
                             f"{paf_t.shape[1]} PAFs")
        stages = [(outputs[:, :n_hm], outputs[:, n_hm:])]
    else:
        if len(outputs) % 2:
            raise ValueError(f"expected [heatmaps, pafs] per stage, got {len(outputs)} tensors")
        stages = list(zip(outputs[0::2], outputs[1::2]))
    weights = [mask, mask]
    if positive_weight:
        w_hm = 1 + positive_weight * hm_t.float().abs()
        w_hm[:, -1] = 1                                       # the background channel keeps weight 1
        weights = [mask * w_hm, mask * (1 + positive_weight * paf_t.float().abs())]
    total = 0.0
    for hm, paf in stages:
        for pred, target, weight in ((hm, hm_t, weights[0]), (paf, paf_t, weights[1])):
            if pred.shape != target.shape:
                raise ValueError(f"bottom-up prediction {tuple(pred.shape)} != target {tuple(target.shape)}")
            total = total + 0.5 * (weight * (pred.float() - target.float()) ** 2).mean()
    return total


class JointsMSELoss(nn.Module):
    """Module form of :func:`joints_mse` (``use_target_weight=False`` ignores the weights)."""

    def __init__(self, use_target_weight: bool = True):
        super().__init__()
        self.use_target_weight = use_target_weight

    def forward(self, pred, target, target_weight=None):
        return joints_mse(pred, target, target_weight if self.use_target_weight else None)


class AdaptiveWingLoss(nn.Module):
    """Module form of :func:`adaptive_wing`."""

    def __init__(self, omega: float = 14.0, theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1,
                 use_target_weight: bool = True, weight_map: bool = False):
        super().__init__()
        self.omega, self.theta, self.epsilon, self.alpha = omega, theta, epsilon, alpha
        self.use_target_weight, self.weight_map = use_target_weight, weight_map

    def forward(self, pred, target, target_weight=None):
        return adaptive_wing(pred, target, target_weight if self.use_target_weight else None,
                             omega=self.omega, theta=self.theta, epsilon=self.epsilon, alpha=self.alpha,
                             weight_map=self.weight_map)


def batch_loss(criterion=joints_mse):
    """Wrap ``criterion(pred, target, target_weight)`` as ``loss_fn(outputs, batch)`` for ``fit``."""

    def loss_fn(outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        if not torch.is_tensor(outputs):
            raise TypeError(f"batch_loss expects the model to return a heatmap tensor, got {type(outputs).__name__}")
        return criterion(outputs, batch["target"], batch.get("target_weight"))

    return loss_fn
