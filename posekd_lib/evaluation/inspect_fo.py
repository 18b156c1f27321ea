"""FiftyOne helpers: browse COCO person keypoints and model predictions, find failure cases.

FiftyOne is for looking (the App, per-sample fields, sorting, filtering); AP stays with
pycocotools (``evaluation.coco_evaluate``): FiftyOne's own keypoint evaluation scales OKS by the
extent of the GT points, not COCO's area, and its mAP differs. Per-person OKS here is COCO's
(``evaluation.oks_matrix``). ``fiftyone`` is imported on first use, so ``import posekd_lib``
stays fast, and ``fo_env`` must run before that import to pick the database folder.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

from .coco import _load_results, oks_matrix
from ..data.keypoints import COCO_KEYPOINTS, COCO_SKELETON

GT_FIELD = "ground_truth"
BOX_FIELD = "gt_boxes"


def fo_env(db_dir=None) -> dict[str, str]:
    """Set FiftyOne's environment for these machines (call before ``import fiftyone``).

    Silences the old-MongoDB validation notice and usage tracking; ``db_dir`` gives a private
    database folder (tests use one under tmp, ~300 MB). Returns the variables now in effect.
    """
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if db_dir is not None:
        os.environ["FIFTYONE_DATABASE_DIR"] = str(Path(db_dir).expanduser().resolve())
        if "fiftyone" in sys.modules:  # honoured until the first database call
            sys.modules["fiftyone"].config.database_dir = os.environ["FIFTYONE_DATABASE_DIR"]
    keys = ("FIFTYONE_DATABASE_VALIDATION", "FIFTYONE_DO_NOT_TRACK", "FIFTYONE_DATABASE_DIR")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _fo():
    fo_env()
    with warnings.catch_warnings():   # fiftyone imports tqdm.auto, which warns in a kernel without widgets
        warnings.filterwarnings("ignore", message="IProgress not found")
        import fiftyone as fo

    return fo


def _load_json(path) -> dict:
    """The COCO person-keypoints JSON at ``path``, checked by the data loader's
    ``load_coco_person_keypoints`` (a missing file, invalid JSON or a file of the wrong shape
    raises an error naming the file)."""
    from ..data.datasets import load_coco_person_keypoints

    return load_coco_person_keypoints(path)


def _person_category_ids(coco: dict, source) -> set[int]:
    cats = [c for c in coco.get("categories", []) if c.get("keypoints")]
    if not cats:
        raise ValueError(f"{source}: no category with keypoints (not a COCO person-keypoints file)")
    for c in cats:
        if tuple(c["keypoints"]) != COCO_KEYPOINTS:
            raise ValueError(f"{source}: category {c.get('name')!r} keypoints differ from COCO-17: {c['keypoints']}")
    return {c["id"] for c in cats}


def mode_dataset(split, mode: str, name: str | None = None):
    """The FiftyOne dataset the notebooks share for ``split`` in ``mode``, built (or reused) by
    :func:`build_fo_dataset` as ``posekd-<mode>-val`` (or ``name``). In quick mode (CI) it lives in a
    private database under the run folder, so tests never touch the learner's own FiftyOne data."""
    from ..config import run_paths

    fo_env(run_paths(mode).root / "fiftyone_db" if mode == "quick" else None)
    return build_fo_dataset(split.ann_file, split.img_dir, name=name or f"posekd-{mode}-val")


def _source_sha1(ann_file: Path, img_dir: Path) -> str:
    h = hashlib.sha1(ann_file.read_bytes())
    h.update(str(img_dir).encode())
    return h.hexdigest()


def _gt_keypoint(fo, ann: dict, w: float, h: float):
    k = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    vis = k[:, 2].astype(int)
    pts = np.where(vis[:, None] > 0, k[:, :2] / (w, h), np.nan)
    return fo.Keypoint(label="person", points=[tuple(p) for p in pts.tolist()], visibility=vis.tolist(),
                       coco_id=ann["id"], area=float(ann["area"]), iscrowd=int(ann.get("iscrowd", 0)),
                       num_keypoints=int(ann.get("num_keypoints", int((vis > 0).sum()))))


