"""Scenes: a camera, a cluttered background, people, distractors and occluders, rendered to an
RGB image, COCO annotations (visibility from the z-buffer) and a person-label map."""
from __future__ import annotations

import cv2
import numpy as np

from .people import (_FACE_AWAY_COS, _KP_TOL, _SKIN, _person_parts, _random_colour, _unit, person_skeleton,
                     sample_person)
from .raster import _Canvas, _draw_capsule, _draw_polygon

DEFAULT_IMAGE_SIZE = (320, 240)  # (width, height)
MIN_PERSON_AREA = 10  # pixels; fully hidden people get no annotation at all
MIN_KEYPOINT_AREA = 120  # pixels; smaller people are annotated without keypoints (as in COCO)


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
