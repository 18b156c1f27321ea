"""The bottom-up MAX78000 system: a whole-frame student distilled from the top-down HRNet teacher.

A MAX78000 camera has no person detector to give a top-down model its boxes, so its pose model
must find every person in the frame by itself: 19 keypoint heatmaps and 38 part affinity fields
(PAFs) at stride 8 (``ai8x_models.ai85bottomup``), grouped into people by ``codecs.PafCodec``.

No bottom-up teacher is trained here yet (a Lightweight OpenPose learns slowly on two CPU cores),
so the student distils **across architectures** from the top-down demo teacher: the teacher runs
once on every training person's box (flip test), its confident keypoints (score above
``min_score``) become a second set of targets, drawn as heatmaps and PAFs through the same
augmentation as the labels (``data.BottomUpDataset(teacher_keypoints=...)``), and the loss is the
α-weighted sum of the two masked MSEs (:func:`kd_loss`). That transfers the teacher's placements
(where it puts joints the labels miss or place differently), not the shape of its heatmaps.

    teacher_kp = teacher_keypoints(teacher, mode)                    # once per teacher
    run = train_bottom_up("tiny", mode, seed=0, teacher_kp=teacher_kp, alpha=0.5)
    run.metrics["float"]["AP"], run.metrics["int8"]["AP"]            # whole-image COCO AP

Runs are cached by name under ``run_paths(mode).checkpoints`` like the top-down students'.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models.ai8x_models import (BOTTOM_UP_INPUT, DEFAULT_QAT_POLICY, HeatmapView, ai85bottomup, simulate_copy,
                          train_ai8x_student)
from ..config import atomic_write, get_mode, run_paths
from ..distill.losses import BOTTOM_UP_LOSSES, bottom_up_mse

STRIDE = 8
#: Teacher keypoints below this heatmap peak are left unlabelled in its targets (HRNet's
#: ``in_vis_thr``, the confidence above which a keypoint counts towards a person's score).
MIN_SCORE = 0.2


def training_set(mode: str | None = None, teacher_kp: dict | None = None, input_size=BOTTOM_UP_INPUT,
                 stride: int = STRIDE, sigma: float | None = None, teacher_maps=None):
    """The mode's training images as a ``BottomUpDataset`` with whole-image augmentation, its maps at
    ``stride`` (the student's: ``model.stride``), heatmap Gaussians of ``sigma`` input pixels (None:
    the dataset's 7, LW-OpenPose's); ``teacher_maps`` (a teacher cache) makes the KD heatmap targets
    the teacher's own heatmaps pasted into the frame instead of Gaussians at its keypoints."""
    from ..data.datasets import BottomUpDataset, dataset_splits

    split = dataset_splits(get_mode(mode)).train
    return BottomUpDataset(split.ann_file, split.img_dir, input_size, stride, train=True, teacher_keypoints=teacher_kp,
                           teacher_maps=teacher_maps,
                           **({} if sigma is None else {"sigma": float(sigma)}))


def curve_fit_kw(model: nn.Module, split, every: int | None) -> dict:
    """``fit`` keywords for a bottom-up learning curve every ``every`` steps (none when None): whole-frame
    COCO AP of ``model`` (float or QAT, through a ``HeatmapView``) on ``experiments.CURVE_IMAGES`` fixed
    validation images; the points land in ``history.json``'s ``evals``."""
    if not every:
        return {}
    from ..evaluation.coco import evaluate_bottom_up, first_images
    from .experiments import CURVE_IMAGES

    ids = first_images(split.ann_file, CURVE_IMAGES)

    def evaluate(_trainee) -> dict:
        return evaluate_bottom_up(HeatmapView(model), split, model.input_size, model.stride, img_ids=ids)

    return {"evaluate_fn": evaluate, "eval_every_steps": int(every)}


class TeacherKeypoints(dict):
    """``{ann_id: (17, 3)}`` keypoints labelled by a teacher, which ``teacher`` names (its
    ``weights_fingerprint``), so a run trained on them can say which teacher it learned from."""

    def __init__(self, keypoints, teacher: str):
        super().__init__(keypoints)
        self.teacher = teacher


