"""Logits (response) KD: FPD's MSE and the spatial KL on heatmaps, the exact resizes, the weight schedule."""
from __future__ import annotations


import torch
import torch.nn.functional as F

from .losses import joints_mse


SCHEDULES = ("constant", "linear_decay")
LOGIT_KINDS = ("mse", "kl")


# --------------------------------------------------------------------------- logits (response) KD
def fpd_loss(student_hm: torch.Tensor, teacher_hm: torch.Tensor, target: torch.Tensor,
             target_weight: torch.Tensor | None, alpha: float, teacher_weight: str = "ones") -> torch.Tensor:
    """FPD's loss: ``(1-α)·joints_mse(S, GT, w) + α·joints_mse(S, T, w_T)``.

    ``teacher_weight="ones"`` (default) weights every joint's teacher term by 1: the teacher also
    "labels" joints the ground truth marks unlabelled or outside the crop, one of the things KD adds
    (and the per-joint importance factors in ``target_weight`` then apply to the GT term only).
    ``"target"`` reuses ``target_weight`` for both terms, as FPD's official training code does.
    """
    if teacher_weight not in ("ones", "target"):
        raise ValueError(f"teacher_weight must be 'ones' or 'target', got {teacher_weight!r}")
    gt = joints_mse(student_hm, target, target_weight)
    kd = joints_mse(student_hm, teacher_hm.detach(), target_weight if teacher_weight == "target" else None)
    return (1 - alpha) * gt + alpha * kd


def spatial_kl_loss(student_hm: torch.Tensor, teacher_hm: torch.Tensor, temperature: float = 1.0,
                    weight: torch.Tensor | None = None) -> torch.Tensor:


    """``T² · KL(softmax(T_hm/T) ‖ softmax(S_hm/T))`` over the H·W pixels of each joint map.

    Each (sample, joint) map becomes a distribution over pixels; the KL is summed over pixels and
    averaged over joints and batch (weighted by ``weight`` (N, K) when given, e.g. a visibility
    mask: ``Σ w·KL / Σ w``). The ``T²`` factor (Hinton et al., 2015) keeps gradient sizes comparable
    across temperatures. Gaussian heatmaps peak at 1, so at ``T = 1`` the softmax over thousands of
    pixels is almost flat; a temperature below 1 (e.g. 0.1) sharpens it around the peak, which is
    what DWPose does to its SimCC vectors.
    """
    if student_hm.shape != teacher_hm.shape:
        raise ValueError(f"student heatmaps {tuple(student_hm.shape)} and teacher heatmaps "
                         f"{tuple(teacher_hm.shape)} differ; resize the teacher's with resize_heatmaps")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_s = F.log_softmax(student_hm.float().flatten(2) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_hm.detach().float().flatten(2) / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)                                   # (N, K)
    if weight is None:
        kl = kl.mean()
    else:
        w = weight.reshape(kl.shape).to(kl.dtype)
        kl = (w * kl).sum() / w.sum().clamp_min(1e-12)
    return kl * temperature ** 2


def _spatial_size(size) -> tuple[int, int]:
    """``(w, h)`` from a ``(w, h)`` pair or from a tensor's last two dims (H, W)."""
    if torch.is_tensor(size):
        return int(size.shape[-1]), int(size.shape[-2])
    w, h = size
    return int(w), int(h)


def _resample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size`` = (w, h), output cell j reading input cell j·W/w."""
    w, h = _spatial_size(size)
    H, W = x.shape[-2:]
    if (H, W) == (h, w):
        return x
    dtype = x.dtype if x.is_floating_point() else torch.float32
    # grid_sample's align_corners=True maps -1/+1 to the centres of the first/last input cells
    gx = torch.arange(w, device=x.device, dtype=dtype) * (W / w) * (2 / max(W - 1, 1)) - 1
    gy = torch.arange(h, device=x.device, dtype=dtype) * (H / h) * (2 / max(H - 1, 1)) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).expand(x.shape[0], h, w, 2)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize_heatmaps(hm: torch.Tensor, size) -> torch.Tensor:
    """Teacher heatmaps (N, K, H, W) resampled to ``size`` = (w, h) (or a tensor's spatial size).

    Needed when teacher and student heatmaps differ (e.g. a stride-4 teacher, a stride-8 student).
    Halving a σ=2 map gives exactly the σ=1 map the codec draws at the smaller size (for a peak on
    an even cell), on the same input pixel. Returns ``hm`` itself when the size already matches.
    """
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got shape {tuple(hm.shape)}")
    return _resample(hm, size)


def resize_input(images: torch.Tensor, size) -> torch.Tensor:
    """Images (N, 3, H, W) resampled to the teacher's input ``size`` = (w, h).

    For a teacher trained at another input size (HRNet 192x256 vs a 128x128 MCU student). Pixel
    ``j`` of the output reads pixel ``j·W/w``, the same mapping as re-cropping the same box at the
    new size, so teacher heatmaps resized back line up with the student's. A different aspect ratio
    stretches the person: the geometry still lines up, but the teacher sees bodies shaped unlike
    its training data and its heatmaps get worse (crop at the teacher's ratio when you can).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    return _resample(images, size)


def kd_weight_schedule(step: int, total_steps: int | None = None, kind: str = "constant") -> float:
    """Multiplier of the KD terms at ``step`` (0-based): ``constant`` = 1, ``linear_decay`` = 1 - step/total.

    ``linear_decay`` is DWPose's schedule (per epoch there): distillation dominates early and hands
    over to the ground truth by the end of training.
    """
    if kind == "constant":
        return 1.0
    if kind == "linear_decay":
        if not total_steps or total_steps <= 0:
            raise ValueError(f"kd_weight_schedule('linear_decay') needs total_steps > 0, got {total_steps}")
        return min(max(1.0 - step / total_steps, 0.0), 1.0)
    raise ValueError(f"unknown KD schedule {kind!r}; choose one of {SCHEDULES}")


