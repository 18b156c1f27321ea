"""Embedded offline pose dataset: procedural multi-person images with COCO-17 keypoints.

The series runs without COCO downloads, so its default data is generated here and written as a
standard COCO person-keypoints JSON plus JPEG files (readable by ``pycocotools``, FiftyOne's COCO
importer and ``posekd_lib.data``).

How a sample is made:

* each person is a 3D skeleton with plausible proportions and joint-angle limits, posed from a
  pose family (standing, walking, arms up, waving, sitting, bending, squatting, reaching,
  kicking, random) and turned to any yaw, so left/right is readable from the front and
  ambiguous from the back as in real photos;
* a pinhole camera projects it (foreshortening); body parts are shaded capsules rasterised
  into a z-buffer together with distractors (limb-like sticks, blobs) and occluders, over a
  cluttered textured background;
* visibility comes from that z-buffer: a keypoint is visible (2) when the front-most surface at
  its pixel belongs to its own person and lies within the local part thickness of the joint,
  occluded (1) when something nearer covers it (own body, another person, an occluder), and
  0 with ``x = y = 0`` outside the image. Face points on the far side of the head (person
  facing away) are left unlabelled (0), as COCO annotators do.

Coordinates follow pycocotools: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so a keypoint
lies on pixel ``(floor(x), floor(y))`` and ``bbox`` is ``[x0, y0, w, h]`` of the pixel mask.
Everything is deterministic from the seed; image ``i`` of a split uses
``np.random.default_rng([split_seed, i])``, so the output does not depend on the worker count.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import get_mode, run_paths
from .keypoints import COCO_KEYPOINTS, COCO_SKELETON_1BASED, NUM_COCO_KEYPOINTS

SYNTH_VERSION = "posekd-synth 1.0"
DEFAULT_IMAGE_SIZE = (320, 240)  # (width, height)
JPEG_QUALITY = 90
ANN_FILE_NAME = "person_keypoints.json"
MIN_PERSON_AREA = 10  # pixels; fully hidden people get no annotation at all
MIN_KEYPOINT_AREA = 120  # pixels; smaller people are annotated without keypoints (as in COCO)
_SPLIT_OFFSET = {"train": 1, "val": 2}
_MODE_SIZES = {"quick": {"train": 48, "val": 16}, "workshop": {"train": 3700, "val": 560}}  # ~3.3 persons/image

POSE_KINDS = ("stand", "walk", "arms_up", "wave", "sit", "bend", "squat", "reach", "kick", "random")
_POSE_P = np.array([0.19, 0.19, 0.08, 0.1, 0.11, 0.08, 0.06, 0.09, 0.04, 0.06])

# Joint-angle limits in degrees (arm: elevation from hanging, azimuth 0 = sideways / 90 = forward;
# leg: hip flexion forward, abduction outward, knee flexion).
_ARM_LIMITS = {"elev": (0, 180), "azim": (-60, 130), "elbow": (0, 150)}
_LEG_LIMITS = {"flex": (-35, 125), "abd": (-10, 45), "knee": (0, 150)}
_BODY_LIMITS = {"bend": (-15, 90), "lean": (-25, 25), "twist": (-35, 35),
                "head_yaw": (-75, 75), "head_pitch": (-35, 45), "roll": (-10, 10)}

# Visibility tolerance per keypoint, in body heights: how far in front of the joint centre the
# front-most surface may lie and still belong to the joint's own part.
_KP_TOL = np.array([0.03, 0.02, 0.02, 0.03, 0.03, 0.07, 0.07, 0.055, 0.055, 0.045, 0.045,
                    0.095, 0.095, 0.07, 0.07, 0.055, 0.055])
_FACE_AWAY_COS = np.array([0.3, 0.25, 0.25, 0.6, 0.6])  # cos(normal, view) above which a face point is unlabelled

_SKIN = np.array([[255, 222, 196], [241, 194, 167], [224, 172, 130], [198, 140, 96],
                  [160, 105, 70], [120, 80, 52], [86, 58, 40]], np.float32) / 255
_HAIR = np.array([[22, 18, 16], [55, 38, 28], [105, 72, 44], [196, 165, 110], [150, 148, 145],
                  [140, 62, 30]], np.float32) / 255


@dataclass(frozen=True)
class CocoSplit:
    """One split on disk: the COCO keypoint JSON and the folder its ``file_name`` entries live in."""

    ann_file: Path
    img_dir: Path


@dataclass(frozen=True)
class EmbeddedDataset:
    """The cached embedded dataset: its root folder and the two splits."""

    root: Path
    train: CocoSplit
    val: CocoSplit


def sizes_for_mode(mode: str) -> dict:
    """Images per split for a run mode (``full`` uses real COCO, so it has no embedded size)."""
    m = get_mode(mode)
    if m not in _MODE_SIZES:
        raise ValueError(f"mode {m!r} uses real COCO, not the embedded set; "
                         f"pass sizes={{'train': n, 'val': n}} to ensure_embedded_dataset to generate one anyway")
    return dict(_MODE_SIZES[m])


# --------------------------------------------------------------------------- 3D people
def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.35:
        g = rng.uniform(0.08, 0.92)
        return np.clip(g + rng.normal(0, 0.03, 3), 0, 1).astype(np.float32)
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.25, 0.95), rng.uniform(0.25, 0.95)),
                    np.float32)


def _sample_pose(rng: np.random.Generator, kind: str) -> dict:
    """Joint angles (degrees) for one pose family, jittered and clipped to the joint limits."""
    u = rng.uniform
    body = {"bend": u(-3, 8), "lean": rng.normal(0, 3), "twist": rng.normal(0, 8),
            "head_yaw": rng.normal(0, 25), "head_pitch": rng.normal(5, 10), "roll": rng.normal(0, 2)}
    arms = [{"elev": u(3, 25), "azim": u(-20, 70), "elbow": u(0, 30), "hint": u(-0.5, 0.5)} for _ in range(2)]
    legs = [{"flex": u(-4, 6), "abd": u(0, 8), "knee": u(0, 10)} for _ in range(2)]
    side = int(rng.integers(2))
    if kind == "walk":
        ph = u(-1, 1)
        for s, sign in ((0, 1.0), (1, -1.0)):
            swing = sign * ph
            legs[s].update(flex=30 * swing, knee=u(5, 20) + (u(15, 45) if swing < 0 else 0.0))
            arms[s].update(elev=abs(25 * ph) + u(0, 8), azim=-90.0 if swing > 0 else 90.0, elbow=u(10, 40))
    elif kind == "arms_up":
        for a in arms:
            a.update(elev=u(115, 178), azim=u(-10, 60), elbow=u(0, 50))
    elif kind == "wave":
        arms[side].update(elev=u(80, 150), azim=u(-10, 40), elbow=u(40, 120), hint=u(0.5, 1.5))
    elif kind == "sit":
        body.update(bend=u(-10, 15))
        for leg in legs:
            leg.update(flex=u(70, 100), knee=u(70, 110), abd=u(3, 18))
        for a in arms:
            a.update(elev=u(15, 45), azim=u(50, 95), elbow=u(40, 90))
    elif kind == "bend":
        body.update(bend=u(30, 80))
        for leg in legs:
            leg.update(flex=u(-5, 10), knee=u(0, 25))
        for a in arms:
            a.update(elev=body["bend"] + u(-15, 25), azim=u(70, 100), elbow=u(0, 40))
    elif kind == "squat":
        body.update(bend=u(20, 45))
        for leg in legs:
            leg.update(flex=u(85, 120), knee=u(100, 140), abd=u(10, 30))
        for a in arms:
            a.update(elev=u(40, 95), azim=u(60, 100), elbow=u(0, 60))
    elif kind == "reach":
        body.update(twist=u(-25, 25))
        arms[side].update(elev=u(50, 120), azim=u(-10, 110), elbow=u(0, 25))
    elif kind == "kick":
        legs[side].update(flex=u(30, 85), knee=u(0, 70), abd=u(0, 20))
        legs[1 - side].update(knee=u(0, 25))
        for a in arms:
            a.update(elev=u(20, 80), azim=u(-30, 60), elbow=u(10, 70))
    elif kind == "random":
        body.update(bend=u(-10, 50), lean=u(-15, 15))
        for a in arms:
            a.update(elev=u(0, 180), azim=u(-50, 120), elbow=u(0, 140), hint=u(-1, 1))
        for leg in legs:
            leg.update(flex=u(-25, 100), knee=u(0, 120), abd=u(-5, 35))
    elif kind != "stand":
        raise ValueError(f"unknown pose kind {kind!r}; expected one of {POSE_KINDS}")
    clip = lambda d, lim: {k: min(max(float(v), lim[k][0]), lim[k][1]) if k in lim else float(v) for k, v in d.items()}
    return {"kind": kind, "body": clip(body, _BODY_LIMITS), "arms": [clip(a, _ARM_LIMITS) for a in arms],
            "legs": [clip(leg, _LEG_LIMITS) for leg in legs]}


def sample_person(rng: np.random.Generator, kind: str | None = None, yaw: float | None = None) -> dict:
    """A random person: height, proportions, pose, body yaw (degrees; 0 faces the camera) and look."""
    kind = kind or POSE_KINDS[int(rng.choice(len(POSE_KINDS), p=_POSE_P / _POSE_P.sum()))]
    skin_i = rng.uniform(0, len(_SKIN) - 1)
    lo = int(skin_i)
    skin = (_SKIN[lo] * (1 - skin_i + lo) + _SKIN[min(lo + 1, len(_SKIN) - 1)] * (skin_i - lo))
    shirt = _random_colour(rng)
    return {
        "height": rng.uniform(1.5, 1.92),
        "build": rng.uniform(0.85, 1.25),
        "lengths": rng.uniform(0.93, 1.07, 6),  # torso, upper arm, forearm, thigh, shin, shoulders
        "pose": _sample_pose(rng, kind),
        "yaw": float(rng.uniform(0, 360) if yaw is None else yaw),
        "skin": np.clip(skin * rng.uniform(0.94, 1.05), 0, 1),
        "hair": np.clip(_HAIR[int(rng.integers(len(_HAIR)))] * rng.uniform(0.8, 1.2), 0, 1),
        "hair_style": int(rng.choice(3, p=[0.1, 0.55, 0.35])),  # bald, short, long
        "shirt": shirt,
        "shirt2": _random_colour(rng) if rng.random() < 0.3 else shirt,
        "stripes": int(rng.integers(3, 9)),
        "pants": _random_colour(rng),
        "shoes": np.clip(_random_colour(rng) * 0.6, 0, 1),
        "long_sleeves": bool(rng.random() < 0.5),
        "shorts": bool(rng.random() < 0.25),
        "stool": _random_colour(rng) * 0.8 if rng.random() < 0.7 else None,
    }


def _rot(v: np.ndarray, w: np.ndarray, ang: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the orthonormal pair (v, w) in their plane by ``ang`` radians (v turns toward w)."""
    c, s = np.cos(ang), np.sin(ang)
    return c * v + s * w, c * w - s * v


