"""The 3D people of the embedded dataset: pose families with joint-angle limits, body proportions,
clothing and skin colours, the skeleton a pose gives and the capsules that draw it."""
from __future__ import annotations

import colorsys

import numpy as np

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
