"""Codecs: target encoding and prediction decoding kept together, so both use one convention.

- ``HeatmapCodec``: top-down Gaussian heatmaps as the official HRNet code draws them (integer-rounded
  centres, window of radius 3σ), argmax + quarter-pixel decoding, DARK (Taylor) refinement, flip test.
- ``PafCodec``: bottom-up OpenPose-18 keypoint heatmaps + part affinity fields (PAFs) at stride 8, and
  a readable greedy grouping of peaks into people (LW-OpenPose rules).

Coordinates: heatmap cell ``i`` of a map with stride ``s`` is centred on input pixel ``i * s`` for the
top-down codec (HRNet convention: ``x_hm = x_in / s``) and on ``i * s + s / 2 - 0.5`` for the bottom-up
codec (LW-OpenPose convention: the cell covers input pixels ``[i s, (i + 1) s)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .keypoints import (NUM_OPENPOSE_KEYPOINTS, NUM_OPENPOSE_PAFS, OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS,
                        coco17_to_openpose18, flip_permutation, openpose18_to_coco17)


# --------------------------------------------------------------------------- top-down heatmaps
class HeatmapCodec:
    """Gaussian heatmap targets for top-down models, and their decoders.

    ``input_size`` and ``heatmap_size`` are ``(w, h)``; ``sigma`` is in heatmap cells.
    """

    def __init__(self, input_size=(192, 256), heatmap_size=(48, 64), sigma: float = 2.0):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma = float(sigma)
        self.stride = np.array([self.input_size[0] / self.heatmap_size[0],
                                self.input_size[1] / self.heatmap_size[1]])
        self._size = np.array(self.heatmap_size, dtype=np.float64)
        self._xs = np.arange(self.heatmap_size[0])
        self._ys = np.arange(self.heatmap_size[1])
        # 1-D Gaussian profile by integer distance, zero beyond the 3σ window (distances capped at m)
        self._m = int(np.floor(3 * self.sigma)) + 1
        d = np.arange(self._m + 1, dtype=np.float64)
        self._profile = (np.exp(-d * d / (2 * self.sigma ** 2)) * (d <= 3 * self.sigma)).astype(np.float32)

    def __repr__(self) -> str:
        return f"HeatmapCodec(input_size={self.input_size}, heatmap_size={self.heatmap_size}, sigma={self.sigma})"

    def encode(self, keypoints) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints ``(..., K, 3)`` in input pixels -> ``(heatmaps (..., K, h, w), target_weight (..., K))``.

        Each labelled point (v > 0) gets an unnormalised Gaussian (peak 1) centred on its rounded
        heatmap cell and cut to a square window of radius 3σ. Its weight is 0 when unlabelled or when
        that window lies entirely outside the heatmap (the official rule: a point just outside the
        crop still trains the border). The Gaussian is separable, so it is an outer product of two
        1-D profiles, broadcast over all keypoints at once.
        """
        k = np.asarray(keypoints, dtype=np.float64)
        radius, m = self.sigma * 3, self._m
        mu = np.floor(k[..., :2] / self.stride + 0.5)                     # (..., K, 2) rounded centres
        inside = ((mu - radius < self._size) & (mu + radius + 1 > 0)).all(axis=-1)
        weight = ((k[..., 2] > 0) & inside).astype(np.float32)
        mu = mu.astype(np.int64)
        gx = self._profile[np.minimum(np.abs(self._xs - mu[..., 0, None]), m)]
        gy = self._profile[np.minimum(np.abs(self._ys - mu[..., 1, None]), m)] * weight[..., None]
        heatmaps = gy[..., :, None] * gx[..., None, :]                     # outer products (einsum: 6x slower)
        return heatmaps.astype(np.float32, copy=False), weight

    def decode(self, heatmaps: torch.Tensor, method: str = "official") -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps ``(N, K, h, w)`` -> ``(coords (N, K, 2) in heatmap cells, maxvals (N, K))``.

        ``official``: argmax (coordinates 0 where the max is ≤ 0), then a quarter-cell step toward
        the higher neighbour for peaks not on the border. ``dark``: DARK's refinement instead — blur
        the map (keeping its maximum), take the log, and make one Newton step of the 2-D Taylor
        expansion around the argmax; exact for a Gaussian peak at any sub-pixel position, but biased
        within the blur radius of the map border (the blur pads with zeros, as DARK does).
        """
        if method not in ("official", "dark"):
            raise ValueError(f"decode method must be 'official' or 'dark', got {method!r}")
        hm = torch.as_tensor(heatmaps).float()
        if hm.ndim != 4:
            raise ValueError(f"heatmaps must be (N, K, h, w), got shape {tuple(hm.shape)}")
        n, k, h, w = hm.shape
        maxvals, idx = hm.reshape(n, k, -1).max(dim=-1)
        coords = torch.stack([(idx % w).float(), torch.div(idx, w, rounding_mode="floor").float()], dim=-1)
        coords = coords * (maxvals > 0).unsqueeze(-1)
        if method == "official":
            coords = coords + self._quarter_offset(hm, coords)
        else:
            coords = coords + self._dark_offset(hm, coords)
        return coords, maxvals

    @staticmethod
    def _quarter_offset(hm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        n, k, h, w = hm.shape
        px = torch.floor(coords[..., 0] + 0.5).long()
        py = torch.floor(coords[..., 1] + 0.5).long()
        ok = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        pxc, pyc = px.clamp(1, w - 2), py.clamp(1, h - 2)
        flat = hm.reshape(n, k, -1)

        def at(yy, xx):
            return flat.gather(-1, (yy * w + xx).unsqueeze(-1)).squeeze(-1)

        diff = torch.stack([at(pyc, pxc + 1) - at(pyc, pxc - 1), at(pyc + 1, pxc) - at(pyc - 1, pxc)], dim=-1)
        return torch.sign(diff) * 0.25 * ok.unsqueeze(-1)

    def _dark_offset(self, hm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        n, k, h, w = hm.shape
        ksize = int(6 * self.sigma - 1) | 1
        g = torch.exp(-((torch.arange(ksize) - ksize // 2) ** 2) / (2 * _cv2_kernel_sigma(ksize) ** 2))
        g = (g / g.sum()).float()
        flat = hm.reshape(n * k, 1, h, w)
        blurred = F.conv2d(flat, g.view(1, 1, 1, -1), padding=(0, ksize // 2))
        blurred = F.conv2d(blurred, g.view(1, 1, -1, 1), padding=(ksize // 2, 0))
        peak = flat.amax(dim=(2, 3), keepdim=True)
        bpeak = blurred.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        logm = torch.log((blurred * peak / bpeak).clamp(0.001, 50.0)).reshape(n, k, h * w)

        px = coords[..., 0].long()
        py = coords[..., 1].long()
        ok = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
        pxc, pyc = px.clamp(2, w - 3), py.clamp(2, h - 3)

        def at(dy, dx):
            return logm.gather(-1, ((pyc + dy) * w + pxc + dx).unsqueeze(-1)).squeeze(-1)

        c = at(0, 0)
        gx = 0.5 * (at(0, 1) - at(0, -1))
        gy = 0.5 * (at(1, 0) - at(-1, 0))
        hxx = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
        hyy = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
        hxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
        det = hxx * hyy - hxy * hxy
        ok = ok & (det.abs() > 1e-12)
        safe = torch.where(ok, det, torch.ones_like(det))
        ox = -(hyy * gx - hxy * gy) / safe
        oy = -(-hxy * gx + hxx * gy) / safe
        return torch.stack([ox, oy], dim=-1) * ok.unsqueeze(-1)


def _cv2_kernel_sigma(ksize: int) -> float:
    """The σ ``cv2.GaussianBlur`` derives from a kernel size when given σ = 0 (DARK blurs that way)."""
    return 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8


def flip_back(heatmaps, flip_pairs):
    """Undo a horizontal input flip on heatmaps ``(N, K, h, w)``: mirror along width, swap left/right."""
    perm = flip_permutation(flip_pairs, heatmaps.shape[1])
    if isinstance(heatmaps, np.ndarray):
        return heatmaps[:, perm, :, ::-1].copy()
    return heatmaps.flip(-1)[:, perm]


def flip_test_average(output, output_flipped_raw, flip_pairs, shift: bool = True):
    """Official flip test: ``flip_back`` the flipped-input output, shift it right by one cell, average.

    The shift (``TEST.SHIFT_HEATMAP``) compensates the flipped image being mirrored about
    ``x -> W - 1 - x`` at input resolution but not at heatmap resolution; column 0 keeps its value.
    """
    flipped = flip_back(output_flipped_raw, flip_pairs)
    if shift:
        cat = torch.cat if isinstance(flipped, torch.Tensor) else np.concatenate
        flipped = cat([flipped[..., :1], flipped[..., :-1]], -1)
    return (output + flipped) * 0.5


# --------------------------------------------------------------------------- bottom-up PAFs
_GAUSS_CUT = float(np.exp(-4.6052))   # LW-OpenPose drops Gaussian values below 0.01


def _box_cells(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All cells of the integer boxes ``lo[i] <= (x, y) <= hi[i]`` (``(M, 2)`` each; empty where
    hi < lo) as one flat list: ``(box index, x, y)`` per cell, box by box, row-major inside a box."""
    size = np.maximum(hi - lo + 1, 0)
    n = size[:, 0] * size[:, 1]
    box = np.repeat(np.arange(len(n)), n)
    local = np.arange(len(box)) - np.repeat(np.cumsum(n) - n, n)
    dy, dx = np.divmod(local, size[box, 0])
    start = lo[box]
    return box, start[:, 0] + dx, start[:, 1] + dy