def build_fo_dataset(ann_file, img_dir, name: str, overwrite: bool = False):
    """A persistent FiftyOne dataset of a COCO person-keypoints JSON + its image folder.

    Each sample holds ``coco_id`` (the COCO image id), ``ground_truth`` (``fo.Keypoints``, one
    per person: points normalised to [0, 1], NaN where not labelled, with ``visibility``,
    ``coco_id``, ``area``, ``iscrowd``, ``num_keypoints``) and ``gt_boxes`` (``fo.Detections``).
    Same name and same source (file hash + image folder) reuses the stored dataset;
    ``overwrite=True`` rebuilds it. Only the dataset called ``name`` is ever deleted. Images
    missing from ``img_dir`` are skipped with a warning; an empty, truncated or undecodable one
    raises ``images.CorruptImageError`` naming the file and the sample (``images.check_image``:
    the App would show it grey or broken). The annotation file gets the data loader's checks.
    """
    from ..data.images import check_image

    ann_file, img_dir = Path(ann_file).resolve(), Path(img_dir).resolve()
    coco = _load_json(ann_file)  # before starting the database: a bad file fails at once
    fo = _fo()
    sha1 = _source_sha1(ann_file, img_dir)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if not overwrite:
            if ds.info.get("source_sha1") == sha1:
                return ds
            raise ValueError(f"FiftyOne dataset {name!r} exists and was built from "
                             f"{ds.info.get('source_ann_file')!r}, not {str(ann_file)!r}: "
                             "pass overwrite=True to rebuild it, or choose another name")
        ds.delete()

    person_ids = _person_category_ids(coco, ann_file)
    by_image: dict[int, list] = {}
    for a in coco.get("annotations", []):
        if a.get("category_id") in person_ids:
            by_image.setdefault(a["image_id"], []).append(a)
    samples, missing = [], []
    for index, img in enumerate(coco.get("images", [])):
        path = img_dir / img["file_name"]
        if not path.is_file():
            missing.append(img["file_name"])
            continue
        check_image(path, f"sample {index}, image id {img['id']}")
        w, h = float(img["width"]), float(img["height"])
        anns = by_image.get(img["id"], [])
        boxes = [fo.Detection(label="person", bounding_box=[a["bbox"][0] / w, a["bbox"][1] / h,
                                                           a["bbox"][2] / w, a["bbox"][3] / h],
                              coco_id=a["id"], area=float(a["area"]), iscrowd=int(a.get("iscrowd", 0)))
                 for a in anns]
        samples.append(fo.Sample(
            filepath=str(path), coco_id=int(img["id"]),
            metadata=fo.ImageMetadata(width=int(w), height=int(h)),
            **{GT_FIELD: fo.Keypoints(keypoints=[_gt_keypoint(fo, a, w, h) for a in anns]),
               BOX_FIELD: fo.Detections(detections=boxes)}))
    if not samples:
        raise FileNotFoundError(f"none of the {len(missing)} images of {ann_file} is in {img_dir}")
    if missing:
        warnings.warn(f"{len(missing)} images of {ann_file.name} are missing from {img_dir} "
                      f"and were skipped (first: {missing[0]})")

    ds = fo.Dataset(name)
    ds.add_samples(samples, progress=False)
    ds.create_index("coco_id", unique=True)
    ds.default_skeleton = fo.KeypointSkeleton(labels=list(COCO_KEYPOINTS), edges=[list(e) for e in COCO_SKELETON])
    ds.info = {"source_ann_file": str(ann_file), "source_img_dir": str(img_dir), "source_sha1": sha1}
    ds.persistent = True
    ds.save()
    apply_colors(ds)
    return ds


