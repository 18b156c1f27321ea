"""Figures for the notebooks: skeletons, heatmaps, PAF fields, model comparisons, training curves.

Matplotlib only, safe under the Agg backend (nothing calls ``plt.show``). Keypoints are
``(K, 3)`` pixel arrays with COCO visibility (2 visible: filled marker, solid limbs; 1 occluded:
hollow marker, dashed limbs; 0 not labelled: not drawn). The person's left side is blue, the
right side orange, the middle green. Every function returns the figure or axes it drew on.
"""
from __future__ import annotations

import numpy as np

from ..data.keypoints import COCO_KEYPOINTS, COCO_SKELETON

SIDE_COLORS = {"left": "#1f77b4", "right": "#ff7f0e", "center": "#2ca02c"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def keypoint_side(name: str) -> str:
    """``left``, ``right`` or ``center`` from a keypoint name (``left_knee``, ``r_sho``, ``nose``)."""
    n = name.lower()
    if n.startswith(("left", "l_")):
        return "left"
    if n.startswith(("right", "r_")):
        return "right"
    return "center"


def _as_hwc(img) -> np.ndarray:
    """An image as ``H x W x C`` (or ``H x W``) float in [0, 1] or uint8, from numpy/torch, HWC or CHW."""
    a = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:  # e.g. ImageNet-normalised input: stretch for display
            a = (a - lo) / max(hi - lo, 1e-8)
    return a


def draw_skeleton(ax, kpts, skeleton=COCO_SKELETON, names=COCO_KEYPOINTS, score_thr: float | None = None,
                  markersize: float = 36.0, linewidth: float = 2.0, labels: bool = False,
                  label_fontsize: float = 8.0, alpha: float = 1.0):
    """Draw one person's keypoints ``(K, 3)`` and limbs on ``ax``; returns ``ax``.

    The third column is COCO visibility; with ``score_thr`` it is a confidence instead, and
    points at or above it count as visible, the rest are not drawn. ``labels`` writes
    ``index name`` next to each drawn point. Marker collections carry ``gid`` ``"visible"`` /
    ``"occluded"``.
    """
    k = np.asarray(kpts, dtype=np.float64)
    if k.ndim != 2 or k.shape[1] < 3 or k.shape[0] != len(names):
        raise ValueError(f"draw_skeleton expects ({len(names)}, 3) keypoints, got shape {k.shape}")
    vis = np.where(k[:, 2] >= score_thr, 2, 0) if score_thr is not None else np.round(k[:, 2]).astype(int)
    side = [keypoint_side(n) for n in names]
    for a, b in skeleton:
        if vis[a] <= 0 or vis[b] <= 0:
            continue
        s = side[a] if side[a] == side[b] else "center"
        ax.plot(k[[a, b], 0], k[[a, b], 1], color=SIDE_COLORS[s], lw=linewidth, alpha=alpha,
                ls="-" if min(vis[a], vis[b]) >= 2 else "--", solid_capstyle="round", zorder=2)
    colors = np.array([SIDE_COLORS[s] for s in side])
    for v, gid in ((2, "visible"), (1, "occluded")):
        m = vis == v
        if m.any():
            face = colors[m] if v == 2 else "none"
            ax.scatter(k[m, 0], k[m, 1], s=markersize, facecolors=face, edgecolors=colors[m],
                       linewidths=1.5, alpha=alpha, zorder=3, gid=gid)
    if labels:
        for i in np.flatnonzero(vis > 0):
            ax.annotate(f"{i} {names[i]}", (k[i, 0], k[i, 1]), xytext=(6, 0), textcoords="offset points",
                        fontsize=label_fontsize, va="center", color=colors[i], zorder=4)
    return ax


def show_image_with_poses(img, list_of_kpts, skeleton=COCO_SKELETON, ax=None, title: str | None = None,
                          **draw_kw):
    """The image with every person's skeleton drawn on it; returns ``(fig, ax)``."""
    plt = _plt()
    a = _as_hwc(img)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 7 * a.shape[0] / a.shape[1]))
    fig = ax.figure
    ax.imshow(a)
    for kpts in list_of_kpts:
        draw_skeleton(ax, kpts, skeleton, **draw_kw)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig, ax


def heatmap_overlay(ax, img, heatmaps, alpha: float = 0.5, cmap: str = "jet"):
    """Per-pixel max of ``heatmaps`` ``(K, h, w)`` stretched over ``img``; returns ``ax``.

    Opacity follows the heatmap (up to ``alpha`` at its peak), so the image shows where it is low.
    """
    a = _as_hwc(img)
    hm = np.asarray(heatmaps.detach().cpu() if hasattr(heatmaps, "detach") else heatmaps, dtype=np.float32)
    hm = hm.max(0) if hm.ndim == 3 else hm
    h, w = a.shape[:2]
    ax.imshow(a, extent=(0, w, h, 0))
    peak = float(hm.max()) if hm.size and hm.max() > 0 else 1.0
    ax.imshow(hm, cmap=cmap, alpha=alpha * np.clip(hm / peak, 0, 1), extent=(0, w, h, 0), interpolation="bilinear")
    ax.set_axis_off()
    return ax