def person_skeleton(person: dict) -> dict:
    """3D points (metres, pelvis at the origin, camera axes: x right, y up, z away) of one person.

    Returns the 17 COCO keypoints ``kp`` (17, 3), the head centre and frames, and the points
    that the body parts are built from.
    """
    H, pose = person["height"], person["pose"]
    b = {k: np.deg2rad(v) for k, v in pose["body"].items()}
    yaw = np.deg2rad(person["yaw"])
    up = np.array([0.0, 1.0, 0.0])
    left = np.array([np.cos(yaw), 0.0, np.sin(yaw)])  # yaw 0: the person's left is image-right
    fwd = np.array([np.sin(yaw), 0.0, -np.cos(yaw)])  # yaw 0: facing the camera
    up, left = _rot(up, left, b["roll"])
    # pelvis frame (legs) and torso frame: bend forward, lean sideways, twist about the spine
    lp, fp = _rot(left, fwd, -0.3 * b["twist"])
    ut, ft = _rot(up, fwd, b["bend"])
    ut, lt = _rot(ut, left, b["lean"])
    lt, ft = _rot(lt, ft, 0.7 * b["twist"])
    ln = person["lengths"]
    neck = ut * 0.30 * H * ln[0]
    sw, hw = 0.105 * H * ln[5] * min(person["build"], 1.1), 0.085 * H * min(person["build"], 1.15)
    sho = [neck + s * lt * sw - ut * 0.02 * H for s in (1, -1)]
    hips = [s * lp * hw for s in (1, -1)]
    # head frame: yaw about the spine, then pitch (nod) about the left axis
    fh, lh = _rot(ft, lt, np.deg2rad(pose["body"]["head_yaw"]))
    uh, fh = _rot(ut, fh, b["head_pitch"])
    r_head = 0.055 * H
    head = neck + ut * 0.045 * H + uh * 0.06 * H
    face_dirs = [_unit(0.85 * fh + 0.28 * uh + s * 0.40 * lh) for s in (1, -1)]
    ears = [head + r_head * 0.98 * _unit(s * lh - 0.1 * fh) for s in (1, -1)]
    nose = head + r_head * (1.1 * fh - 0.2 * uh)
    eyes = [head + r_head * d for d in face_dirs]

    elbows, wrists, hands = [], [], []
    for s, arm, sh in zip((1, -1), pose["arms"], sho):
        e, az, eb = (np.deg2rad(arm[k]) for k in ("elev", "azim", "elbow"))
        d = np.cos(e) * -ut + np.sin(e) * (np.cos(az) * s * lt + np.sin(az) * ft)
        hint = ft + arm["hint"] * (0.6 * ut) + 0.15 * s * lt
        p = hint - hint.dot(d) * d
        p = _unit(p) if np.linalg.norm(p) > 1e-3 else _unit(ut - ut.dot(d) * d + 1e-3 * ft)
        fa = np.cos(eb) * d + np.sin(eb) * p
        elbows.append(sh + d * 0.17 * H * ln[1])
        wrists.append(elbows[-1] + fa * 0.145 * H * ln[2])
        hands.append(wrists[-1] + fa * 0.045 * H)
    knees, ankles, toes = [], [], []
    for s, leg, hip in zip((1, -1), pose["legs"], hips):
        fl, ab, kn = (np.deg2rad(leg[k]) for k in ("flex", "abd", "knee"))
        side = s * lp
        thigh = np.cos(ab) * (np.cos(fl) * -up + np.sin(fl) * fp) + np.sin(ab) * side
        shin = np.cos(ab) * (np.cos(fl - kn) * -up + np.sin(fl - kn) * fp) + np.sin(ab) * side
        knees.append(hip + thigh * 0.245 * H * ln[3])
        ankles.append(knees[-1] + shin * 0.245 * H * ln[4])
        foot = _unit(fp - fp.dot(shin) * shin * 0.7 + 0.15 * side)
        toes.append(ankles[-1] + foot * 0.13 * H - shin * 0.02 * H)
    kp = np.stack([nose, eyes[0], eyes[1], ears[0], ears[1], sho[0], sho[1], elbows[0], elbows[1],
                   wrists[0], wrists[1], hips[0], hips[1], knees[0], knees[1], ankles[0], ankles[1]])
    return {"kp": kp, "head": head, "fh": fh, "uh": uh, "lh": lh, "r_head": r_head, "neck": neck,
            "lt": lt, "ft": ft, "ut": ut, "hands": hands, "toes": toes, "eye_dirs": face_dirs}