#: The App's colours (Okabe-Ito, colour-blind safe), the same in every notebook: the ground truth, the
#: teacher and each kind of student by the first word of its field's name (``kl_squeezenet`` -> kl);
#: any other field gets a colour of :data:`COLOR_POOL` picked by its name.
FIELD_COLORS = {"ground_truth": "#009E73", "teacher": "#E69F00", "baseline": "#56B4E9", "kl": "#CC79A7",
                "feature": "#D55E00", "fpd": "#0072B2", "ai8x": "#F0E442", "ref": "#F0E442"}
COLOR_POOL = ("#0072B2", "#F0E442", "#999999", "#882255", "#44AA99", "#DDCC77", "#AA4499")


def field_color(field: str) -> str:
    """The App colour of a keypoints field (see :data:`FIELD_COLORS`)."""
    if field in FIELD_COLORS:
        return FIELD_COLORS[field]
    first = field.split("_", 1)[0]
    if first in FIELD_COLORS:
        return FIELD_COLORS[first]
    return COLOR_POOL[int(hashlib.sha1(field.encode()).hexdigest(), 16) % len(COLOR_POOL)]


def apply_colors(dataset) -> dict[str, str]:
    """Colour every keypoints field of ``dataset`` in the App by :func:`field_color` (a field whose
    colour another field already has takes the next free one; skeletons on); returns ``{field: colour}``."""
    fo = _fo()
    fields = [name for name, f in dataset.get_field_schema().items()
              if getattr(f, "document_type", None) is fo.Keypoints]
    colors: dict[str, str] = {}
    for name in fields:               # no two fields of one dataset share a colour
        c = field_color(name)
        if c in colors.values():
            c = next((p for p in (*FIELD_COLORS.values(), *COLOR_POOL) if p not in colors.values()), c)
        colors[name] = c
    dataset.app_config.color_scheme = fo.ColorScheme(
        color_by="field", show_skeletons=True, multicolor_keypoints=False,
        fields=[{"path": name, "fieldColor": c} for name, c in colors.items()])
    dataset.save()
    return colors


def _match_coco_style(ious: np.ndarray, ignore: np.ndarray, crowd: np.ndarray, min_oks: float) -> np.ndarray:
    """GT index matched to each prediction (rows in score order), -1 if none; COCOeval's greedy rule."""
    order = np.argsort(ignore, kind="mergesort")  # non-ignored GT first, as in COCOeval.evaluateImg
    taken = np.zeros(len(ignore), bool)
    match = np.full(ious.shape[0], -1)
    for d in range(ious.shape[0]):
        best, best_oks = -1, min_oks
        for g in order:
            if taken[g] and not crowd[g]:
                continue
            if best > -1 and not ignore[best] and ignore[g]:
                break
            if ious[d, g] < best_oks:
                continue
            best, best_oks = g, ious[d, g]
        if best > -1:
            match[d] = best
            taken[best] = True
    return match


