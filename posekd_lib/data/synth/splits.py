"""Writing and caching splits: images rendered in worker processes, COCO JSON, the cached
embedded dataset of a mode (repaired or regenerated when its parameters change) and the extra
training images that follow a split."""
from __future__ import annotations

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

from ...config import get_mode, run_paths
from ..keypoints import COCO_KEYPOINTS, COCO_SKELETON_1BASED
from .scenes import DEFAULT_IMAGE_SIZE, render_scene, sample_scene

SYNTH_VERSION = "posekd-synth 1.0"
JPEG_QUALITY = 90
ANN_FILE_NAME = "person_keypoints.json"
_SPLIT_OFFSET = {"train": 1, "val": 2}
_MODE_SIZES = {"quick": {"train": 48, "val": 16}, "workshop": {"train": 3700, "val": 560}}  # ~3.3 persons/image


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
        raise SystemExit(f"posekd_lib.data.synth: spawned worker {os.getpid()} stops: it was re-running the main "
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
        warnings.warn(f"posekd_lib.data.synth: {why}; rendering in this process instead (slower). Put the call "
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
                 "year": 2026, "contributor": "posekd_lib.data.synth", "url": "", "date_created": "",
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
    from ...config import progress_bar as tqdm

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

    from ..images import image_problem

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
