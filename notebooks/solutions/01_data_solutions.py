"""Solutions to the exercises of notebook 01 (data).

Run from the repository root:  python notebooks/solutions/01_data_solutions.py
(uses the quick-mode embedded dataset unless POSEKD_MODE says otherwise).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch


from posekd_lib.data import keypoints as kp
from posekd_lib.data.codecs import HeatmapCodec
from posekd_lib.evaluation.coco import oks


def exercise_1(areas=(1000, 20000)) -> dict[int, float]:
    """Pixel error at which OKS falls below 0.5, for each area (same error on every keypoint).

    With every point off by d pixels, OKS = mean_i exp(-d^2 / (2 s (2 sigma_i)^2)); it is monotone in
    d, so a fine scan finds the crossing. The large person tolerates ~sqrt(20) = 4.5x more error.
    """
    gt = np.zeros((17, 3))
    gt[:, 2] = 2
    out = {}
    for area in areas:
        errors = np.linspace(0, 60, 6001)
        values = np.array([oks(np.c_[gt[:, :2] + [d / np.sqrt(2)] * 2, gt[:, 2]], gt, area) for d in errors])
        out[area] = float(errors[np.argmax(values < 0.5)])
    return out


def exercise_2(sigmas=(1.0, 2.0, 3.0), n=200, seed=0) -> dict[float, dict[str, float]]:
    """Mean decoding error (input px) of clean targets at random sub-pixel positions, per sigma.

    Larger sigma: smoother, wider targets (more pixels carry gradient, easier to learn) but the arg-max
    is as coarse as ever; DARK recovers the sub-pixel position from the Gaussian's shape, so its gain
    grows with sigma as long as the peak is not clipped by the window or the border.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for s in sigmas:
        codec = HeatmapCodec((192, 256), (48, 64), s)
        pts = np.c_[rng.uniform(20, 172, n), rng.uniform(20, 236, n), np.full(n, 2.0)]
        # encode() rounds centres like HRNet; build exact sub-pixel Gaussians to test the decoders
        xs, ys = np.arange(48), np.arange(64)
        cx, cy = pts[:, 0] / 4, pts[:, 1] / 4
        hm = np.exp(-((xs[None, None] - cx[:, None, None]) ** 2 + (ys[None, :, None] - cy[:, None, None]) ** 2) / (2 * s * s))
        res = {}
        for method in ("official", "dark"):
            coords, _ = codec.decode(torch.from_numpy(hm[None].astype(np.float32)), method=method)
            res[method] = float(np.abs(coords[0].numpy() * 4 - pts[:, :2]).mean())
        out[s] = res
    return out


def exercise_3(keypoints: np.ndarray, width: int) -> np.ndarray:
    """A flip WITHOUT the left/right swap: the person's left wrist label lands on their right side.

    A model trained on such labels sees 'left_wrist' on either side with equal probability, so it learns
    to put left and right heatmaps on both wrists: the peaks split and the mean position ends up between
    the two wrists.
    """
    k = keypoints.copy()
    k[:, 0] = np.where(k[:, 2] > 0, width - 1 - k[:, 0], 0)
    return k


def exercise_4(root: Path | None = None) -> dict[str, float]:
    """Fraction of labelled keypoints that are occluded, default vs hard difficulty."""
    import json

    from posekd_lib.data.synth import ensure_embedded_dataset

    root = Path(root or tempfile.mkdtemp())
    out = {}
    for d in (0.5, 0.9):
        ds = ensure_embedded_dataset("quick", root=root / f"d{d}", difficulty=d, sizes={"train": 8, "val": 8},
                                     num_workers=1, progress=False)
        v = np.concatenate([np.array(a["keypoints"][2::3]) for a in json.loads(ds.train.ann_file.read_text())["annotations"]])
        out[f"difficulty {d}"] = float((v == 1).sum() / max((v > 0).sum(), 1))
    return out


if __name__ == "__main__":
    print("1. error at OKS 0.5:", exercise_1())
    print("2. decoding error by sigma:", exercise_2())
    gt = np.zeros((17, 3)); gt[:, 2] = 2; gt[9, :2] = (10, 50); gt[10, :2] = (90, 50)
    print("3. left_wrist after a swap-less flip of a 100-px image:", exercise_3(gt, 100)[9])
    print("4. occluded fraction:", exercise_4())