def add_predictions(dataset, results, field: str, gt_ann_file, min_oks: float = 0.1) -> dict:
    """Add COCO-format keypoint results as ``fo.Keypoints`` field ``field``, scored with COCO's OKS.

    Each predicted person keeps its ``score``, per-point ``confidence``, ``result_index`` (its
    position in ``results``) and, when matched, ``gt_id`` and ``oks``. Matching follows
    COCOeval: predictions in score order take the unmatched GT person with the highest OKS,
    persons COCO ignores (crowd, no labelled keypoint) last, pairs under ``min_oks`` left
    unmatched. ``f"{field}_oks"`` per sample is the mean OKS over the GT persons COCO scores, a
    missed person counting 0 (None when the image has none). Returns counts.
    """
    fo = _fo()
    gt = _load_json(gt_ann_file)
    person_ids = _person_category_ids(gt, gt_ann_file)
    sizes = {img["id"]: (float(img["width"]), float(img["height"])) for img in gt.get("images", [])}
    gts: dict[int, list] = {}
    for a in gt.get("annotations", []):
        if a.get("category_id") in person_ids:
            gts.setdefault(a["image_id"], []).append(a)
    preds: dict[int, list] = {}
    for i, r in enumerate(_load_results(results)):
        preds.setdefault(int(r["image_id"]), []).append((i, r))

    ids = dataset.values("coco_id")
    unknown = set(preds) - set(ids)
    if len(unknown) == len(preds) and preds:
        raise ValueError(f"no result refers to an image of dataset {dataset.name!r} (e.g. image id {next(iter(unknown))})")
    kp_values, oks_values, n_matched = [], [], 0
    for img_id in ids:
        if img_id not in sizes:
            raise KeyError(f"image id {img_id} of dataset {dataset.name!r} is not in {gt_ann_file}")
        w, h = sizes[img_id]
        p = sorted(preds.get(img_id, []), key=lambda t: -t[1]["score"])  # stable, like COCOeval
        g = gts.get(img_id, [])
        pk = (np.asarray([r["keypoints"] for _, r in p], dtype=np.float64).reshape(len(p), -1, 3) if p
              else np.zeros((0, 17, 3)))                   # an image where a bottom-up model found nobody
        ignore = np.array([bool(a.get("iscrowd", 0)) or a.get("num_keypoints", 1) == 0 for a in g], bool)
        if len(p) and len(g):
            ious = oks_matrix(pk, [np.reshape(a["keypoints"], (-1, 3)) for a in g],
                              [a["area"] for a in g], [a["bbox"] for a in g])
            match = _match_coco_style(ious, ignore, np.array([bool(a.get("iscrowd", 0)) for a in g]), min_oks)
        else:
            ious, match = np.zeros((len(p), len(g))), np.full(len(p), -1)
        per_gt = np.zeros(len(g))
        kps = []
        for d, (i, r) in enumerate(p):
            m = int(match[d])
            attrs = {"score": float(r["score"]), "result_index": i,
                     "gt_id": g[m]["id"] if m >= 0 else None, "oks": float(ious[d, m]) if m >= 0 else None}
            if m >= 0 and not ignore[m]:
                per_gt[m] = ious[d, m]
                n_matched += 1
            kps.append(fo.Keypoint(label="person", points=[tuple(q) for q in (pk[d, :, :2] / (w, h)).tolist()],
                                   confidence=pk[d, :, 2].tolist(), **attrs))
        kp_values.append(fo.Keypoints(keypoints=kps))
        scored = per_gt[~ignore]
        oks_values.append(float(scored.mean()) if scored.size else None)
    dataset.set_values(field, kp_values)
    dataset.set_values(f"{field}_oks", oks_values)
    apply_colors(dataset)
    return {"samples": len(ids), "predictions": sum(len(k.keypoints) for k in kp_values),
            "matched": n_matched, "skipped_images": len(unknown)}


# --------------------------------------------------------------------------- views
def worst_samples(dataset, field: str, n: int = 10):
    """The ``n`` samples with the lowest mean OKS of ``field`` (see ``add_predictions``)."""
    return dataset.exists(f"{field}_oks").sort_by(f"{field}_oks").limit(n)


def a_beats_b(dataset, field_a: str, field_b: str, margin: float = 0.1):
    """Samples where model A's mean OKS exceeds model B's by more than ``margin``, largest gap first."""
    from fiftyone import ViewField as F

    gap = F(f"{field_a}_oks") - F(f"{field_b}_oks")
    view = dataset.exists(f"{field_a}_oks").exists(f"{field_b}_oks")
    return view.match(gap > margin).sort_by(gap, reverse=True)


def occluded_persons(dataset, min_occluded: int = 4, field: str = GT_FIELD):
    """GT persons with at least ``min_occluded`` labelled-but-occluded (v=1) points, and their samples."""
    from fiftyone import ViewField as F

    return dataset.filter_labels(field, F("visibility").filter(F() == 1).length() >= min_occluded)


