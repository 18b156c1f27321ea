"""The one home of keypoint facts: COCO-17, OpenPose-18 (+ PAF limbs), STM32 13-keypoint layout.

Every other module imports its names, orders, flip pairs and sigmas from here. Keypoint arrays
are ``(..., K, 3)`` with ``x, y, v`` per point (COCO visibility: 0 not labelled / outside the
image, 1 labelled but occluded, 2 visible).
"""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- COCO-17
COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_COCO_KEYPOINTS = len(COCO_KEYPOINTS)

#: COCO skeleton as in the official annotation files (1-based keypoint indices).
COCO_SKELETON_1BASED: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
#: The same skeleton, 0-based (what Python code indexes with).
COCO_SKELETON: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in COCO_SKELETON_1BASED)

#: Left/right pairs swapped by a horizontal flip (0-based; the nose maps to itself).
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)

#: Per-keypoint OKS sigmas used by COCOeval (``pycocotools.cocoeval.Params.kpt_oks_sigmas``).
COCO_OKS_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
     1.07, 1.07, 0.87, 0.87, 0.89, 0.89], dtype=np.float64) / 10.0

#: HRNet's per-joint loss weights (``lib/dataset/coco.py``: ``joints_weight``).
COCO_JOINTS_WEIGHT = np.array(
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5],
    dtype=np.float32)
COCO_UPPER_BODY_IDS: tuple[int, ...] = tuple(range(11))
COCO_LOWER_BODY_IDS: tuple[int, ...] = tuple(range(11, 17))


def flip_permutation(flip_pairs, num_keypoints: int) -> list[int]:
    """Index list ``p`` such that ``flipped[..., i, :] = original[..., p[i], :]``."""
    perm = list(range(num_keypoints))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


COCO_FLIP_INDEX: tuple[int, ...] = tuple(flip_permutation(COCO_FLIP_PAIRS, NUM_COCO_KEYPOINTS))

# --------------------------------------------------------------------------- OpenPose-18
OPENPOSE_KEYPOINTS: tuple[str, ...] = (
    "nose", "neck", "r_sho", "r_elb", "r_wri", "l_sho", "l_elb", "l_wri", "r_hip",
    "r_knee", "r_ank", "l_hip", "l_knee", "l_ank", "r_eye", "l_eye", "r_ear", "l_ear",
)
NUM_OPENPOSE_KEYPOINTS = len(OPENPOSE_KEYPOINTS)
OPENPOSE_NECK = 1
#: COCO index feeding each OpenPose keypoint; the neck (-1) is the mean of both shoulders.
OPENPOSE_FROM_COCO: tuple[int, ...] = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
_GATHER_FROM_COCO = np.array([max(c, 0) for c in OPENPOSE_FROM_COCO])  # neck row: computed instead
#: OpenPose index feeding each COCO keypoint (inverse of the map above, neck unused).
COCO_FROM_OPENPOSE: tuple[int, ...] = tuple(OPENPOSE_FROM_COCO.index(c) for c in range(NUM_COCO_KEYPOINTS))
#: The 19 limbs in LW-OpenPose's grouping order (OpenPose-18 indices).
OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)
#: PAF (x, y) channel pair of each limb above, in the same order.
OPENPOSE_PAF_CHANNELS: tuple[tuple[int, int], ...] = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27),
)
NUM_OPENPOSE_PAFS = 2 * len(OPENPOSE_LIMBS)  # 38
NUM_OPENPOSE_HEATMAPS = NUM_OPENPOSE_KEYPOINTS + 1  # 18 keypoints + background
OPENPOSE_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))


def coco17_to_openpose18(kpts) -> np.ndarray:
    """COCO-17 ``(..., 17, 3)`` -> OpenPose-18 ``(..., 18, 3)``.

    The neck is the mean of the two shoulders, labelled only when both are labelled; its
    visibility is the lower of the two (visible only if both shoulders are visible).
    """
    k = np.asarray(kpts, dtype=np.float64)
    if k.shape[-2:] != (NUM_COCO_KEYPOINTS, 3):
        raise ValueError(f"expected (..., 17, 3) COCO keypoints, got shape {k.shape}")
    out = np.take(k, _GATHER_FROM_COCO, axis=-2)       # a C-ordered copy; the neck row is set below
    ls, rs = k[..., 5, :], k[..., 6, :]
    both = (ls[..., 2] > 0) & (rs[..., 2] > 0)
    out[..., OPENPOSE_NECK, :2] = np.where(both[..., None], (ls[..., :2] + rs[..., :2]) / 2, 0.0)
    out[..., OPENPOSE_NECK, 2] = np.where(both, np.minimum(ls[..., 2], rs[..., 2]), 0.0)
    return out


def openpose18_to_coco17(kpts, pixel_offset: float = 0.0) -> np.ndarray:
    """OpenPose-18 ``(..., 18, 3)`` -> COCO-17 ``(..., 17, 3)`` (the neck is dropped).

    ``pixel_offset`` is added to labelled x/y; LW-OpenPose's ``val.py`` adds 0.5 to the
    coordinates its decoder produces (cell-centre convention). Unlabelled points stay zero.
    """
    k = np.asarray(kpts, dtype=np.float64)
    if k.shape[-2:] != (NUM_OPENPOSE_KEYPOINTS, 3):
        raise ValueError(f"expected (..., 18, 3) OpenPose keypoints, got shape {k.shape}")
    out = k[..., list(COCO_FROM_OPENPOSE), :].copy()
    labelled = out[..., 2] > 0
    out[..., :2] = np.where(labelled[..., None], out[..., :2] + pixel_offset, 0.0)
    return out


# --------------------------------------------------------------------------- STM32 13 keypoints
#: 13-keypoint layout: one "head" point (replacing the 5 face points) + the 12 body joints.
STM32_13_KEYPOINTS: tuple[str, ...] = ("head",) + COCO_KEYPOINTS[5:]
COCO_FACE_IDS: tuple[int, ...] = (0, 1, 2, 3, 4)
STM32_13_FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple((a - 4, b - 4) for a, b in COCO_FLIP_PAIRS if a >= 5)
STM32_13_SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2),  # head to shoulders
) + tuple((a - 4, b - 4) for a, b in COCO_SKELETON if a >= 5 and b >= 5)


def coco17_to_stm32_13(kpts) -> np.ndarray:
    """COCO-17 ``(..., 17, 3)`` -> 13 keypoints ``(..., 13, 3)``.

    The head is the visibility-weighted mean of the 5 face points (weights = v, so visible points
    count twice as much as occluded ones); its visibility is the highest face visibility.
    The 12 body joints are copied.
    """
    k = np.asarray(kpts, dtype=np.float64)
    if k.shape[-2:] != (NUM_COCO_KEYPOINTS, 3):
        raise ValueError(f"expected (..., 17, 3) COCO keypoints, got shape {k.shape}")
    face = k[..., list(COCO_FACE_IDS), :]
    w = face[..., 2]
    wsum = w.sum(-1)
    safe = np.where(wsum > 0, wsum, 1.0)
    head_xy = (face[..., :2] * w[..., None]).sum(-2) / safe[..., None]
    out = np.zeros(k.shape[:-2] + (13, 3), dtype=np.float64)
    out[..., 0, :2] = np.where((wsum > 0)[..., None], head_xy, 0.0)
    out[..., 0, 2] = face[..., 2].max(-1)
    out[..., 1:, :] = k[..., 5:, :]
    return out