def _person_parts(person: dict, sk: dict, face_details: bool = True) -> list[tuple]:
    """Capsules ``(p0, p1, r0, r1, colour, cap, stripes, colour2)`` in metres for one person.

    ``face_details`` (eyes, nose, mouth, ears) is switched off for heads only a few pixels wide.
    """
    H, k, bw = person["height"], sk["kp"], person["build"]
    skin, hair, shirt, pants = person["skin"], person["hair"], person["shirt"], person["pants"]
    sleeve = shirt if person["long_sleeves"] else skin
    calf = skin if person["shorts"] else pants
    head, r, fh, uh, lh = sk["head"], sk["r_head"], sk["fh"], sk["uh"], sk["lh"]
    dark = skin * 0.8
    parts = [
        (head - 0.2 * r * uh, head + 0.2 * r * uh, r, r, skin, 1.0, 0, None),
        (sk["neck"], head - 0.6 * r * uh, 0.45 * r, 0.45 * r, skin, 1.0, 0, None),
        (k[5], k[6], 0.048 * H * bw, 0.048 * H * bw, shirt, 1.0, 0, None),
        (k[11], k[12], 0.065 * H * bw, 0.065 * H * bw, pants, 1.0, 0, None),
        (sk["neck"] - 0.02 * H * sk["ut"], (k[11] + k[12]) / 2, "trunk", "trunk", shirt, 2.5,
         person["stripes"] if person["shirt2"] is not shirt else 0, person["shirt2"]),
        ((head + r * 0.95 * _unit(fh - 0.52 * uh)) - 0.22 * r * lh, (head + r * 0.95 * _unit(fh - 0.52 * uh)) + 0.22 * r * lh,
         0.07 * r, 0.07 * r, np.array([0.45, 0.15, 0.15], np.float32), 1.0, 0, None),
        (k[0] - 0.15 * r * fh, k[0] - 0.15 * r * fh, 0.2 * r, 0.2 * r, dark, 1.0, 0, None),
    ]
    if not face_details:
        del parts[-2:]
    else:
        for d in sk["eye_dirs"]:
            parts.append((head + 0.93 * r * d, head + 0.93 * r * d, 0.17 * r, 0.17 * r, np.full(3, 0.92, np.float32),
                          1.0, 0, None))
            parts.append((head + 1.03 * r * d, head + 1.03 * r * d, 0.09 * r, 0.09 * r, np.full(3, 0.06, np.float32),
                          1.0, 0, None))
        for e in (k[3], k[4]):
            parts.append((e, e, 0.22 * r, 0.22 * r, dark, 1.0, 0, None))
    if person["hair_style"] > 0:
        hc = head - 0.18 * r * fh + 0.12 * r * uh
        parts.append((hc - 0.2 * r * uh, hc + 0.2 * r * uh, 1.02 * r, 1.02 * r, hair, 1.0, 0, None))
        if person["hair_style"] == 2:
            parts.append((head - 0.3 * r * fh, head - 0.3 * r * fh - 1.4 * r * uh, 0.85 * r, 0.75 * r, hair, 1.0, 0, None))
    for s in (0, 1):
        sh, el, wr, hip, kn, an = k[5 + s], k[7 + s], k[9 + s], k[11 + s], k[13 + s], k[15 + s]
        parts += [
            (sh, el, 0.042 * H * bw, 0.034 * H * bw, shirt, 1.0, 0, None),
            (el, wr, 0.033 * H * bw, 0.025 * H * bw, sleeve, 1.0, 0, None),
            (wr, sk["hands"][s], 0.024 * H, 0.027 * H, skin, 1.0, 0, None),
            (hip, kn, 0.068 * H * bw, 0.047 * H * bw, pants, 1.0, 0, None),
            (kn, an, 0.046 * H * bw, 0.032 * H * bw, calf, 1.0, 0, None),
            (an, sk["toes"][s], 0.03 * H, 0.026 * H, person["shoes"], 1.0, 0, None),
        ]
    return parts