@dataclass
class Person:
    """One decoded person: COCO-17 ``keypoints`` (17, 3) = x, y (input pixels), score; pose ``score``."""

    keypoints: np.ndarray
    score: float
    num_parts: int


class PafCodec:
    """OpenPose-18 heatmaps (+ background) and 38 PAF channels at ``stride``; greedy PAF grouping.

    ``sigma`` is in input pixels (7 as LW-OpenPose); ``paf_thickness`` in map cells.
    """

    def __init__(self, input_size=(128, 128), stride: int = 8, sigma: float = 7.0, paf_thickness: float = 1.0):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.stride = int(stride)
        if self.input_size[0] % self.stride or self.input_size[1] % self.stride:
            raise ValueError(f"input_size {self.input_size} must be a multiple of stride {self.stride}")
        self.map_size = (self.input_size[0] // self.stride, self.input_size[1] // self.stride)
        self.sigma = float(sigma)
        self.paf_thickness = float(paf_thickness)
        self._limbs = np.array(OPENPOSE_LIMBS)                            # (L, 2) keypoint a, b
        self._paf_channels = np.array(OPENPOSE_PAF_CHANNELS)              # (L, 2) channel x, y
        shift = self.stride / 2 - 0.5
        self._cx = np.arange(self.map_size[0]) * self.stride + shift      # cell centres in input pixels
        self._cy = np.arange(self.map_size[1]) * self.stride + shift
        self._last_cell = np.array(self.map_size) - 1
        self._paf_offset = self._paf_channels * (self.map_size[0] * self.map_size[1])  # flat channel starts

    def __repr__(self) -> str:
        return (f"PafCodec(input_size={self.input_size}, stride={self.stride}, sigma={self.sigma}, "
                f"paf_thickness={self.paf_thickness})")

    def to_map(self, xy) -> np.ndarray:
        """Input pixels -> map cell coordinates (cell centres are integers)."""
        return (np.asarray(xy, dtype=np.float64) - (self.stride / 2 - 0.5)) / self.stride

    def from_map(self, xy) -> np.ndarray:
        """Map cell coordinates -> input pixels."""
        return np.asarray(xy, dtype=np.float64) * self.stride + (self.stride / 2 - 0.5)

    @property
    def cell_to_input(self) -> np.ndarray:
        """:meth:`from_map` as a 3x3 homogeneous matrix."""
        shift = self.stride / 2 - 0.5
        return np.array([[self.stride, 0.0, shift], [0.0, self.stride, shift], [0.0, 0.0, 1.0]])

    def encode(self, keypoints) -> tuple[np.ndarray, np.ndarray]:
        """COCO keypoints ``(P, 17, 3)`` in input pixels -> ``(heatmaps (19, h, w), pafs (38, h, w))``.

        Heatmaps: per person a Gaussian (σ input pixels, cut below 0.01 as LW-OpenPose) at each
        labelled OpenPose-18 point, max over people, channel 18 = background = 1 - max. PAFs: for each
        limb with both ends labelled, the unit vector a -> b in every cell whose centre lies within
        ``paf_thickness`` cells of the segment; averaged where people overlap.

        Heatmaps are separable Gaussians drawn densely (at these map sizes numpy's per-call cost, not
        the cells, dominates). PAFs are drawn only near the skeleton: each limb's bounding box of
        cells, the boxes of all people and limbs laid end to end as one flat list (:func:`_box_cells`),
        the unit vectors summed with ``np.bincount``, which adds the people in order. The float64
        operations per cell are those of a dense test of every cell for every (person, limb), so the
        result is bit-identical to it (the test keeps that dense version), but the work grows with
        the limb lengths instead of map area x limbs x people.
        """
        heatmaps, pafs = self.encode_batch([keypoints])
        return heatmaps[0], pafs[0]

    def encode_batch(self, people) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` of a batch of images at once: ``people[i]`` is image i's ``(P_i, 17, 3)``
        keypoints -> ``(heatmaps (B, 19, h, w), pafs (B, 38, h, w))``, equal bit for bit to encoding
        each image alone. The images' people are padded to the largest count with unlabelled people
        (which draw nothing), so numpy's per-call cost is paid once per batch rather than per image."""
        ks = [np.asarray(p, dtype=np.float64).reshape(-1, 17, 3) for p in people]
        k = np.zeros((len(ks), max((len(x) for x in ks), default=0), 17, 3))
        for i, x in enumerate(ks):
            k[i, :len(x)] = x
        op = coco17_to_openpose18(k)                                      # (B, P, 18, 3)
        lab = op[..., 2] > 0
        return self._encode_heatmaps(op, lab), self._encode_pafs(op, lab)

    def _encode_heatmaps(self, op: np.ndarray, lab: np.ndarray) -> np.ndarray:
        w, h = self.map_size
        inv = 1.0 / (2 * self.sigma ** 2)
        gx = np.exp(-((self._cx - op[..., 0, None]) ** 2) * inv)          # separable: (B, P, 18, w)
        gy = np.exp(-((self._cy - op[..., 1, None]) ** 2) * inv) * lab[..., None]
        heatmaps = np.zeros((len(op), NUM_OPENPOSE_KEYPOINTS + 1, h, w), dtype=np.float32)
        if op.shape[1]:
            peak = (gy[..., :, None] * gx[..., None, :]).max(axis=1)     # max over people, then the cut:
            peak[peak < _GAUSS_CUT] = 0.0                                 # the same as cutting each first
            heatmaps[:, :-1] = peak
        heatmaps[:, -1] = 1.0 - heatmaps[:, :-1].max(axis=1)
        return heatmaps

    def _encode_pafs(self, op: np.ndarray, lab: np.ndarray) -> np.ndarray:
        w, h = self.map_size
        n_img, n_people = op.shape[:2]
        th, n_limbs = self.paf_thickness, len(self._limbs)
        ends = self.to_map(op[..., :2])[:, :, self._limbs]                # (B, P, L, a|b, x|y)
        v = ends[..., 1, :] - ends[..., 0, :]
        length = np.sqrt((v * v).sum(axis=-1))
        valid = lab[..., self._limbs[:, 0]] & lab[..., self._limbs[:, 1]] & (length > 1e-7)
        u = v / np.where(valid, length, 1.0)[..., None]
        # the cells whose centre can lie within the thickness of the segment (1e-6 against rounding);
        # an empty box for a limb that is not drawn
        lo = np.maximum(np.ceil(ends.min(axis=-2) - (th + 1e-6)), 0)
        hi = np.where(valid[..., None], np.minimum(np.floor(ends.max(axis=-2) + (th + 1e-6)), self._last_cell), -1)
        box, xx, yy = _box_cells(lo.reshape(-1, 2).astype(np.int64), hi.reshape(-1, 2).astype(np.int64))
        # per cell, in one gather: a, u and the length of its limb; boxes are image- then person-major,
        # so the cells of one limb of one image come in the order of its people
        per_limb = np.concatenate([ends[..., 0, :], u, length[..., None]], axis=-1).reshape(-1, 5)[box]
        rx, ry, ux, uy = xx - per_limb[:, 0], yy - per_limb[:, 1], per_limb[:, 2], per_limb[:, 3]
        t_raw = rx * ux + ry * uy                                         # position along the limb
        t = np.minimum(np.maximum(t_raw, 0.0), per_limb[:, 4])            # nearest point of the segment
        dist2 = (rx * rx + ry * ry) + t * (t - 2 * t_raw)                 # |r - t u|^2
        on = dist2 <= th * th
        # sum and count per (image, channel, cell): bincount adds in array order, i.e. people in order
        b_on = box[on]
        image = b_on // max(n_people * n_limbs, 1)
        key = (self._paf_offset[b_on % n_limbs] + (image * (NUM_OPENPOSE_PAFS * h * w) + (yy * w + xx)[on])[:, None]).ravel()
        size = n_img * NUM_OPENPOSE_PAFS * h * w
        pafs = np.zeros(size, dtype=np.float32)
        pafs[key] = np.bincount(key, per_limb[on, 2:4].ravel(), size)[key] / np.bincount(key, minlength=size)[key]
        return pafs.reshape(n_img, NUM_OPENPOSE_PAFS, h, w)

    # ----------------------------------------------------------------------- decoding
    def find_peaks(self, heatmaps, threshold: float = 0.1, radius: float = 6.0,
                   max_candidates: int = 500) -> list[np.ndarray]:
        """Peaks per OpenPose keypoint of upsampled heatmaps ``(>=18, H, W)`` at input resolution.

        A peak is a 3x3 max-pool maximum above ``threshold``; peaks closer than ``radius`` pixels to a
        stronger one are suppressed. Returns 18 arrays ``(n, 3)`` of ``x, y, score``.

        Only the ``max_candidates`` strongest maxima of a map enter the suppression (strongest first,
        so the peaks kept are exactly those the full list keeps among them): a trained model's maps
        have far fewer, while an untrained model's noise can have thousands, whose distance table
        and greedy pass made decoding take minutes per image.
        """
        hm = torch.as_tensor(heatmaps[:NUM_OPENPOSE_KEYPOINTS]).float()
        is_max = (hm == F.max_pool2d(hm[None], 3, stride=1, padding=1)[0]) & (hm > threshold)
        out = []
        for k in range(NUM_OPENPOSE_KEYPOINTS):
            ys, xs = torch.nonzero(is_max[k], as_tuple=True)
            cand = np.stack([xs.numpy(), ys.numpy(), hm[k, ys, xs].numpy()], axis=1).astype(np.float64)
            cand = cand[np.argsort(-cand[:, 2], kind="stable")][:max_candidates]
            # greedy suppression, strongest first: one distance table, then a pass that keeps a peak
            # when no kept (stronger) peak lies within the radius
            d = cand[:, None, :2] - cand[None, :, :2]
            close = np.hypot(d[..., 0], d[..., 1]) < radius
            keep = np.zeros(len(cand), dtype=bool)
            for i in range(len(cand)):
                keep[i] = not close[i, :i][keep[:i]].any()
            out.append(cand[keep])
        return out

    def score_limb(self, pafs_x: np.ndarray, pafs_y: np.ndarray, pa: np.ndarray, pb: np.ndarray,
                   num_samples: int = 10, min_paf: float = 0.05, min_ratio: float = 0.8) -> np.ndarray:
        """Score every (a, b) candidate pair by the PAF along the segment: ``(na, nb)``, -inf = rejected.

        ``num_samples`` points between the two peaks read the PAF; each must exceed ``min_paf`` along
        the segment direction for more than ``min_ratio`` of the samples. The score is the mean
        alignment, with LW-OpenPose's penalty for limbs longer than half the image height.
        """
        H, W = pafs_x.shape
        vec = pb[None, :, :2] - pa[:, None, :2]                            # (na, nb, 2)
        norm = np.linalg.norm(vec, axis=-1)
        unit = vec / np.maximum(norm, 1e-6)[..., None]
        t = np.linspace(0.0, 1.0, num_samples)
        pts = pa[:, None, None, :2] + t[None, None, :, None] * vec[:, :, None, :]
        xi = np.clip(np.round(pts[..., 0]).astype(int), 0, W - 1)
        yi = np.clip(np.round(pts[..., 1]).astype(int), 0, H - 1)
        dots = pafs_x[yi, xi] * unit[..., None, 0] + pafs_y[yi, xi] * unit[..., None, 1]
        passing = (dots > min_paf).mean(axis=-1)
        score = dots.mean(axis=-1) + np.minimum(0.0, 0.5 * H / np.maximum(norm, 1e-6) - 1.0)
        return np.where((passing > min_ratio) & (score > 0), score, -np.inf)

    def decode(self, heatmaps, pafs, threshold: float = 0.1, upsample: bool = True) -> list[Person]:
        """Maps of one image (``(19, h, w)``, ``(38, h, w)``) -> people with COCO-17 keypoints in input pixels.

        Maps are upsampled (bicubic) to input resolution, peaks found, every limb's candidate pairs
        scored with the PAF and matched greedily (best score first, each peak used once per limb);
        limbs are then chained into people in ``OPENPOSE_LIMBS`` order, merging two partial people
        when a limb joins them without conflict. People with fewer than 3 parts or a mean score
        (peak and limb scores over parts) below 0.2 are dropped. A person's score is that mean.
        """
        hm = torch.as_tensor(heatmaps).float()[None]
        pf = torch.as_tensor(pafs).float()[None]
        if upsample:
            size = (self.input_size[1], self.input_size[0])
            hm = F.interpolate(hm, size=size, mode="bicubic", align_corners=False)
            pf = F.interpolate(pf, size=size, mode="bicubic", align_corners=False)
        hm, pf = hm[0].numpy(), pf[0].numpy()
        peaks = self.find_peaks(hm, threshold, radius=6.0 if upsample else 6.0 / self.stride)

        people: list[dict] = []   # {"parts": {openpose_kp: peak_index}, "score": float}
        for (ka, kb), (cx, cy) in zip(OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS):
            if not len(peaks[ka]) or not len(peaks[kb]):
                continue
            scores = self.score_limb(pf[cx], pf[cy], peaks[ka], peaks[kb])
            for ia, ib in _greedy_pairs(scores):
                _add_limb(people, ka, kb, ia, ib, scores[ia, ib], peaks)
        if not upsample:
            for p in peaks:
                p[:, :2] = self.from_map(p[:, :2])

        result = []
        for person in people:
            n = len(person["parts"])
            if n < 3 or person["score"] / n < 0.2:
                continue
            op = np.zeros((NUM_OPENPOSE_KEYPOINTS, 3))
            for kp, i in person["parts"].items():
                op[kp] = peaks[kp][i]
            result.append(Person(openpose18_to_coco17(op), float(person["score"] / n), n))
        return sorted(result, key=lambda p: -p.score)


def _greedy_pairs(scores: np.ndarray) -> list[tuple[int, int]]:
    """Best-first one-to-one matching of a ``(na, nb)`` score table, skipping ``-inf`` entries."""
    order = np.argsort(-scores, axis=None, kind="stable")
    used_a, used_b, pairs = set(), set(), []
    for flat in order:
        ia, ib = divmod(int(flat), scores.shape[1])
        if not np.isfinite(scores[ia, ib]):
            break
        if ia in used_a or ib in used_b:
            continue
        used_a.add(ia)
        used_b.add(ib)
        pairs.append((ia, ib))
    return pairs


def _add_limb(people: list[dict], ka: int, kb: int, ia: int, ib: int, score: float, peaks) -> None:
    """Attach limb (ka: ia) - (kb: ib) to the person owning either end, merge, or start a new one."""
    own_a = next((p for p in people if p["parts"].get(ka) == ia), None)
    own_b = next((p for p in people if p["parts"].get(kb) == ib), None)
    if own_a is None and own_b is None:
        people.append({"parts": {ka: ia, kb: ib},
                       "score": score + peaks[ka][ia, 2] + peaks[kb][ib, 2]})
    elif own_a is not None and own_b is None:
        if kb not in own_a["parts"]:
            own_a["parts"][kb] = ib
            own_a["score"] += score + peaks[kb][ib, 2]
    elif own_b is not None and own_a is None:
        if ka not in own_b["parts"]:
            own_b["parts"][ka] = ia
            own_b["score"] += score + peaks[ka][ia, 2]
    elif own_a is not own_b and not set(own_a["parts"]) & set(own_b["parts"]):
        own_a["parts"].update(own_b["parts"])
        own_a["score"] += own_b["score"] + score
        people.remove(own_b)