@torch.no_grad()
def teacher_keypoints(teacher: nn.Module, mode: str | None = None, min_score: float = MIN_SCORE,
                      batch_size: int = 64, progress: bool = False, cache: bool = True) -> TeacherKeypoints:
    """``{ann_id: (17, 3)}``: the top-down teacher's keypoints for every training person (its GT
    box, flip test, image pixels), ``v`` = 2 where the peak is at least ``min_score``, else the point
    is unlabelled. Stored once per teacher (``weights_fingerprint``) under the mode's folder."""
    from ..data.datasets import TopDownDataset, dataset_splits, predict_topdown
    from .budgets import budget
    from .recipes import weights_fingerprint

    mode = get_mode(mode)
    b = budget(mode)
    fingerprint = weights_fingerprint(teacher)
    path = run_paths(mode).root / "teacher_cache" / f"keypoints_{fingerprint}_{min_score:g}.json"
    if cache and path.is_file():
        return TeacherKeypoints({int(k): np.asarray(v, dtype=np.float64) for k, v in json.loads(path.read_text()).items()},
                                fingerprint)
    split = dataset_splits(mode).train
    ds = TopDownDataset(split.ann_file, split.img_dir, b.input_size, b.heatmap_size, b.sigma, train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    device = next(teacher.parameters()).device
    results = predict_topdown(teacher, loader, ds.codec, flip_test=True, device=device, progress=progress)
    out = {}
    for sample, r in zip(ds.samples, results):
        k = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
        k[:, 2] = np.where(k[:, 2] >= min_score, 2.0, 0.0)
        k[k[:, 2] == 0, :2] = 0.0
        out[int(sample["ann_id"])] = k
    if cache:
        from ..config import atomic_write

        atomic_write(path, lambda f: json.dump({k: np.round(v, 2).tolist() for k, v in out.items()}, f), mode="w")
    return TeacherKeypoints(out, fingerprint)


#: ``optim.loss`` of a bottom-up run -> ``losses.bottom_up_mse``'s positive weight λ.
LOSSES = BOTTOM_UP_LOSSES
#: The design the learning curves chose (docs/experiments.md, E15-E21; 3,000-step curves on 100 fixed
#: frames): stride 4 (36x28 maps), the loss that weights keypoint and limb cells ``1 + 10·|target|``,
#: heatmap Gaussians of 3.5 input pixels, and 4:3 frames of 144x112 (a 320x240 camera frame at 0.45x;
#: 160x128 scored about as high, E19, but its first layer does not fit the MAX78000's data memory).
#: ``train_bottom_up(mode=..., **RECIPE)``.
RECIPE = {"variant": "tiny_s4", "loss": "mse_pos10", "sigma": 3.5, "input_size": (144, 112)}


def gt_loss(positive_weight: float = 0.0) -> Callable:
    """The ground-truth loss (:func:`losses.bottom_up_mse`, cells weighted ``1 + λ·|target|``) as
    ``fit``'s ``loss_fn``."""
    return partial(bottom_up_mse, positive_weight=positive_weight) if positive_weight else bottom_up_mse


def kd_loss(alpha: float = 0.5, positive_weight: float = 0.0) -> Callable:
    """``(1-α)·MSE(S, GT) + α·MSE(S, teacher targets)``, both masked (:func:`losses.bottom_up_mse`),
    as ``fit``'s ``loss_fn``; returns ``{"loss", "gt", "kd"}`` (fit logs each)."""
    def loss_fn(outputs, batch: dict) -> dict:
        gt = bottom_up_mse(outputs, batch, positive_weight)
        kd = bottom_up_mse(outputs, {"heatmaps": batch["teacher_heatmaps"], "pafs": batch["teacher_pafs"],
                                     "mask": batch["mask"]}, positive_weight)
        return {"loss": (1 - alpha) * gt + alpha * kd, "gt": gt, "kd": kd}

    return loss_fn


def check_fits(model: nn.Module) -> None:
    """Refuse, before any training, a bottom-up design the MAX78000 cannot hold: the resource report
    (``max78000.resource_report``, the synthesizer's rules) names the layer and the reason."""
    from ..models.ai8x_models import AI8X_DATA_FORMAT, input_shape
    from ..mcu.max78000 import resource_report

    r = resource_report(model, input_shape(model), data_format=AI8X_DATA_FORMAT)
    if not r.fits:
        raise ValueError(f"ai85bottomup({model.variant.removeprefix('bottom_up_')!r}) at input {model.input_size} does "
                         f"not fit the MAX78000: " + "; ".join(r.reasons))


@dataclass
class BottomUpRun:
    name: str
    model: nn.Module              # QAT mode
    float_model: nn.Module
    metrics: dict                 # {"float", "qat", "int8"}: whole-image COCO metrics
    run_dir: Path
    train_time_s: float | None


def train_bottom_up(variant: str = "tiny", mode: str | None = None, seed: int = 0, teacher_kp: dict | None = None,
                    alpha: float = 0.5, steps: tuple[int, int] | None = None, batch_size: int | None = None,
                    lr: float | None = None, tag: str | None = None, progress: bool = True,
                    threads: int | None = None, curve_every: int | None = None, loss: str = "mse",
                    sigma: float | None = None, input_size=BOTTOM_UP_INPUT, teacher_maps=None) -> BottomUpRun:
    """Train (or load) a bottom-up MAX78000 student: float steps, then QAT (lr / 10), with the
    ground truth only or distilled from ``teacher_kp`` (:func:`teacher_keypoints`, weight ``alpha``);
    evaluates the float, QAT and integer-simulated models on the whole validation images. Steps,
    batch size and learning rate default to the top-down MAX78000 student's
    (``experiments.AI8X_STEPS`` and the mode's budget), so both systems train on the same budget.
    The maps are made at the student's own stride (``model.stride``: 8, or 4 for ``tiny_s4``);
    ``curve_every`` scores a learning curve on fixed validation images (:func:`curve_fit_kw`);
    ``loss`` names the map loss (:data:`LOSSES`: ``mse``, or ``mse_pos10`` with keypoint and limb cells
    weighted ``1 + 10·|target|``), ``sigma`` the heatmap Gaussian in input pixels (None: 7); ``input_size`` the frame
    (w, h) the student sees (the 320x240 frames letterboxed into it); ``teacher_maps`` (the teacher's
    ``TeacherCache``, with ``teacher_kp``) makes the KD heatmap targets soft: the teacher's own
    heatmaps pasted into the frame (``data.datasets.BottomUpDataset``). The teacher that labelled
    ``teacher_kp`` (its ``TeacherKeypoints.teacher`` fingerprint) is written to ``run_info.json``,
    and so to a shipped card."""
    from ..data.datasets import dataset_splits
    from ..evaluation.coco import evaluate_bottom_up
    from .budgets import budget
    from .experiments import AI8X_STEPS
    from ..data.device_data import shuffled_loader
    from . import History

    mode = get_mode(mode)
    b = budget(mode)
    float_steps, qat_steps = steps or AI8X_STEPS[mode]
    batch_size, lr = batch_size or b.batch_size, lr or b.lr
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; the bottom-up student trains with one of {sorted(LOSSES)}")
    teacher = getattr(teacher_kp, "teacher", None)
    recipe = {"variant": variant, "kd": teacher_kp is not None, "alpha": alpha if teacher_kp is not None else None,
              "loss": loss, "sigma": sigma, "input_size": [int(v) for v in input_size],
              "targets": "heatmaps" if teacher_maps is not None else None}   # None: drawn at its keypoints
    extras = "".join(f"_{v}" for v in (loss.removeprefix("mse_") if loss != "mse" else None,
                                       None if sigma is None else f"sig{sigma:g}",
                                       None if tuple(input_size) == BOTTOM_UP_INPUT else "x".join(map(str, input_size)))
                     if v)
    kind = "gt" if teacher_kp is None else "kdsoft" if teacher_maps is not None else "kd"
    name = tag or f"bottom_up_{variant}_{kind}{extras}_s{seed}"
    root = run_paths(mode).checkpoints
    dirs = (root / f"{name}_float", root / f"{name}_qat")
    info_file = dirs[1] / "run_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if info:                      # a cached run of another recipe under this name is refused, not reused
        stored = {**{"loss": "mse", "sigma": None, "input_size": list(BOTTOM_UP_INPUT), "targets": None}, **info}
        differ = {k: (stored.get(k), v) for k, v in recipe.items() if stored.get(k) != v}
        if stored.get("teacher", teacher) != teacher:      # runs written before the card named it: not checked
            differ["teacher"] = (stored["teacher"], teacher)
        if differ:
            raise ValueError(f"{dirs[1]}: run {name!r} was trained with another recipe (stored, asked): {differ}; "
                             "use another tag, or delete its _float and _qat folders to retrain")
    torch.manual_seed(seed)
    model = ai85bottomup(variant, input_size=tuple(input_size))
    check_fits(model)
    val = dataset_splits(mode).val
    loader = shuffled_loader(training_set(mode, teacher_kp, model.input_size, model.stride, sigma, teacher_maps),
                             batch_size)
    before = sum(History.steps_done(d) for d in dirs)
    t0 = time.perf_counter()
    trained = train_ai8x_student(model, loader, qat_policy=DEFAULT_QAT_POLICY, out_dir=root, run_name=name, lr=lr,
                                 loss_fn=gt_loss(LOSSES[loss]) if teacher_kp is None
                                 else kd_loss(alpha, LOSSES[loss]),
                                 float_steps=float_steps, qat_steps=qat_steps, seed=seed, progress=progress,
                                 threads=threads if threads is not None else b.threads,
                                 channels_last=b.channels_last, save_every_steps=100,
                                 log_every=max(1, min(10, float_steps // 4)),
                                 **curve_fit_kw(model, val, curve_every))
    float_model = trained["float_model"]                    # the float phase's final weights, before QAT
    if sum(History.steps_done(d) for d in dirs) > before:   # the phases' clocks (they survive a resume), as train_ai8x
        clocked = sum(h.train_time_s or 0.0 for h in (trained.get("float"), trained.get("qat")) if h is not None)
        info["train_time_s"] = round(clocked, 1) or round(info.get("train_time_s", 0.0) + time.perf_counter() - t0, 1)
    info.update(seed=seed, steps=[float_steps, qat_steps], batch_size=batch_size, lr=lr, policy=DEFAULT_QAT_POLICY,
                teacher=teacher, **recipe)
    text = json.dumps(info, indent=1)
    atomic_write(info_file, lambda f: f.write(text), mode="w")
    model.eval()
    metrics = {}
    for key, net in (("float", float_model), ("qat", model), ("int8", simulate_copy(model))):
        stored = dirs[1] / f"eval_{key}" / "val_metrics.json"        # whole-frame COCO metrics, per trained steps
        want = {"step": [float_steps, qat_steps], "model": key, "stride": model.stride}
        cached = json.loads(stored.read_text()) if stored.is_file() else {}
        if cached.get("key") != want:
            cached = {"key": want, "metrics": evaluate_bottom_up(HeatmapView(net), val, model.input_size, model.stride)}
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps(cached, indent=1))
        metrics[key] = cached["metrics"]
    return BottomUpRun(name, model, float_model, metrics, dirs[1], info.get("train_time_s"))


@torch.no_grad()
def map_diagnosis(model: nn.Module, split, img_ids=None, radius: float = 8.0, batch_size: int = 50,
                  sigma: float | None = None) -> dict:
    """Which half of a bottom-up student fails, its heatmaps or its PAFs, on the frames ``img_ids``
    of ``split`` (``model``: an ai85bottomup student, float or QAT).

    Returns the whole-frame COCO AP of four mixes decoded by the same ``PafCodec`` —
    ``AP_student`` (its heatmaps and PAFs), ``AP_student_heatmaps`` (with the label PAFs),
    ``AP_student_pafs`` (the label heatmaps with its PAFs), ``AP_labels`` (the decoder's ceiling at
    this stride) — then the heatmap peaks: ``peaks_label`` / ``peaks_student``, ``peak_recall`` (label
    peaks with a student peak of the same keypoint within ``radius`` input pixels) and
    ``peak_precision`` (student peaks with a label peak there), and the PAF length on the labels'
    limb cells (``paf_on_limbs_label``, about 1, and ``paf_on_limbs_student``) and off them
    (``paf_off_limbs_student``). ``sigma``: the label heatmaps' Gaussian (the student's training σ;
    None: the dataset's 7)."""
    import torch.nn.functional as F

    from ..data.datasets import BottomUpDataset
    from ..evaluation.coco import bottom_up_results, coco_evaluate
    from ..data.keypoints import NUM_OPENPOSE_KEYPOINTS

    view = HeatmapView(model)
    was_training = view.training
    view.eval()
    ds = BottomUpDataset(split.ann_file, split.img_dir, model.input_size, model.stride, train=False,
                         **({} if sigma is None else {"sigma": float(sigma)}))
    if img_ids is not None:
        keep = {int(i) for i in img_ids}
        ds.image_ids = [i for i in ds.image_ids if i in keep]
    pred, label, affines, image_ids = [], [], [], []
    for b in torch.utils.data.DataLoader(ds, batch_size=batch_size):
        pred.append(view(b["image"]).float().numpy())
        label.append(torch.cat([b["heatmaps"], b["pafs"]], 1).numpy())
        affines += list(b["meta"]["affine"].numpy())
        image_ids += b["meta"]["image_id"].tolist()
    view.train(was_training)
    pred, label = np.concatenate(pred), np.concatenate(label)
    n_hm = NUM_OPENPOSE_KEYPOINTS + 1

    def ap_of(hm, paf) -> float:
        results = bottom_up_results(hm[:, :n_hm], paf[:, n_hm:], affines, image_ids, ds.codec)
        return float(coco_evaluate(split.ann_file, results, img_ids=image_ids)["AP"])

    out = {"frames": len(image_ids), "stride": model.stride,
           "AP_student": ap_of(pred, pred), "AP_student_heatmaps": ap_of(pred, label),
           "AP_student_pafs": ap_of(label, pred), "AP_labels": ap_of(label, label)}
    size = (model.input_size[1], model.input_size[0])
    found = matched = n_pred = n_label = 0
    for i in range(len(pred)):
        up = [F.interpolate(torch.as_tensor(m[i:i + 1, :n_hm]), size=size, mode="bicubic")[0].numpy()
              for m in (pred, label)]
        for p, q in zip(ds.codec.find_peaks(up[0]), ds.codec.find_peaks(up[1], threshold=0.5)):
            n_pred, n_label = n_pred + len(p), n_label + len(q)
            if len(p) and len(q):
                d = np.hypot(p[:, None, 0] - q[None, :, 0], p[:, None, 1] - q[None, :, 1])
                found += int((d.min(0) < radius).sum())
                matched += int((d.min(1) < radius).sum())
    length = [np.linalg.norm(m[:, n_hm:].reshape(len(m), -1, 2, *m.shape[2:]), axis=2) for m in (label, pred)]
    on = length[0] > 0.5
    out.update(peaks_label=n_label, peaks_student=n_pred, peak_recall=found / max(n_label, 1),
               peak_precision=matched / max(n_pred, 1), radius=radius,
               paf_on_limbs_label=float(length[0][on].mean()), paf_on_limbs_student=float(length[1][on].mean()),
               paf_off_limbs_student=float(length[1][~on].mean()))
    return out