# --------------------------------------------------------------------------- rasteriser
@dataclass
class _Canvas:
    colour: np.ndarray  # (H, W, 3) float32 in [0, 1]
    depth: np.ndarray  # (H, W) float32, camera z of the front-most surface (inf = background)
    label: np.ndarray  # (H, W) uint8, person index + 1 of the front-most surface, 0 = none
    light: np.ndarray  # unit vector toward the light, image axes (x right, y down, z away)
    ambient: float


def _draw_capsule(cv: _Canvas, a, b, colour, label: int, cap: float = 1.0, stripes: int = 0, colour2=None):
    """Z-buffer a shaded (tapered) capsule; ``a``/``b`` are ``(x, y, z, r_px, r_z)`` end points.

    ``cap`` > 1 flattens the round end caps (used for the trunk).
    """
    ax, ay, az, ar, arz = a
    bx, by, bz, br, brz = b
    h, w = cv.depth.shape
    rm = max(ar, br)
    x0, x1 = max(int(np.floor(min(ax, bx) - rm)), 0), min(int(np.ceil(max(ax, bx) + rm)) + 1, w)
    y0, y1 = max(int(np.floor(min(ay, by) - rm)), 0), min(int(np.ceil(max(ay, by) + rm)) + 1, h)
    if x0 >= x1 or y0 >= y1 or rm < 0.35:
        return
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - ax)
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - ay)
    dx, dy = np.float32(bx - ax), np.float32(by - ay)
    l2 = float(dx * dx + dy * dy)
    if l2 > 1e-6:
        traw = px * np.float32(dx / l2) + py * np.float32(dy / l2)
        t = np.minimum(np.maximum(traw, 0), 1)
        ex, ey = px - t * dx, py - t * dy
        if cap != 1.0:
            over = (traw - t) * np.float32(cap - 1.0)
            ex += over * dx
            ey += over * dy
    else:
        t = np.zeros((y1 - y0, x1 - x0), np.float32)
        ex, ey = px + t, py + t
    rr = np.maximum(ar + t * np.float32(br - ar), np.float32(0.3)) if ar != br else np.float32(max(ar, 0.3))
    q = (ex * ex + ey * ey) / (rr * rr)
    iy, ix = np.nonzero(q < 1.0)
    if not len(iy):
        return
    ti, qi, exi, eyi = t[iy, ix], q[iy, ix], ex[iy, ix], ey[iy, ix]
    ri = rr[iy, ix] if np.ndim(rr) else rr
    nz = np.sqrt(1.0 - qi)
    depth = az + ti * np.float32(bz - az) - nz * (arz + ti * np.float32(brz - arz))
    iy += y0
    ix += x0
    front = depth < cv.depth[iy, ix]
    if not front.any():
        return
    iy, ix, ti, nz, depth = iy[front], ix[front], ti[front], nz[front], depth[front]
    lx, ly, lz = cv.light
    shade = (exi[front] * lx + eyi[front] * ly) / (ri[front] if np.ndim(ri) else ri) - nz * lz
    shade = cv.ambient + (1 - cv.ambient) * np.minimum(np.maximum(shade, 0), 1)
    col = np.asarray(colour, np.float32)
    if stripes:
        odd = (np.floor(ti * stripes) % 2).astype(bool)[:, None]
        col = np.where(odd, np.asarray(colour2, np.float32), col)
    cv.depth[iy, ix] = depth
    cv.colour[iy, ix] = shade[:, None] * col
    cv.label[iy, ix] = label


def _draw_polygon(cv: _Canvas, pts: np.ndarray, z: float, colour, label: int = 0):
    """Z-buffer a flat convex polygon (image points) at depth ``z`` with a soft vertical shade."""
    h, w = cv.depth.shape
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, [w, h])
    if x0 >= x1 or y0 >= y1:
        return
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(m, np.round(pts - [x0, y0]).astype(np.int32), 1)
    dv = cv.depth[y0:y1, x0:x1]
    upd = m.astype(bool) & (z < dv)
    if not upd.any():
        return
    g = np.linspace(1.05, 0.8, y1 - y0, dtype=np.float32)[:, None, None] * cv.ambient ** 0.3
    rgb = np.broadcast_to(g * np.asarray(colour, np.float32), (y1 - y0, x1 - x0, 3))
    dv[upd] = z
    cv.colour[y0:y1, x0:x1][upd] = rgb[upd]
    cv.label[y0:y1, x0:x1][upd] = label


