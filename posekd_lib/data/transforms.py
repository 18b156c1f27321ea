"""HRNet-style crop geometry (numpy + cv2): box -> center/scale, 3-point affine, flips, letterbox.

A person box becomes a ``center`` (pixels) and a ``scale`` (box size / ``pixel_std``), enlarged to
the network's aspect ratio and padded by 1.25 as in the official HRNet code. The crop is an affine
warp defined by three points, so the same matrix (or its inverse) maps keypoints between image,
input and heatmap coordinates. Sizes are ``(width, height)`` throughout.
"""
from __future__ import annotations

import cv2
import numpy as np

from .keypoints import flip_permutation

PIXEL_STD = 200.0


def box_to_center_scale(box_xywh, aspect_ratio: float, padding: float = 1.25,
                        pixel_std: float = PIXEL_STD) -> tuple[np.ndarray, np.ndarray]:
    """COCO box ``[x, y, w, h]`` -> ``(center (2,), scale (2,))`` float32.

    The shorter side grows until ``w / h == aspect_ratio`` (input width / height,
    :func:`grow_to_aspect`), then both sides are divided by ``pixel_std`` and multiplied by
    ``padding`` so the crop has some context.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    w, h = grow_to_aspect(w, h, aspect_ratio)
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32) * padding
    return center, scale


def grow_to_aspect(w: float, h: float, aspect_ratio: float) -> tuple[float, float]:
    """``(w, h)`` with the shorter side grown until ``w / h == aspect_ratio``: the smallest box of
    that aspect, around the same centre, that holds a ``w`` x ``h`` one."""
    if w > aspect_ratio * h:
        return w, w / aspect_ratio
    if w < aspect_ratio * h:
        return h * aspect_ratio, h
    return w, h


def widen_scale(scale, aspect_ratio: float) -> np.ndarray:
    """A crop's ``scale`` (w, h) grown on its shorter side to ``aspect_ratio`` (:func:`grow_to_aspect`),
    as float32: a teacher crop of another aspect that holds the student's crop."""
    return np.array(grow_to_aspect(*(float(v) for v in scale), aspect_ratio), dtype=np.float32)


def _rotate(point, rot_rad: float) -> np.ndarray:
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs], dtype=np.float32)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point that makes ``(a, b, c)`` a right angle at ``b`` (``a - b`` rotated by 90°)."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def get_affine_transform(center, scale, rot: float, output_size, inv: bool = False,
                         pixel_std: float = PIXEL_STD) -> np.ndarray:
    """2x3 matrix mapping the rotated box ``(center, scale)`` onto an ``output_size`` (w, h) image.

    Three point pairs define it, as in the official code: the box centre -> the output centre, the
    (rotated) point half a box-width above the centre -> the point half an output-width above the
    output centre, and the perpendicular third points. Only the box width sets the zoom, which is
    why the box is first brought to the output aspect ratio. ``inv=True`` gives output -> image.
    """
    center = np.asarray(center, dtype=np.float32)
    scale_px = np.asarray(scale, dtype=np.float32) * pixel_std
    dst_w, dst_h = float(output_size[0]), float(output_size[1])
    src_dir = _rotate([0.0, scale_px[0] * -0.5], np.pi * rot / 180.0)
    dst_dir = np.array([0.0, dst_w * -0.5], dtype=np.float32)

    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + dst_dir
    src[2], dst[2] = _third_point(src[0], src[1]), _third_point(dst[0], dst[1])
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def affine_transforms(centers, scales, rots, output_size, pixel_std: float = PIXEL_STD) -> np.ndarray:
    """``get_affine_transform`` of N boxes at once, as ``(N, 3, 3)`` float64 homogeneous matrices.

    The three point pairs define a similarity: the box centre goes to the output centre, rotated by
    ``-rot`` degrees and zoomed by output width / box width, so ``x -> k R(-rot) (x - c) + d``. Equal
    to ``get_affine_transform`` up to its float32 points (``tests/test_transforms.py``)."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    k = float(output_size[0]) / (np.asarray(scales, dtype=np.float64).reshape(-1, 2)[:, 0] * pixel_std)
    r = np.pi * np.broadcast_to(np.asarray(rots, dtype=np.float64), (len(c),)) / 180.0
    cs, sn = k * np.cos(r), k * np.sin(r)
    out = np.zeros((len(c), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cs, sn, -sn, cs
    out[:, 0, 2] = float(output_size[0]) * 0.5 - cs * c[:, 0] - sn * c[:, 1]
    out[:, 1, 2] = float(output_size[1]) * 0.5 + sn * c[:, 0] - cs * c[:, 1]
    out[:, 2, 2] = 1.0
    return out


def affine_points(pts, M) -> np.ndarray:
    """Apply a 2x3 affine ``M`` to points ``(..., 2)`` (extra trailing columns are ignored)."""
    p = np.asarray(pts, dtype=np.float64)[..., :2]
    M = np.asarray(M, dtype=np.float64)
    return p @ M[:, :2].T + M[:, 2]


def crop(image: np.ndarray, center, scale, rot: float, output_size) -> np.ndarray:
    """Warp the rotated box ``(center, scale)`` of ``image`` (H, W, C) to ``output_size`` (w, h)."""
    M = get_affine_transform(center, scale, rot, output_size)
    return cv2.warpAffine(image, M, (int(output_size[0]), int(output_size[1])), flags=cv2.INTER_LINEAR)


def fliplr_keypoints(kpts, width: float, flip_pairs) -> np.ndarray:
    """Mirror keypoints ``(..., K, 3)`` in an image ``width`` pixels wide: x -> width - 1 - x, swap pairs.

    Unlabelled points (v == 0) keep x = 0 so that they stay recognisably empty.
    """
    k = np.array(kpts, dtype=np.float64, copy=True)
    labelled = k[..., 2] > 0
    k[..., 0] = np.where(labelled, width - 1 - k[..., 0], k[..., 0])
    return k[..., flip_permutation(flip_pairs, k.shape[-2]), :]


def transform_preds(coords, center, scale, output_size) -> np.ndarray:
    """Map ``(K, 2)`` coordinates of an ``output_size`` (w, h) map (heatmap or input) back to the image."""
    M = get_affine_transform(center, scale, 0, output_size, inv=True)
    return affine_points(coords, M)


def letterbox_matrix(image_size, output_size) -> tuple[np.ndarray, float, np.ndarray]:
    """Affine that fits a whole ``image_size`` (w, h) image into ``output_size`` keeping its aspect.

    Returns ``(M, zoom, offset)``: input = image * zoom + offset, the image centred with zero padding.
    """
    zoom = min(output_size[0] / image_size[0], output_size[1] / image_size[1])
    offset = (np.asarray(output_size, dtype=np.float64) - np.asarray(image_size, dtype=np.float64) * zoom) / 2
    M = np.array([[zoom, 0.0, offset[0]], [0.0, zoom, offset[1]]], dtype=np.float64)
    return M, float(zoom), offset
