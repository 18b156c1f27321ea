"""Teacher heatmaps computed once per training crop, warped to each augmented crop at train time.

A logits-KD step runs the frozen teacher on the batch the student just saw; for an HRNet teacher
that forward costs more than the student's whole training step, so a live distilled run is 2-3x
slower than its baseline. The training crops differ from step to step only by the augmentation,
which is a similarity transform of the image (scale, rotation, mirror) plus colour jitter. So the
teacher's heatmaps are computed once on every person's *un-augmented* crop, and at train time the
cached map is warped by the transform that relates the un-augmented crop to the augmented one:

    augmented heatmap cell q  ->  augmented crop pixel  u  = q · s            (s: the stride)
                              ->  image point           x  = F · M⁻¹ · u      (M: the augmented
                                                                              crop's affine, F: the
                                                                              un-mirroring)
                              ->  cached heatmap cell   q0 = M0 · x / s0      (M0: the plain crop's)

and a mirrored sample reads its joint ``j`` from the cached channel of ``j``'s flip partner.

This is an approximation, and the notebook says so: the teacher would see different pixels at the
borders of a rotated or zoomed crop, a finer or coarser view of the person, and a mirrored person
(its flip test averages exactly that). With no augmentation the warp is the identity and the
cached maps are the teacher's output itself (tested); ``benchmarks/bench_teacher_cache.py``
measures how far the warped maps are from the live teacher's under the training augmentation.
"""
from __future__ import annotations

import contextlib
import shutil
import time

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import atomic_write
from ..data.keypoints import COCO_FLIP_PAIRS, flip_permutation
from ..data.transforms import affine_transforms, widen_scale


class CacheMissError(KeyError):
    """A batch holds samples the cache was not built for (another dataset, or a subset of it that
    numbers its persons differently)."""


def _normaliser(w: int, h: int) -> np.ndarray:
    """Cell coordinates -> grid_sample's normalised coordinates (``align_corners=True``)."""
    return np.array([[2.0 / max(w - 1, 1), 0, -1.0], [0, 2.0 / max(h - 1, 1), -1.0], [0, 0, 1.0]])