# --------------------------------------------------------------------------- scenes
def _background(rng: np.random.Generator, w: int, h: int, d: float) -> np.ndarray:
    """Gradient wall/floor, low-frequency texture, random shapes and lines (float RGB in [0, 1])."""
    th = rng.uniform(0, 2 * np.pi)
    g = ((np.cos(th) * np.arange(w, dtype=np.float32)[None, :] + np.sin(th) * np.arange(h, dtype=np.float32)[:, None])
         / max(w, h) + 1) / 2
    c1, c2 = _random_colour(rng), _random_colour(rng)
    cell = int(rng.integers(12, 48))
    lf = cv2.resize(rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32), (w, h),
                    interpolation=cv2.INTER_CUBIC) * np.float32(rng.uniform(0.01, 0.04 + 0.06 * d))
    tint = 0.5 + rng.uniform(0, 1, 3).astype(np.float32)
    img = cv2.merge([c1[c] + (c2[c] - c1[c]) * g + tint[c] * lf for c in range(3)])
    if rng.random() < 0.6:  # floor below a horizon
        hor = int(rng.uniform(0.3, 0.8) * h)
        f1, f2 = _random_colour(rng) * 0.8, _random_colour(rng) * 0.8
        fy = np.linspace(0, 1, h - hor, dtype=np.float32)[:, None, None]
        img[hor:] = f1 + (f2 - f1) * fy
    img = (np.minimum(np.maximum(img, 0), 1) * 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 6 + int(28 * d)))):
        col = tuple(float(c) for c in _random_colour(rng) * 255)
        kind = rng.random()
        p = (int(rng.uniform(-0.1, 1.1) * w), int(rng.uniform(-0.1, 1.1) * h))
        s = int(rng.uniform(0.03, 0.35) * max(w, h))
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
        if kind < 0.35:
            cv2.rectangle(img, p, (p[0] + s, p[1] + int(s * rng.uniform(0.3, 2))), col, thick)
        elif kind < 0.55:
            cv2.circle(img, p, s // 2, col, thick, cv2.LINE_AA)
        elif kind < 0.75:
            cv2.ellipse(img, p, (s // 2, int(s * rng.uniform(0.1, 0.5))), rng.uniform(0, 180), 0, 360, col,
                        thick, cv2.LINE_AA)
        else:
            q = (int(rng.uniform(0, 1) * w), int(rng.uniform(0, 1) * h))
            cv2.line(img, p, q, col, int(rng.integers(1, 6)), cv2.LINE_AA)
    if rng.random() < 0.3:  # tiled / striped texture patch (floor, wall paper)
        step = int(rng.integers(6, 24))
        sub = img[int(rng.uniform(0, 0.7) * h):]
        tiles = (np.arange(len(sub))[:, None] // step + np.arange(w)[None, :] // step) % 2 == 0
        np.copyto(sub, (sub >> 1) + (sub >> 2), where=tiles[..., None])
    return img.astype(np.float32) * np.float32(1 / 255)


def sample_scene(rng: np.random.Generator, difficulty: float = 0.5, image_size=DEFAULT_IMAGE_SIZE) -> dict:
    """Random scene: camera, people placed in 3D (pelvis position), distractors and occluders."""
    w, h = image_size
    d = float(np.clip(difficulty, 0.0, 1.0))
    f = float(w * rng.uniform(0.9, 1.5))
    scene = {"size": (int(w), int(h)), "difficulty": d, "f": f, "roll": float(rng.normal(0, 4 * d)),
             "bg_seed": int(rng.integers(2**31)), "persons": [], "objects": []}
    lo, hi = 70.0 - 40.0 * d, 1.1 * h
    placed = []
    for i in range(int(rng.integers(1, 7))):
        p = sample_person(rng)
        s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # standing height in pixels
        if placed and rng.random() < 0.2 + 0.4 * d:  # overlap a previous person
            pu, ps = placed[int(rng.integers(len(placed)))]
            u = pu + rng.choice([-1, 1]) * rng.uniform(0.1, 0.45) * (ps + s) / 2
        elif i == 0:  # the first person is always well inside the image
            u = rng.uniform(0.1, 0.9) * w
        else:
            wide = 0.12 if rng.random() < 0.15 + 0.35 * d else 0.0
            u = rng.uniform(-0.02 - wide, 1.02 + wide) * w
        a, b = 0.47 * s, h - 0.53 * s
        v = rng.uniform(min(a, b), max(a, b)) + (rng.normal(0, 0.25 * s) if rng.random() < 0.3 * d else 0.0)
        z = f * p["height"] / s
        p["pos"] = np.array([(u - w / 2) * z / f, -(v - h / 2) * z / f, z])
        scene["persons"].append(p)
        placed.append((u, s))
    zs = [p["pos"][2] for p in scene["persons"]]
    for _ in range(int(rng.poisson(1.0 + 4.0 * d))):  # distractors anywhere in depth
        scene["objects"].append({
            "kind": "stick" if rng.random() < 0.6 else "blob",
            "xy": rng.uniform([0, 0], [w, h]), "len": rng.uniform(0.05, 0.3) * h, "ang": rng.uniform(0, np.pi),
            "r": rng.uniform(2, 9), "z": float(rng.uniform(0.6, 1.6) * max(zs)),
            "colour": (_SKIN[int(rng.integers(len(_SKIN)))] if rng.random() < 0.4 else _random_colour(rng))})
    for _ in range(int(rng.poisson(1.2 * d))):  # occluders just in front of a person
        p = scene["persons"][int(rng.integers(len(scene["persons"])))]
        z = float(p["pos"][2] * rng.uniform(0.7, 0.95))
        s_px = f * p["height"] / p["pos"][2]
        cx = w / 2 + f * p["pos"][0] / p["pos"][2] + rng.normal(0, 0.25 * s_px)
        cy = h / 2 - f * p["pos"][1] / p["pos"][2] + rng.normal(0, 0.3 * s_px)
        scene["objects"].append({
            "kind": ["box", "pole", "blob", "stick"][int(rng.choice(4, p=[0.45, 0.2, 0.2, 0.15]))],
            "xy": np.array([cx, cy]), "len": rng.uniform(0.2, 0.6) * s_px, "ang": rng.uniform(0, np.pi),
            "aspect": rng.uniform(0.3, 1.5), "r": rng.uniform(0.03, 0.1) * s_px, "z": z,
            "colour": _random_colour(rng)})
    return scene


def _project(pts: np.ndarray, scene: dict) -> np.ndarray:
    """World points (N, 3) -> image (N, 2) with the scene's focal length and camera roll."""
    w, h = scene["size"]
    f = scene["f"]
    x = f * pts[:, 0] / pts[:, 2]
    y = -f * pts[:, 1] / pts[:, 2]
    c, s = np.cos(np.deg2rad(scene["roll"])), np.sin(np.deg2rad(scene["roll"]))
    return np.stack([c * x - s * y + w / 2, s * x + c * y + h / 2], 1)


def _render_person(cv: _Canvas, scene: dict, person: dict, label: int, sk: dict):
    f, pos = scene["f"], person["pos"]
    parts = _person_parts(person, sk, face_details=f * sk["r_head"] / (pos[2] + sk["head"][2]) >= 3.0)
    if person["pose"]["kind"] == "sit" and person["stool"] is not None:  # a seat behind the legs
        H, base = person["height"], pos + (sk["kp"][11] + sk["kp"][12]) / 2
        foot_y = min(sk["kp"][15][1], sk["kp"][16][1]) + pos[1]
        corners = base + np.array([[-0.16, -0.05, 0.12], [0.16, -0.05, 0.12], [0.16, 0, 0.12], [-0.16, 0, 0.12]]) * H
        corners[2:, 1] = foot_y
        _draw_polygon(cv, _project(corners, scene), float(base[2] + 0.12 * H), person["stool"])
    ends = np.array([[p[0], p[1]] for p in parts]).reshape(-1, 3) + pos
    xy = _project(ends, scene).reshape(-1, 2, 2)
    z = ends[:, 2].reshape(-1, 2)
    for (p0, p1, r0, r1, col, cap, stripes, col2), e, zz in zip(parts, xy, z):
        if isinstance(r0, str):  # trunk: elliptic cross-section seen from the camera
            axis = e[1] - e[0]
            n = np.array([-axis[1], axis[0]]) / max(np.linalg.norm(axis), 1e-6)
            radii = []
            for c3, half_w in ((p0, 0.10 * person["height"]), (p1, 0.095 * person["height"])):
                half_w *= person["build"]
                q = _project(np.stack([c3, c3 + sk["lt"] * half_w, c3 + sk["ft"] * 0.07 * person["height"]
                                       * person["build"]]) + pos, scene)
                radii.append(float(np.hypot((q[1] - q[0]) @ n, (q[2] - q[0]) @ n)))
            a = (e[0][0], e[0][1], zz[0], radii[0], radii[0] * zz[0] / f)
            b = (e[1][0], e[1][1], zz[1], radii[1], radii[1] * zz[1] / f)
        else:
            a = (e[0][0], e[0][1], zz[0], f * r0 / zz[0], r0)
            b = (e[1][0], e[1][1], zz[1], f * r1 / zz[1], r1)
        _draw_capsule(cv, a, b, col, label, cap, stripes, col2)


def _render_object(cv: _Canvas, obj: dict, scene: dict):
    f, z = scene["f"], obj["z"]
    c, ln, ang, col = obj["xy"], obj["len"], obj["ang"], obj["colour"]
    d = np.array([np.cos(ang), np.sin(ang)]) * ln / 2
    if obj["kind"] == "box":
        n = np.array([-d[1], d[0]]) * obj["aspect"]
        _draw_polygon(cv, np.stack([c - d - n, c + d - n, c + d + n, c - d + n]), z, col)
        return
    if obj["kind"] == "pole":
        d = np.array([0.0, 4.0 * cv.depth.shape[0]])
    r = obj["r"] * (2.5 if obj["kind"] == "blob" else 1.0)
    a, b = c - d * (obj["kind"] != "blob"), c + d * (obj["kind"] != "blob")
    _draw_capsule(cv, (a[0], a[1], z, r, r * z / f), (b[0], b[1], z, r * 0.8, 0.8 * r * z / f), col, 0)


def render_scene(scene: dict) -> tuple[np.ndarray, list[dict], np.ndarray, dict]:
    """Render a scene: RGB uint8 image, annotations (without ids), label map and extras.

    Extras hold the depth buffer and, per annotation, the keypoint depths ``kp_z`` and
    visibility tolerances ``kp_tol`` (metres) used for the visibility flags.
    """
    w, h = scene["size"]
    d = scene["difficulty"]
    rng = np.random.default_rng(scene["bg_seed"])
    light = _unit(np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.3), -rng.uniform(0.5, 1.5)]))
    cv = _Canvas(_background(rng, w, h, d), np.full((h, w), np.inf, np.float32), np.zeros((h, w), np.uint8),
                 light.astype(np.float32), float(rng.uniform(0.35, 0.55)))
    for obj in scene["objects"]:
        _render_object(cv, obj, scene)
    skeletons = [person_skeleton(p) for p in scene["persons"]]
    for i, (p, sk) in enumerate(zip(scene["persons"], skeletons)):
        _render_person(cv, scene, p, i + 1, sk)
    gain = rng.uniform(1 - 0.45 * d, 1 + 0.3 * d) * (1 + rng.normal(0, 0.08 * d, 3))
    gamma = rng.uniform(1 - 0.3 * d, 1 + 0.3 * d)
    lut = np.clip(255 * (np.linspace(0, 1, 256)[:, None] * gain) ** gamma + 0.5, 0, 255).astype(np.uint8)
    img = cv2.LUT(cv2.convertScaleAbs(cv.colour, alpha=255), np.ascontiguousarray(lut.reshape(256, 1, 3)))
    if rng.random() < 0.5 * d:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.4))
    if d > 0:
        n = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(0, 8 * d))
        img = cv2.add(img, cv2.merge([n, n, n]), dtype=cv2.CV_8U)

    anns, extras = [], {"depth": cv.depth, "kp_z": [], "kp_tol": [], "person_index": []}
    for i, (p, sk) in enumerate(zip(scene["persons"], skeletons)):
        mask = cv.label == i + 1
        area = int(mask.sum())
        if area < MIN_PERSON_AREA:
            continue
        world = sk["kp"] + p["pos"]
        xy = np.round(_project(world, scene), 2)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        ix = np.clip(np.floor(xy[:, 0]).astype(int), 0, w - 1)
        iy = np.clip(np.floor(xy[:, 1]).astype(int), 0, h - 1)
        tol = _KP_TOL * p["height"]
        seen = inside & (cv.label[iy, ix] == i + 1) & (cv.depth[iy, ix] >= world[:, 2] - tol)
        v = np.where(inside, np.where(seen, 2, 1), 0)
        normals = (world[:5] - (sk["head"] + p["pos"])) / sk["r_head"]
        view = world[:5] / np.linalg.norm(world[:5], axis=1, keepdims=True)
        v[:5][np.einsum("ij,ij->i", normals / np.linalg.norm(normals, axis=1, keepdims=True), view)
              > _FACE_AWAY_COS] = 0
        if area < MIN_KEYPOINT_AREA:
            v[:] = 0
        kps = np.concatenate([np.where(v[:, None] > 0, xy, 0.0), v[:, None]], 1)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        seg = [cv2.approxPolyDP(c, 0.7, True).reshape(-1).astype(float).tolist() for c in contours]
        anns.append({
            "segmentation": [s for s in seg if len(s) >= 6] or [[float(cols[0]), float(rows[0]), float(cols[-1]),
                                                                 float(rows[0]), float(cols[-1]), float(rows[-1])]],
            "num_keypoints": int((v > 0).sum()),
            "area": area,
            "iscrowd": 0,
            "keypoints": [round(float(x), 2) if j % 3 < 2 else int(x) for j, x in enumerate(kps.reshape(-1))],
            "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
            "category_id": 1,
        })
        extras["kp_z"].append(world[:, 2])
        extras["kp_tol"].append(tol)
        extras["person_index"].append(i)
    return img, anns, cv.label, extras