# --------------------------------------------------------------------------- App
def _why_not_interactive() -> str | None:
    if os.environ.get("POSEKD_MODE", "").strip().lower() == "quick":
        return "POSEKD_MODE=quick"
    if os.environ.get("CI"):
        return "CI is set"
    if os.environ.get("POSEKD_HEADLESS"):
        return "POSEKD_HEADLESS is set (headless run of the series)"
    try:
        from IPython import get_ipython

        if getattr(get_ipython(), "kernel", None) is not None:
            return None
    except ImportError:
        pass
    return None if sys.stdin is not None and sys.stdin.isatty() else "no IPython kernel and no terminal"


def launch_app(dataset, port: int = 5151, remote: bool = False, force: bool = False):
    """Open the FiftyOne App on ``dataset`` (served on 127.0.0.1 only) and return the session.

    Launches only in an interactive session (a Jupyter kernel or a terminal), never in quick
    mode or CI; otherwise prints how to open it and returns None. ``force`` skips the check.
    Close it with ``session.close()``, or the server lingers for a minute or two.
    """
    reason = None if force else _why_not_interactive()
    if reason:
        name = getattr(dataset, "dataset_name", None) or dataset.name  # a view reports its dataset's name
        print(f"FiftyOne App not launched ({reason}). To browse dataset {name!r}, run in the project folder:\n"
              f"    {app_hint(name, port)}\n"
              f"or in Python: fo.launch_app(fo.load_dataset({name!r}), address='127.0.0.1', port={port})")
        return None
    fo = _fo()
    return fo.launch_app(dataset, port=port, address="127.0.0.1", remote=remote)


def app_hint(name: str, port: int = 5151) -> str:
    """The short form of `app_command` that `launch_app` prints: ``make app DATASET=... PORT=...``, run in the
    project folder (the Makefile knows the venv's ``fiftyone``), after this process's private database
    folder if it has one (quick mode), shown relative to the checkout: no machine's folders in a notebook."""
    from ..config import shown_path

    db = app_env().get("FIFTYONE_DATABASE_DIR")
    shown = shown_path(db) if db else ""
    shown = "~/" + shlex.quote(shown[2:]) if shown.startswith("~/") else shlex.quote(shown)   # ~ still expands
    prefix = f"FIFTYONE_DATABASE_DIR={shown} " if db else ""
    return f"{prefix}make app DATASET={shlex.quote(name)} PORT={int(port)}"


def app_env() -> dict[str, str]:
    """The FiftyOne variables a new shell needs to see this process's datasets (`fo_env`, and the
    database folder the loaded ``fiftyone`` really uses when it is not the default one)."""
    env = fo_env()
    fo = sys.modules.get("fiftyone")
    if fo is not None and hasattr(fo, "config"):  # what the datasets of this process really use
        db_dir = str(fo.config.database_dir)
        default = getattr(sys.modules.get("fiftyone.constants"), "DEFAULT_DB_DIR", None)
        if "FIFTYONE_DATABASE_DIR" in env or os.path.abspath(db_dir) != os.path.abspath(default or db_dir):
            env["FIFTYONE_DATABASE_DIR"] = db_dir
    return env


def app_command(name: str, port: int = 5151) -> str:
    """A shell command that opens the App on dataset ``name`` from any shell.

    It names this process's database folder (``FIFTYONE_DATABASE_DIR``, set by :func:`fo_env`;
    quick mode keeps its datasets in a private one under the run folder, which a plain
    ``fiftyone app launch`` would not look in) and validation setting, and the ``fiftyone``
    command of this interpreter's environment (the venv is not on a new shell's PATH).
    """
    env = app_env()
    exe = Path(sys.executable).parent / "fiftyone"
    parts = [f"{k}={shlex.quote(env[k])}" for k in ("FIFTYONE_DATABASE_DIR", "FIFTYONE_DATABASE_VALIDATION")
             if k in env]
    parts += [shlex.quote(str(exe)) if exe.is_file() else "fiftyone", "app", "launch", shlex.quote(name),
              "--address", "127.0.0.1", "--port", str(int(port))]
    return " ".join(parts)