def widen_blobs(hm: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample's maps ``hm`` (N, K, H, W) with a Gaussian of ``sigma[i]`` cells (zero
    padding) and rescale every map so that its maximum stays what it was: a blob grows wider, its
    height (the teacher's confidence) does not. A sample with ``sigma`` ≤ 0.05 is left as it is."""
    out = hm.clone()
    for i, s in enumerate(sigma.tolist()):
        if s <= 0.05:
            continue
        r = int(np.ceil(3 * s))
        x = torch.arange(-r, r + 1, dtype=hm.dtype)
        g = torch.exp(-0.5 * (x / s) ** 2)
        g = g / g.sum()
        k = hm.shape[1]
        m = hm[i:i + 1]
        m = F.conv2d(m, g.view(1, 1, 1, -1).expand(k, 1, 1, -1), padding=(0, r), groups=k)
        m = F.conv2d(m, g.view(1, 1, -1, 1).expand(k, 1, -1, 1), padding=(r, 0), groups=k)
        before = hm[i].flatten(1).amax(-1)
        after = m[0].flatten(1).amax(-1)
        gain = torch.where(after > 1e-8, before / after.clamp_min(1e-8), torch.zeros_like(after))
        out[i] = m[0] * gain[:, None, None]
    return out


def mirror_crop(images: torch.Tensor) -> torch.Tensor:
    """The crops the dataset makes of the mirrored images (same box, mirrored centre): the crop is
    centred on ``W / 2``, so pixel ``x`` of the mirrored crop is pixel ``W - x`` of the plain one, the
    plain crop flipped and shifted by one column (column 0, just outside the plain crop, repeats the
    plain crop's first column)."""
    flipped = torch.flip(images, dims=[-1])
    return torch.cat([images[..., :1], flipped[..., :-1]], dim=-1)


class TeacherCache:
    """Teacher heatmaps of every sample's plain crop, and the warp to an augmented batch.

    ``heatmaps`` is ``(N, K, h, w)`` (float16 to halve the memory: 12k persons at 24x32 are
    315 MB in float32), row ``i`` for ``dataset[i]`` without augmentation. ``ann_ids`` guards
    against a cache built for another dataset: :meth:`for_batch` checks every row it reads.
    """

    def __init__(self, heatmaps: torch.Tensor, ann_ids, centers, scales, widths, input_size,
                 flip_pairs=COCO_FLIP_PAIRS, source: str = "", mirrored: torch.Tensor | None = None):
        self.heatmaps = heatmaps
        #: The teacher's output on each plain crop mirrored (:func:`mirror_crop`), or None: a
        #: mirrored sample then reads the plain row mirrored with its left/right channels swapped.
        self.mirrored = mirrored
        self.ann_ids = torch.as_tensor(np.asarray(ann_ids, dtype=np.int64))
        self.centers = np.asarray(centers, dtype=np.float64)
        self.scales = np.asarray(scales, dtype=np.float64)
        self.widths = np.asarray(widths, dtype=np.float64)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.flip_perm = flip_permutation(flip_pairs, heatmaps.shape[1])
        self.source = source
        self._plain = None      # every row's plain-crop affine (N, 3, 3), made on the first warp
        self._rows = None       # {ann_id: row}, made on the first paste

    def __len__(self) -> int:
        return self.heatmaps.shape[0]

    @classmethod
    @torch.no_grad()
    def build(cls, teacher_fn: Callable[[torch.Tensor], torch.Tensor], dataset, input_size=None,
              batch_size: int = 64, flip_pairs=COCO_FLIP_PAIRS, progress: bool = True,
              source: str = "", mirrored: bool = False, partial=None,
              save_every_s: float = 300.0) -> "TeacherCache":
        """Run ``teacher_fn(images) -> heatmaps`` once over ``dataset``'s samples, un-augmented
        (and, with ``mirrored``, once more over each crop mirrored: twice the time and memory, and a
        mirrored training crop then reads what the teacher really answers on a mirrored person).

        With ``partial`` (a folder) the rows computed since the last save are written there as one new
        file every ``save_every_s`` seconds, and a build that finds them starts after them: a cache of
        an hour or more of one core (a large teacher on many persons) survives a session's end. The
        caller deletes the folder once the finished cache is saved (:func:`cached_teacher` does).

        ``dataset`` is the (training) :class:`~posekd_lib.data.datasets.TopDownDataset`; its samples are
        re-cropped without augmentation at ``input_size`` (the teacher's, default the dataset's). A
        teacher crop of another aspect ratio (an HRNet at 160x128 for 128x96 students) widens each
        person's box to it around the same centre (:func:`widen_scale`: the student's crop lies
        inside the teacher's); the cache keeps the boxes the teacher saw, so its warp still puts each
        cell where the student's crop has it.
        """
        import copy

        from ..config import progress_bar as tqdm

        plain = copy.copy(dataset)
        plain.train, plain.aug = False, None
        size = dataset.input_size if input_size is None else (int(input_size[0]), int(input_size[1]))
        if abs(size[0] / size[1] - dataset.aspect_ratio) > 1e-6:
            plain.aspect_ratio = size[0] / size[1]
            plain.samples = [{**x, "scale": widen_scale(x["scale"], plain.aspect_ratio)} for x in dataset.samples]
        if size != dataset.input_size:
            from ..data.codecs import HeatmapCodec
            plain.input_size = size
            plain.codec = HeatmapCodec(size, dataset.codec.heatmap_size, dataset.codec.sigma)
        out = _Rows(len(plain.samples), mirrored)
        start = 0 if partial is None else _load_partial(partial, out, batch_size)
        if start and progress:
            print(f"teacher cache: resuming after {min(start * batch_size, len(out)):,} of {len(out):,} persons "
                  f"({partial})", flush=True)
        todo = plain if start == 0 else torch.utils.data.Subset(plain, range(start * batch_size, len(plain)))
        loader = torch.utils.data.DataLoader(todo, batch_size=batch_size, shuffle=False)
        last_save, saved = time.monotonic(), start
        # Built outside any caller's autocast (fit builds it lazily at its first batch, inside bf16
        # autocast): the cache holds the float teacher's heatmaps, whatever context it is built in.
        # The global RNG is left as it was (the loader draws a seed), so a run that builds the cache
        # trains exactly as one that loads it.
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            for kind in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device_type=kind, enabled=False))
            for i, batch in enumerate(tqdm(loader, desc="teacher cache", disable=not progress, leave=False)):
                out.put((start + i) * batch_size, teacher_fn(batch["image"]),
                        teacher_fn(mirror_crop(batch["image"])) if mirrored else None)
                if partial is not None and time.monotonic() - last_save >= save_every_s:
                    _save_partial(partial, out, saved, start + i + 1, batch_size)
                    last_save, saved = time.monotonic(), start + i + 1
        if out.heatmaps is None:
            raise ValueError("teacher cache: the dataset has no persons to cache")
        hm, mirror_hm = out.heatmaps, out.mirrored
        s = plain.samples
        widths = [dataset.images[x["image_id"]]["width"] for x in s]
        return cls(hm, [x["ann_id"] for x in s], [x["center"] for x in s], [x["scale"] for x in s], widths,
                   size, flip_pairs, source, mirror_hm)

    def _crop_to_cells(self) -> np.ndarray:
        """3x3: plain-crop pixels -> cached heatmap cells."""
        hm_h, hm_w = self.heatmaps.shape[-2:]
        return np.diag([hm_w / self.input_size[0], hm_h / self.input_size[1], 1.0])

    def _image_to_cells(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), 3, 3)``: image pixels -> the cached heatmap cells of rows ``rows``."""
        if self._plain is None:                             # every row's plain crop, once
            self._plain = affine_transforms(self.centers, self.scales, 0.0, self.input_size)
        return self._crop_to_cells() @ self._plain[rows]

    def _thetas(self, rows: np.ndarray, centers, scales, rotations, flipped: np.ndarray, input_size, out_size,
                from_mirrored: np.ndarray) -> np.ndarray:
        """The ``(B, 2, 3)`` ``affine_grid`` matrices that read rows ``rows`` for a batch of augmented
        crops (of :attr:`mirrored` where ``from_mirrored``: the plain crop's mirror image)."""
        hm_h, hm_w = self.heatmaps.shape[-2:]
        s0 = self._crop_to_cells()
        M = affine_transforms(centers, scales, rotations, input_size)
        mirror = np.broadcast_to(np.eye(3), (len(rows), 3, 3)).copy()
        mirror[flipped, 0, 0], mirror[flipped, 0, 2] = -1.0, self.widths[rows[flipped]] - 1
        s = np.diag([input_size[0] / out_size[0], input_size[1] / out_size[1], 1.0])  # output cells -> crop
        A = self._image_to_cells(rows) @ mirror @ np.linalg.inv(M) @ s               # output cell -> cached cell
        across = s0 @ np.array([[-1.0, 0, self.input_size[0]], [0, 1, 0], [0, 0, 1]]) @ np.linalg.inv(s0)
        A[from_mirrored] = across @ A[from_mirrored]   # plain crop pixel x -> mirrored crop pixel W - x
        theta = _normaliser(hm_w, hm_h) @ A @ np.linalg.inv(_normaliser(*out_size))
        return theta[:, :2]

    def for_batch(self, batch: dict, out_size=None, input_size=None, blob_sigma: float | None = None,
                  source_sigma: float = 2.0) -> torch.Tensor:
        """Teacher heatmaps for an augmented training ``batch`` (its ``meta``), float32.

        ``out_size`` (w, h) is the heatmap size returned (default the cached one), ``input_size``
        the size of the batch's crops (default: read from ``batch["image"]``, else the cache's
        input size; a teacher of another crop size or aspect is warped onto the student's crop).

        ``blob_sigma`` (output cells) brings the blobs of a teacher that answers on a finer grid to
        the student's width: a teacher trained on Gaussians of ``source_sigma`` of *its* cells draws
        narrower blobs than the student's labels once its map is sampled on the student's coarser
        grid, with peaks that fall between cells (``benchmarks/bench_teacher_targets.py``). Each
        cached map is blurred first by the Gaussian that widens ``source_sigma`` to ``blob_sigma``
        output cells (:func:`widen_blobs`; nothing when the teacher's cells are no finer), keeping
        its peak height. Default None: the maps as the teacher drew them.
        """
        meta = batch["meta"]
        index = torch.as_tensor(meta["index"]).long()
        if int(index.max()) >= len(self) or not torch.equal(self.ann_ids[index], torch.as_tensor(meta["ann_id"]).long()):
            raise CacheMissError(f"teacher cache {self.source or '(unnamed)'} was built for another dataset: "
                           f"batch samples {index.tolist()[:8]} have other annotation ids; rebuild it")
        hm = self.heatmaps[index].float()
        rows = index.numpy()
        flipped = torch.as_tensor(meta["flipped"]).bool()
        rotation = torch.as_tensor(meta["rotation"]).double()
        out_size = tuple(hm.shape[-1:-3:-1]) if out_size is None else (int(out_size[0]), int(out_size[1]))
        if input_size is None:
            image = batch.get("image")
            input_size = self.input_size if image is None else (image.shape[-1], image.shape[-2])
        input_size = (int(input_size[0]), int(input_size[1]))
        identity = (not bool(flipped.any()) and not bool(rotation.any()) and out_size == tuple(hm.shape[-1:-3:-1])
                    and input_size == self.input_size
                    and np.array_equal(meta["center"].double().numpy(), self.centers[rows])
                    and np.array_equal(meta["scale"].double().numpy(), self.scales[rows]))
        if identity and blob_sigma is None:   # no augmentation: the cached maps are the teacher's output
            return hm
        own = self.mirrored is not None                     # a mirrored crop reads the teacher's mirrored answer
        if bool(flipped.any()):
            swapped = self.mirrored[index].float() if own else hm[:, self.flip_perm]
            hm = torch.where(flipped[:, None, None, None], swapped, hm)
        flips = flipped.numpy()
        theta = torch.as_tensor(self._thetas(rows, meta["center"].double().numpy(), meta["scale"].double().numpy(),
                                             rotation.numpy(), flips, input_size, out_size, flips & own),
                                dtype=torch.float32)
        if blob_sigma is not None:
            hm_h, hm_w = hm.shape[-2:]
            # one output cell in cached cells: the linear part of theta, back from grid_sample's units
            cell = torch.sqrt(torch.linalg.det(theta[:, :, :2].double()).abs()
                              * (hm_w - 1) * (hm_h - 1) / ((out_size[0] - 1) * (out_size[1] - 1)))
            extra = torch.sqrt(((blob_sigma * cell) ** 2 - source_sigma ** 2).clamp_min(0.0))
            hm = widen_blobs(hm, extra.float())
        grid = F.affine_grid(theta, (hm.shape[0], hm.shape[1], out_size[1], out_size[0]), align_corners=True)
        return F.grid_sample(hm, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def paste(self, ann_ids, frame_affine, flipped: bool, out_size, cell_to_input) -> torch.Tensor:
        """The teacher's heatmaps of the people ``ann_ids`` pasted into one whole frame: ``(K, h, w)``
        float32 at ``out_size`` (w, h), the maximum over the people (soft KD targets for a bottom-up
        student: each person's cached top-down heatmaps, warped from their plain crop into the frame).

        ``frame_affine`` (2x3 or 3x3) maps image pixels to the frame's input pixels (letterbox and
        augmentation, the mirror included); with ``flipped`` joint ``j`` reads the cached channel of
        its flip partner (the plain crop's answer mirrored, not the teacher's on a mirrored crop);
        ``cell_to_input`` (3x3) maps an output cell to input pixels (the bottom-up codec's cell
        centres). People the cache lacks (persons the top-down split leaves out) add nothing.

            output cell q -> frame pixel u = C q -> image point x = M⁻¹ u -> cached cell s0 M0 x
        """
        if self._rows is None:
            self._rows = {int(a): i for i, a in enumerate(self.ann_ids.tolist())}
        rows = np.array([self._rows[int(a)] for a in ann_ids if int(a) in self._rows], dtype=np.int64)
        w, h = int(out_size[0]), int(out_size[1])
        if len(rows) == 0:
            return torch.zeros(self.heatmaps.shape[1], h, w)
        hm = self.heatmaps[torch.from_numpy(rows)].float()
        if flipped:
            hm = hm[:, self.flip_perm]
        hm_h, hm_w = hm.shape[-2:]
        M = np.vstack([np.asarray(frame_affine, dtype=np.float64)[:2], [0.0, 0.0, 1.0]])
        A = self._image_to_cells(rows) @ np.linalg.inv(M) @ np.asarray(cell_to_input, dtype=np.float64)
        theta = torch.as_tensor((_normaliser(hm_w, hm_h) @ A @ np.linalg.inv(_normaliser(w, h)))[:, :2],
                                dtype=torch.float32)
        grid = F.affine_grid(theta, (len(rows), hm.shape[1], h, w), align_corners=True)
        return F.grid_sample(hm, grid, mode="bilinear", padding_mode="zeros", align_corners=True).amax(0)

    # ------------------------------------------------------------------ storage
    def save(self, path) -> Path:
        """Write the cache to ``path`` atomically (a kill mid-write leaves no file under its name)."""
        state = {"heatmaps": self.heatmaps, "ann_ids": self.ann_ids, "centers": self.centers,
                 "scales": self.scales, "widths": self.widths, "input_size": self.input_size,
                 "flip_perm": self.flip_perm, "source": self.source, "mirrored": self.mirrored}
        return atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path) -> "TeacherCache":
        path = Path(path)
        try:
            d = torch.load(path, map_location="cpu", weights_only=False)
            heatmaps = d["heatmaps"]
        except Exception as e:  # noqa: BLE001 - any unreadable file: name it and what to do
            raise ValueError(f"{path}: not a teacher cache ({type(e).__name__}: {e}); delete it to rebuild") from e
        pairs = [(a, b) for a, b in enumerate(d["flip_perm"]) if a < b]
        return cls(heatmaps, d["ann_ids"], d["centers"], d["scales"], d["widths"], d["input_size"], pairs,
                   d.get("source", str(path)), d.get("mirrored"))


class _Rows:
    """A build's rows, written into one float16 tensor allocated at the first batch: the finished
    cache then needs its own size in memory once (a concatenation of the batches at the end needed it
    twice: 12.6 GB for E55's 6.3 GB cache)."""

    def __init__(self, persons: int, mirrored: bool):
        self.persons, self.with_mirror = persons, bool(mirrored)
        self.heatmaps = self.mirrored = None

    def __len__(self) -> int:
        return self.persons

    def put(self, at: int, rows: torch.Tensor, mirror_rows: torch.Tensor | None = None) -> None:
        """Rows ``at`` onwards (the assignment converts them to float16 on the CPU)."""
        if self.heatmaps is None:
            self.heatmaps = torch.empty((self.persons, *rows.shape[1:]), dtype=torch.float16)
            self.mirrored = torch.empty_like(self.heatmaps) if self.with_mirror else None
        for store, r in ((self.heatmaps, rows), (self.mirrored, mirror_rows)):
            if r is not None:
                store[at:at + len(r)] = r


def partial_path(path) -> Path:
    """The folder where a cache being built for ``path`` keeps its rows so far, one file of rows per
    save (``TeacherCache.build(partial=...)``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial")


def _save_partial(partial, out: _Rows, first: int, end: int, batch_size: int) -> None:
    """Write the rows of batches ``first`` to ``end`` (those since the last save) as one new file in
    the folder ``partial``, atomically: each save writes only its own rows."""
    lo, hi = first * batch_size, min(end * batch_size, len(out))
    shard = {"heatmaps": out.heatmaps[lo:hi].clone(),            # a slice alone (a view saves its whole storage)
             "mirrored": None if out.mirrored is None else out.mirrored[lo:hi].clone(),
             "batches": (first, end), "persons": len(out), "batch_size": batch_size}
    atomic_write(Path(partial) / f"rows_{first:06d}_{end:06d}.pt", lambda f: torch.save(shard, f))


def _load_partial(partial, out: _Rows, batch_size: int) -> int:
    """Put the rows saved in the folder ``partial`` into ``out``; return the batches done (0 without
    the folder). Each file is checked against this build, and the files must follow each other."""
    partial = Path(partial)
    if partial.exists() and not partial.is_dir():
        raise ValueError(f"{partial}: not a folder of a partial teacher cache; delete it to rebuild from the start")
    done = 0
    for f in sorted(partial.glob("rows_*.pt")) if partial.is_dir() else []:
        try:
            d = torch.load(f, map_location="cpu", weights_only=False)
            got, (first, end) = (d["persons"], d["batch_size"], d["mirrored"] is not None), d["batches"]
        except Exception as e:  # noqa: BLE001 - any unreadable file: name it and what to do
            raise ValueError(f"{f}: not rows of a partial teacher cache ({type(e).__name__}: {e}); delete "
                             f"{partial} to rebuild from the start") from e
        if got != (len(out), batch_size, out.with_mirror):
            raise ValueError(f"{f}: rows of a teacher cache of {got[0]:,} persons, batch size {got[1]}, "
                             f"mirrored={got[2]}; this build has {len(out):,}, {batch_size}, "
                             f"mirrored={out.with_mirror}: delete {partial} to rebuild from the start")
        if first != done:
            raise ValueError(f"{f}: starts at batch {first}, but the files before it end at batch {done}; "
                             f"delete {partial} to rebuild from the start")
        out.put(first * batch_size, d["heatmaps"], d["mirrored"])
        done = end
    return done


def cached_teacher(path, build: Callable[[], TeacherCache]) -> TeacherCache:
    """Load the cache at ``path``, or build it with ``build()`` and save it there; then the rows a
    resumable build kept in :func:`partial_path` ``(path)`` are no longer needed and are deleted."""
    path = Path(path)
    if path.is_file():
        return TeacherCache.load(path)
    cache = build()
    cache.save(path)
    shutil.rmtree(partial_path(path), ignore_errors=True)
    return cache