def render_sample(seed: int, difficulty: float = 0.5, image_size=DEFAULT_IMAGE_SIZE
                  ) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """One random sample: RGB image, COCO annotation dicts (no ids) and the person-label map
    (0 = background, ``i + 1`` = person ``i``; annotations skip people hidden entirely)."""
    img, anns, label, _ = render_scene(sample_scene(np.random.default_rng(seed), difficulty, image_size))
    return img, anns, label


# --------------------------------------------------------------------------- writing splits
def _render_chunk(args) -> list[list[dict]]:
    img_dir, split_seed, indices, difficulty, image_size = args
    cv2.setNumThreads(1)
    out = []
    for i in indices:
        scene = sample_scene(np.random.default_rng([split_seed, i]), difficulty, image_size)
        img, anns, _, _ = render_scene(scene)
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for image {i}")
        (Path(img_dir) / _file_name(i)).write_bytes(buf.tobytes())
        out.append(anns)
    return out


_UNGUARDED = ("the script that calls it has no `if __name__ == \"__main__\":` guard, so every spawned "
              "worker re-runs the script from the top")


def _refuse_in_spawn_bootstrap() -> None:
    """Fail at once in a spawn worker that is re-importing an unguarded main script.

    Under the spawn start method each worker imports the parent's main script as ``__mp_main__``;
    without a ``__main__`` guard that import reaches the generator call again. Exiting here ends
    the worker before it renders anything or starts workers of its own, and the parent (see
    :func:`_render_in_workers`) falls back to rendering in its own process.
    """
    if getattr(mp.current_process(), "_inheriting", False):
        # SystemExit with a one-line message, not a traceback per worker: the parent explains
        raise SystemExit(f"posekd_lib.synth: spawned worker {os.getpid()} stops: it was re-running the main "
                         "script, which has no `if __name__ == \"__main__\":` guard")


