"""A small z-buffered rasteriser: shaded capsules and polygons with a per-pixel part label."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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