def heatmap_grid(heatmaps, names=COCO_KEYPOINTS, ncols: int = 6, img=None, cmap: str = "viridis"):
    """One panel per heatmap channel, titled with its name (over ``img`` when given); returns the figure."""
    plt = _plt()
    hm = np.asarray(heatmaps.detach().cpu() if hasattr(heatmaps, "detach") else heatmaps, dtype=np.float32)
    if hm.ndim != 3:
        raise ValueError(f"heatmap_grid expects (K, h, w) heatmaps, got shape {hm.shape}")
    n = hm.shape[0]
    names = list(names) if names is not None and len(names) == n else [str(i) for i in range(n)]
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2 * ncols, 2.2 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            if img is not None:
                heatmap_overlay(ax, img, hm[i:i + 1], cmap=cmap)
            else:
                ax.imshow(hm[i], cmap=cmap)
            ax.set_title(f"{i} {names[i]}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def paf_quiver(ax, img, pafs, limbs=None, step: int = 1, min_norm: float = 0.1):
    """Arrows of part affinity fields ``(2L, h, w)`` over ``img``; returns ``ax``.

    ``limbs`` lists the ``(x_channel, y_channel)`` pair of each field (default consecutive
    channels); only cells whose vector is longer than ``min_norm`` are drawn, every ``step`` cells.
    """
    import matplotlib

    a = _as_hwc(img)
    p = np.asarray(pafs.detach().cpu() if hasattr(pafs, "detach") else pafs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] % 2:
        raise ValueError(f"paf_quiver expects (2L, h, w) fields, got shape {p.shape}")
    limbs = list(limbs) if limbs is not None else [(c, c + 1) for c in range(0, p.shape[0], 2)]
    H, W = a.shape[:2]
    h, w = p.shape[1:]
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    cx, cy = (xs + 0.5) * W / w, (ys + 0.5) * H / h
    ax.imshow(a, extent=(0, W, H, 0))
    cmap = matplotlib.colormaps["hsv"]
    for i, (chx, chy) in enumerate(limbs):
        u, v = p[chx, ::step, ::step], p[chy, ::step, ::step]
        m = np.hypot(u, v) > min_norm
        if m.any():
            ax.quiver(cx[m], cy[m], u[m], v[m], color=cmap(i / max(len(limbs), 1)), angles="xy",
                      scale_units="xy", scale=1.0 / (step * W / w), width=0.004)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_axis_off()
    return ax


def compare_models(img, preds: dict, gt=None, score_thr: float | None = None, margin: float = 0.15, **draw_kw):
    """One panel per model showing its keypoints for the same person (cropped around it); returns the figure.

    ``preds`` maps a model name to its ``(K, 3)`` keypoints, the third column a confidence when
    ``score_thr`` is given (see ``draw_skeleton``); ``gt`` (COCO visibility) adds a first panel.
    """
    plt = _plt()
    panels = [(name, np.asarray(k, dtype=np.float64), score_thr) for name, k in preds.items()]
    if gt is not None:
        panels.insert(0, ("ground truth", np.asarray(gt, dtype=np.float64), None))
    shown = [k[k[:, 2] >= thr, :2] if thr is not None else k[k[:, 2] > 0, :2] for _, k, thr in panels]
    pts = np.concatenate(shown) if shown else np.zeros((0, 2))
    a = _as_hwc(img)
    H, W = a.shape[:2]
    if len(pts):
        lo, hi = pts.min(0), pts.max(0)
        pad = margin * (hi - lo).max() + 5
        x0, y0 = np.maximum(lo - pad, 0)
        x1, y1 = np.minimum(hi + pad, (W, H))
    else:
        x0, y0, x1, y1 = 0, 0, W, H
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4), squeeze=False)
    for ax, (name, kpts, thr) in zip(axes[0], panels):
        ax.imshow(a)
        draw_skeleton(ax, kpts, score_thr=thr, **draw_kw)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_title(name)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def training_curves(history: dict, xlabel: str = "epoch"):
    """Losses (keys containing ``loss``) on the left panel, other metrics on the right; returns the figure."""
    plt = _plt()
    losses = {k: v for k, v in history.items() if "loss" in k.lower()}
    metrics = {k: v for k, v in history.items() if k not in losses}
    groups = [(g, t) for g, t in ((losses, "loss"), (metrics, "metric")) if g]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(5 * max(len(groups), 1), 3.5), squeeze=False)
    for ax, (group, title) in zip(axes[0], groups):
        for name, values in group.items():
            y = np.asarray(values, dtype=np.float64)
            ax.plot(np.arange(1, len(y) + 1), y, marker="o" if len(y) < 30 else None, ms=3, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def learning_curves(curves: list[dict], title: str | None = None):
    """COCO AP and mean OKS against training samples, one line per curve.

    ``curves``: dicts with a ``name`` and ``points`` (``samples``, ``AP``, ``mean_OKS``), as
    ``benchmarks/bench_learning.py`` stores them and teacher cards hold them.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for c in curves:
        x = [p["samples"] / 1000 for p in c["points"]]
        for ax, key in zip(axes, ("AP", "mean_OKS")):
            ax.plot(x, [p[key] for p in c["points"]], marker="o", ms=3, label=c["name"])
    for ax, label in zip(axes, ("COCO AP", "mean OKS")):
        ax.set(xlabel="training samples (thousands)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