def _main_module_frame():
    """The frame running a ``python script.py`` main module's top-level code, if this call is inside it."""
    import sys

    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) is None:  # Jupyter, python -c, the REPL: nothing to re-run
        return None
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "<module>" and f.f_globals is vars(main):
            return f
        f = f.f_back
    return None


def _is_main_guard(test) -> bool:
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(x, ast.Name) and x.id == "__name__" for x in sides)
            and any(isinstance(x, ast.Constant) and x.value == "__main__" for x in sides))


def _unguarded_main_call() -> bool:
    """Whether this call comes from a main script's top-level code outside ``if __name__ == "__main__":``
    (so spawned workers, which re-import the script, would make the call again)."""
    import ast

    frame = _main_module_frame()
    if frame is None:
        return False
    try:
        tree = ast.parse(Path(frame.f_code.co_filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return False  # cannot tell: spawn, and let _render_in_workers's fallback catch it
    line = frame.f_lineno
    return not any(isinstance(n, ast.If) and _is_main_guard(n.test)
                   and n.body[0].lineno <= line <= (n.body[-1].end_lineno or n.body[-1].lineno)
                   for n in ast.walk(tree))


def _render_in_workers(chunks: list, num_workers: int, bar) -> list[list[dict]]:
    """Render ``chunks`` in spawned worker processes, in order; in this process when they would not start.

    Spawn, never fork: a fork after torch/OpenCV started their thread pools can deadlock the
    children (seen under pytest). A spawned worker re-imports the main script, so a call from a
    script's top-level code outside an ``if __name__ == "__main__":`` guard would be made again in
    every worker (with ``Pool``, which replaces dead workers, that hung for minutes): such a call
    (found from the caller's frame and the script's syntax tree) renders here, with a warning. As
    a safety net, a ``ProcessPoolExecutor`` breaks at once when its workers die at start-up
    (:func:`_refuse_in_spawn_bootstrap`), and a call from a main script then also renders here.
    """
    import warnings
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    def here(results: list, why: str) -> list:
        warnings.warn(f"posekd_lib.synth: {why}; rendering in this process instead (slower). Put the call "
                      f"under `if __name__ == \"__main__\":` to use {num_workers} workers.", RuntimeWarning,
                      stacklevel=4)
        for c in chunks[len(results):]:
            results.append(_render_chunk(c))
            bar.update(len(c[2]))
        return results

    results: list[list[dict]] = []
    if _unguarded_main_call():
        results = here(results, f"not starting worker processes: {_UNGUARDED}")
    else:
        try:
            with ProcessPoolExecutor(min(num_workers, len(chunks)), mp_context=mp.get_context("spawn")) as pool:
                for c, res in zip(chunks, pool.map(_render_chunk, chunks)):
                    results.append(res)
                    bar.update(len(c[2]))
        except BrokenProcessPool:
            if _main_module_frame() is None:
                raise
            results = here(results, "the worker processes stopped at start-up (what a main script without an "
                                    "`if __name__ == \"__main__\":` guard makes them do)")
    return [anns for res in results for anns in res]


def _file_name(index: int) -> str:
    return f"{index + 1:012d}.jpg"


def _coco_header(params: dict) -> dict:
    return {
        "info": {"description": "posekd embedded synthetic person keypoints", "version": SYNTH_VERSION,
                 "year": 2026, "contributor": "posekd_lib.synth", "url": "", "date_created": "",
                 "params": params},
        "licenses": [{"id": 1, "name": "CC0 1.0 (procedurally generated)",
                      "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS),
                        "skeleton": [list(p) for p in COCO_SKELETON_1BASED]}],
    }


def generate_split(out_dir: Path, num_images: int, seed: int, difficulty: float = 0.5,
                   image_size=DEFAULT_IMAGE_SIZE, num_workers: int = 2, progress=True,
                   first_index: int = 0) -> CocoSplit:
    """Render ``num_images`` images into ``out_dir/images`` and ``out_dir/person_keypoints.json``.

    The images are those of index ``first_index`` .. ``first_index + num_images - 1`` of the split
    seeded ``seed`` (file names and image ids follow the index), so a split rendered in two parts
    holds the same images as one rendered whole.

    Written to a temporary sibling folder first and renamed at the end, so an interrupted run never
    leaves a half split. Output is byte-identical for a given seed whatever ``num_workers`` is.
    ``num_workers`` > 1 renders in spawned processes, which re-import the main script: called from
    a script without an ``if __name__ == "__main__":`` guard, it renders in this process instead,
    with a warning saying to add the guard (it used to hang for minutes).
    """
    from .config import progress_bar as tqdm

    _refuse_in_spawn_bootstrap()
    out_dir = Path(out_dir)
    w, h = (int(s) for s in image_size)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{time.time_ns()}")
    (tmp / "images").mkdir(parents=True)
    try:
        step = max(1, min(16, num_images // (4 * max(num_workers, 1))))
        end = first_index + num_images
        chunks = [(str(tmp / "images"), int(seed), list(range(s, min(s + step, end))), float(difficulty),
                   (w, h)) for s in range(first_index, end, step)]
        results: list[list[dict]] = []
        with tqdm(total=num_images, desc=f"synth {out_dir.name}", unit="img", disable=not progress) as bar:
            if num_workers <= 1 or len(chunks) <= 1:
                for c in chunks:
                    results += _render_chunk(c)
                    bar.update(len(c[2]))
            else:
                results = _render_in_workers(chunks, num_workers, bar)
        coco = _coco_header({"seed": int(seed), "difficulty": float(difficulty), "image_size": [w, h],
                             "num_images": int(num_images), **({"first_index": int(first_index)} if first_index else {})})
        coco["images"], coco["annotations"] = [], []
        for i, anns in enumerate(results, start=first_index):
            coco["images"].append({"id": i + 1, "file_name": _file_name(i), "width": w, "height": h, "license": 1})
            for a in anns:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, **a})
        (tmp / ANN_FILE_NAME).write_text(json.dumps(coco, separators=(",", ":")))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CocoSplit(out_dir / ANN_FILE_NAME, out_dir / "images")


def _repair_cache(ds: EmbeddedDataset, seed: int, difficulty: float, image_size) -> bool:
    """Check a cached set whose manifest matches: re-render its broken images in place, with a
    warning naming them. False (after a warning) when it cannot be repaired and must be regenerated."""
    import warnings

    from .images import image_problem

    for split_name in ("train", "val"):
        split = getattr(ds, split_name)
        try:
            images = json.loads(split.ann_file.read_text())["images"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"embedded dataset cache {ds.root}: {split.ann_file} is unreadable ({e}); "
                          "regenerating the whole set", RuntimeWarning, stacklevel=3)
            return False
        bad = []
        for img in images:
            path = split.img_dir / img["file_name"]
            try:
                problem = image_problem(path)
            except FileNotFoundError:
                problem = "missing"
            if problem:
                bad.append((int(img["id"]) - 1, path, problem))
        if not bad:
            continue
        shown = "; ".join(f"{p} (image id {i + 1}): {why}" for i, p, why in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"embedded dataset cache {ds.root}: {len(bad)} corrupt {split_name} image(s): "
                      f"{shown}{more}; re-rendering them from the seed", RuntimeWarning, stacklevel=3)
        tmp = split.img_dir.with_name(f".{split.img_dir.name}.repair-{os.getpid()}-{time.time_ns()}")
        tmp.mkdir(parents=True)
        try:
            _render_chunk((str(tmp), seed * 2**20 + _SPLIT_OFFSET[split_name], [i for i, _, _ in bad],
                           float(difficulty), tuple(int(v) for v in image_size)))
            split.img_dir.mkdir(parents=True, exist_ok=True)
            for i, path, _ in bad:
                os.replace(tmp / _file_name(i), path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def _replace_dir(src: Path, dst: Path):
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with as short a gap as possible."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.time_ns()}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _params_digest(params: dict) -> str:
    """The manifest's hash of a cached set's generation parameters."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def ensure_embedded_dataset(mode: str | None = None, root: Path | None = None, seed: int = 0,
                            difficulty: float = 0.5, num_workers: int = 2, progress=True,
                            sizes: dict | None = None, image_size=DEFAULT_IMAGE_SIZE) -> EmbeddedDataset:
    """The embedded train/val set for ``mode``, generated once and cached under ``root``.

    ``root`` defaults to ``run_paths(mode).data / "embedded"``. A ``manifest.json`` records the
    generator version and a hash of the parameters; the set is regenerated only when it is missing
    or either changed. ``sizes`` (``{"train": n, "val": n}`` images) overrides the mode's sizes.

    A reused set is checked first (cheaply: each JPEG's first and last bytes, see
    ``images.image_problem``). Cached images that are missing, empty or truncated (an interrupted
    copy, a full disk) are re-rendered from the seed with a warning that names them (generation
    is deterministic, so they come back byte-identical); a missing or unreadable annotation file
    regenerates the whole set, also with a warning.
    """
    sizes = dict(sizes) if sizes is not None else sizes_for_mode(mode)
    root = Path(root) if root is not None else run_paths(mode).data / "embedded"
    params = {"version": SYNTH_VERSION, "seed": int(seed), "difficulty": float(difficulty),
              "image_size": [int(s) for s in image_size], "sizes": {k: int(sizes[k]) for k in ("train", "val")}}
    digest = _params_digest(params)
    ds = EmbeddedDataset(root, *(CocoSplit(root / s / ANN_FILE_NAME, root / s / "images") for s in ("train", "val")))
    manifest = root / "manifest.json"
    if manifest.exists():
        try:
            cached = json.loads(manifest.read_text()).get("params_hash") == digest
        except json.JSONDecodeError:
            cached = False
        if cached and _repair_cache(ds, seed, difficulty, image_size):
            return ds
    _refuse_in_spawn_bootstrap()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}-{time.time_ns()}")
    try:
        t0 = time.perf_counter()
        counts = {}
        for split in ("train", "val"):
            s = generate_split(tmp / split, sizes[split], seed * 2**20 + _SPLIT_OFFSET[split], difficulty,
                               image_size, num_workers, progress)
            anns = json.loads(s.ann_file.read_text())["annotations"]
            counts[split] = {"images": sizes[split], "persons": len(anns),
                             "persons_with_keypoints": sum(a["num_keypoints"] > 0 for a in anns)}
        (tmp / "manifest.json").write_text(json.dumps(
            {"version": SYNTH_VERSION, "params": params, "params_hash": digest, "counts": counts,
             "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
        _replace_dir(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ds


def ensure_extra_train(mode: str | None = None, images: int = 11100, root: Path | None = None, seed: int = 0,
                       difficulty: float = 0.5, num_workers: int = 2, progress=True,
                       image_size=DEFAULT_IMAGE_SIZE) -> CocoSplit:
    """More training images for the teacher: the images that follow the mode's train split in the
    same seeded sequence (index ``sizes_for_mode(mode)["train"]`` on), generated once and cached
    under ``root`` (default ``run_paths(mode).data / f"embedded_extra_{images}"``).

    The train and val splits are not touched, so every student number keeps its meaning, and the
    validation images stay unseen (they come from another seed). Train on ``train`` + this split
    to see a training split ``1 + images / train`` times larger.
    """
    n_train = sizes_for_mode(mode)["train"]
    root = Path(root) if root is not None else run_paths(mode).data / f"embedded_extra_{int(images)}"
    params = {"version": SYNTH_VERSION, "seed": int(seed), "difficulty": float(difficulty),
              "image_size": [int(s) for s in image_size], "first_index": n_train, "images": int(images)}
    digest = _params_digest(params)
    split, manifest = CocoSplit(root / ANN_FILE_NAME, root / "images"), root / "manifest.json"
    try:
        if json.loads(manifest.read_text()).get("params_hash") == digest and split.ann_file.is_file():
            return split
    except (OSError, json.JSONDecodeError):
        pass
    _refuse_in_spawn_bootstrap()
    t0 = time.perf_counter()
    generate_split(root, int(images), seed * 2**20 + _SPLIT_OFFSET["train"], difficulty, image_size,
                   num_workers, progress, first_index=n_train)
    manifest.write_text(json.dumps({"params": params, "params_hash": digest,
                                    "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return split
