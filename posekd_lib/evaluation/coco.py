"""Keypoint metrics: COCO AP through pycocotools, OKS and PCK in numpy, and the results table.

AP is always pycocotools' ``COCOeval(iouType="keypoints")``, the number papers report. ``oks`` /
``oks_matrix`` reproduce ``COCOeval.computeOks`` exactly, so per-person scores (e.g. in FiftyOne)
agree with what COCOeval matched.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..config import atomic_write
from ..data.keypoints import COCO_OKS_SIGMAS

#: The ten numbers ``COCOeval.summarize`` prints for keypoints, in its order.
COCO_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: The metric columns of a runs-table row (``runs_table``), in :data:`COCO_METRICS` names.
ROW_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


# --------------------------------------------------------------------------- COCO AP
def _load_gt(gt):
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"COCO ground-truth file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _load_results(results) -> list[dict]:
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"COCO results file not found: {path}")
        with open(path) as f:
            results = json.load(f)
        if not isinstance(results, list):
            raise ValueError(f"{path}: a COCO results file holds a JSON list, got {type(results).__name__}")
    return list(results)


def coco_evaluate(gt, results, img_ids=None, sigmas=None, verbose: bool = False) -> dict[str, float]:
    """COCO keypoint AP/AR of ``results`` against ``gt`` with pycocotools.

    ``gt``: a person-keypoints annotation file or a loaded ``COCO``; ``results``: a results file
    or a list of ``{"image_id", "category_id", "keypoints", "score"}`` dicts. ``img_ids``
    restricts the evaluation to those images; ``sigmas`` overrides the 17 COCO OKS sigmas.
    Returns the ten ``COCO_METRICS``; an empty result list scores 0 everywhere. A metric whose
    area range holds no ground truth (pycocotools prints -1) is returned as NaN.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = _load_gt(gt)
    dets = [dict(r) for r in _load_results(results)]  # loadRes adds keys to its input dicts
    if img_ids is not None:
        img_ids = [int(i) for i in img_ids]
        keep = set(img_ids)
        dets = [d for d in dets if int(d["image_id"]) in keep]
    if not dets:
        return {k: 0.0 for k in COCO_METRICS}
    unknown = {d["image_id"] for d in dets} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to image ids absent from the ground truth: {sorted(unknown)[:10]}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if not verbose else contextlib.nullcontext():
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(COCO_METRICS, ev.stats)}


def evaluate_topdown(model, split, input_size, heatmap_size, sigma: float = 2.0, flip_test: bool = True,
                     decode: str = "official", batch_size: int = 64, device="cpu", det_file=None,
                     results_file=None, progress: bool = False, return_results: bool = False, img_ids=None):
    """COCO keypoint AP of a top-down heatmap model on a split (``.ann_file`` + ``.img_dir``).

    Ground-truth person boxes by default, detector boxes with ``det_file``. Builds the evaluation
    ``TopDownDataset``, runs ``predict_topdown`` (flip test, decoding, inverse affine) and scores the
    results with ``coco_evaluate``. Returns the metrics (and the results list with ``return_results``);
    ``results_file`` also writes them in COCO results format. ``img_ids`` restricts the evaluation
    to those images (a fixed subset, for learning curves).
    """
    import torch

    from ..data.datasets import TopDownDataset, predict_topdown

    ds = TopDownDataset(split.ann_file, split.img_dir, input_size, heatmap_size, sigma, train=False,
                        use_gt_boxes=det_file is None, det_file=det_file)
    if img_ids is not None:
        keep = {int(i) for i in img_ids}
        ds.samples = [s for s in ds.samples if s["image_id"] in keep]
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    results = predict_topdown(model, loader, ds.codec, flip_test=flip_test, decode=decode, device=device,
                              progress=progress)
    model.train(was_training)
    if results_file is not None:
        write_coco_results(results, results_file)
    metrics = coco_evaluate(split.ann_file, results, img_ids=img_ids)
    return (metrics, results) if return_results else metrics


def bottom_up_results(heatmaps, pafs, affines, image_ids, codec, threshold: float = 0.1) -> list[dict]:
    """COCO results of whole-image maps: each image's people from ``codec.decode`` (peaks + greedy
    PAF grouping, ``codecs.PafCodec``), their keypoints mapped from the network input back to the
    image through the inverse of its ``affines[i]`` (image -> input, ``(2, 3)``); keypoints the
    grouping did not find stay at 0 with score 0."""
    from ..data.transforms import affine_points

    results = []
    for hm, paf, M, image_id in zip(heatmaps, pafs, affines, image_ids):
        inv = np.linalg.inv(np.vstack([np.asarray(M, dtype=np.float64), [0.0, 0.0, 1.0]]))[:2]
        for person in codec.decode(hm, paf, threshold=threshold):
            k = np.array(person.keypoints, dtype=np.float64)
            found = k[:, 2] > 0
            k[:, :2] = np.where(found[:, None], affine_points(k[:, :2], inv), 0.0)
            results.append({"image_id": int(image_id), "category_id": 1, "keypoints": k.reshape(-1).tolist(),
                            "score": float(person.score)})
    return results


def evaluate_bottom_up(model, split, input_size=(128, 128), stride: int = 8, batch_size: int = 32, device="cpu",
                       progress: bool = False, return_results: bool = False, img_ids=None):
    """COCO keypoint AP of a bottom-up model on whole images (no person boxes): every image of
    ``split`` letterboxed to ``input_size`` (``data.BottomUpDataset``), the model's 19 heatmaps
    and 38 PAFs (one tensor, heatmaps first, or LW-OpenPose's per-stage list: the last stage is
    used) decoded into people (:func:`bottom_up_results`) and scored by ``coco_evaluate``, so the
    bottom-up rows sit in the same table as the top-down ones."""
    import torch
    from ..config import progress_bar as tqdm

    from ..data.datasets import BottomUpDataset
    from ..data.keypoints import NUM_OPENPOSE_KEYPOINTS

    ds = BottomUpDataset(split.ann_file, split.img_dir, input_size, stride, train=False)
    if img_ids is not None:
        keep = {int(i) for i in img_ids}
        ds.image_ids = [i for i in ds.image_ids if i in keep]
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    results = []
    n_hm = NUM_OPENPOSE_KEYPOINTS + 1                     # heatmaps (with the background) come first
    with torch.no_grad():
        for batch in tqdm(loader, desc="bottom-up eval", disable=not progress, leave=False):
            out = model(batch["image"].to(device))
            hm, paf = (out[:, :n_hm], out[:, n_hm:]) if torch.is_tensor(out) else (out[-2], out[-1])
            results += bottom_up_results(hm.float().cpu().numpy(), paf.float().cpu().numpy(), batch["meta"]["affine"],
                                         batch["meta"]["image_id"].tolist(), ds.codec)
    model.train(was_training)
    metrics = coco_evaluate(split.ann_file, results, img_ids=img_ids)
    return (metrics, results) if return_results else metrics


def first_images(ann_file, n_images: int) -> list[int]:
    """The ids of the first ``n_images`` images (by id) of a COCO file that hold labelled persons:
    a fixed validation subset, so learning curves of different recipes score the same images."""
    from ..data.datasets import load_coco_person_keypoints

    coco = load_coco_person_keypoints(ann_file)
    labelled = {a["image_id"] for a in coco["annotations"] if a.get("num_keypoints", 0) > 0}
    return sorted(labelled)[:n_images]


def curve_evaluator(split, img_ids, input_size, heatmap_size, sigma: float = 2.0, flip_test: bool = True):
    """``fit``'s ``evaluate_fn`` for a learning curve: COCO metrics on the images ``img_ids`` of
    ``split`` (GT boxes, flip test) plus ``mean_OKS``, each person's OKS with its own GT person,
    which moves before AP does while a model learns to place keypoints."""
    import time

    from ..data.datasets import TopDownDataset

    keep = {int(i) for i in img_ids}
    gts = [s for s in TopDownDataset(split.ann_file, split.img_dir, input_size, heatmap_size, sigma).samples
           if s["image_id"] in keep]

    def evaluate(model) -> dict:
        t0 = time.perf_counter()
        metrics, results = evaluate_topdown(model, split, input_size, heatmap_size, sigma, flip_test=flip_test,
                                            device=next(model.parameters()).device, img_ids=img_ids,
                                            return_results=True)
        pred = np.asarray([r["keypoints"] for r in results], dtype=np.float64).reshape(len(results), -1, 3)
        metrics["mean_OKS"] = float(np.mean([oks(p[:, :2], g["joints"], g["area"]) for p, g in zip(pred, gts)]))
        metrics["eval_s"] = round(time.perf_counter() - t0, 1)
        return metrics

    return evaluate


def _round(obj, ndigits: int):
    if isinstance(obj, dict):
        return {k: _round(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_round(v, ndigits) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), ndigits)
    return obj


def _round_keypoints(kpts) -> list:
    flat = np.asarray(kpts, dtype=np.float64).reshape(-1)
    if flat.size % 3:
        raise ValueError(f"keypoints must be x, y, score triplets; got {flat.size} numbers")
    return [round(float(v), 2 if i % 3 < 2 else 4) for i, v in enumerate(flat)]


def write_coco_results(results, path) -> Path:
    """Write a COCO results list to ``path`` atomically (temp file + rename).

    Numpy values become plain JSON; keypoint x/y are rounded to 0.01 px, per-point scores to
    4 decimals, other floats to 6 decimals (small files, no effect on AP at COCO's precision).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        row = _round(dict(r), 6)
        if "keypoints" in r:
            row["keypoints"] = _round_keypoints(r["keypoints"])
        rows.append(row)
    return atomic_write(path, lambda f: json.dump(rows, f, separators=(",", ":")), mode="w")


def gt_as_results(ann_file) -> list[dict]:
    """Ground truth as COCO predictions (score 1.0): a sanity input that must score AP 1.0.

    Crowd annotations and persons with no labelled keypoints are left out, as COCOeval ignores them.
    """
    coco = _load_gt(ann_file)
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"],
         "keypoints": list(a["keypoints"]), "score": 1.0}
        for a in coco.loadAnns(coco.getAnnIds())
        if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0
    ]


# --------------------------------------------------------------------------- OKS / PCK
def oks_matrix(preds, gts, areas, bboxes=None, sigmas=COCO_OKS_SIGMAS) -> np.ndarray:
    """Object keypoint similarity of every prediction with every ground-truth person, ``(N, M)``.

    ``preds`` ``(N, K, 2|3)``, ``gts`` ``(M, K, 3)`` with COCO visibility, ``areas`` ``(M,)``
    (the GT segment area, COCO's scale), ``bboxes`` ``(M, 4)`` ``x, y, w, h``. Same formula as
    ``COCOeval.computeOks``: ``e = d^2 / (2 sigma)^2 / (area + eps) / 2``, mean of ``exp(-e)``
    over the labelled (v > 0) GT points. A GT with no labelled point (needs its bbox) scores
    the distance of each predicted point outside its box grown by one width/height per side.
    """
    p = np.asarray(preds, dtype=np.float64)
    g = np.asarray(gts, dtype=np.float64)
    if p.ndim != 3 or g.ndim != 3 or g.shape[-1] != 3 or p.shape[1] != g.shape[1]:
        raise ValueError(f"oks_matrix expects preds (N, K, 2|3) and gts (M, K, 3); got {p.shape} and {g.shape}")
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.shape != (g.shape[1],):
        raise ValueError(f"{sig.size} OKS sigmas for {g.shape[1]} keypoints")
    area = np.asarray(areas, dtype=np.float64).reshape(-1)
    if area.shape != (g.shape[0],):
        raise ValueError(f"{area.size} areas for {g.shape[0]} ground-truth persons")
    labelled = g[..., 2] > 0  # (M, K)
    has_pts = labelled.any(-1)  # (M,)
    dx = p[:, None, :, 0] - g[None, :, :, 0]  # (N, M, K)
    dy = p[:, None, :, 1] - g[None, :, :, 1]
    if not has_pts.all():
        if bboxes is None:
            raise ValueError("a ground-truth person has no labelled keypoint: pass its bbox to score OKS")
        b = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)[:, None, :]  # (M, 1, 4)
        x0, x1 = b[..., 0] - b[..., 2], b[..., 0] + 2 * b[..., 2]
        y0, y1 = b[..., 1] - b[..., 3], b[..., 1] + 2 * b[..., 3]
        px, py = p[:, None, :, 0], p[:, None, :, 1]
        bx = np.maximum(0, x0 - px) + np.maximum(0, px - x1)
        by = np.maximum(0, y0 - py) + np.maximum(0, py - y1)
        dx = np.where(has_pts[None, :, None], dx, bx)
        dy = np.where(has_pts[None, :, None], dy, by)
    e = (dx**2 + dy**2) / (2 * sig) ** 2 / (area[None, :, None] + np.spacing(1)) / 2
    weight = np.where(has_pts[:, None], labelled, True).astype(np.float64)  # (M, K)
    return (np.exp(-e) * weight).sum(-1) / weight.sum(-1)


def oks(pred, gt, area: float, sigmas=COCO_OKS_SIGMAS, bbox=None):
    """OKS of one prediction ``(K, 2|3)`` (float) or several ``(N, K, 2|3)`` (``(N,)``) with one GT ``(K, 3)``."""
    p = np.asarray(pred, dtype=np.float64)
    single = p.ndim == 2
    m = oks_matrix(p[None] if single else p, np.asarray(gt, dtype=np.float64)[None], [area],
                   None if bbox is None else [bbox], sigmas)[:, 0]
    return float(m[0]) if single else m


def confidence_summary(results, in_vis_thr: float = 0.2) -> dict[str, float]:
    """How confident a model's top-down results are: ``mean_peak`` (mean heatmap peak over all
    joints; a ground-truth map peaks at 1), ``confident_joints`` (share of joints above
    ``in_vis_thr``) and ``scored_persons`` (share of persons with a score > 0, i.e. with at least
    one confident joint). COCOeval ranks detections by score, so a model whose persons all score 0
    gets AP 0 whatever its keypoints."""
    res = _load_results(results)
    peaks = np.array([r["keypoints"][2::3] for r in res], dtype=np.float64)
    return {"mean_peak": float(peaks.mean()) if peaks.size else float("nan"),
            "confident_joints": float((peaks > in_vis_thr).mean()) if peaks.size else float("nan"),
            "scored_persons": float(np.mean([r["score"] > 0 for r in res])) if res else float("nan")}


def spearman(x, y) -> float:
    """Spearman's rank correlation of paired values (``scipy.stats.spearmanr``: ties share their
    average rank); NaN when either side is constant."""
    import warnings

    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} and {len(y)} values; give one pair per item")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def gap_closed(ap: float, baseline_ap: float, teacher_ap: float) -> float:
    """The share of the teacher-baseline gap a student closes: ``(AP - AP_b) / (AP_t - AP_b)``.

    1 means the student matches the teacher, 0 the baseline, negative values are worse than the
    baseline. NaN when the teacher is not better than the baseline (there is no gap to close).
    """
    gap = teacher_ap - baseline_ap
    return (ap - baseline_ap) / gap if gap > 0 else float("nan")


def gap_by_budget(ap: dict, teacher_ap: float, kd_key="kd") -> list[dict]:
    """Pair baseline and KD runs by (steps, seed) and summarise the gap closed at each budget.

    ``ap`` maps ``(which, steps, seed)`` to an AP, ``which`` being ``"baseline"`` or ``kd_key``; only
    complete pairs count. One dict per budget, fewest steps first: ``steps``, ``seeds`` (list),
    ``baseline_AP``, ``kd_AP`` and ``closed`` (:func:`gap_closed` per seed against that seed's
    baseline), each a mean over the seeds with ``<key>_pm``, half the range; ``closed_per_seed`` in
    ``seeds`` order.
    """
    out = []
    for steps in sorted({s for _, s, _ in ap}):
        seeds = sorted(sd for w, s, sd in ap if w == "baseline" and s == steps and (kd_key, s, sd) in ap)
        if not seeds:
            continue
        base = np.array([ap["baseline", steps, sd] for sd in seeds])
        kd = np.array([ap[kd_key, steps, sd] for sd in seeds])
        closed = np.array([gap_closed(k, b, teacher_ap) for k, b in zip(kd, base)])
        row = {"steps": steps, "seeds": seeds, "closed_per_seed": [float(c) for c in closed]}
        for key, v in (("baseline_AP", base), ("kd_AP", kd), ("closed", closed)):
            row[key], row[key + "_pm"] = float(v.mean()), float(np.ptp(v) / 2)
        out.append(row)
    return out


def pck(pred, gt, bbox_or_norm, thr: float = 0.2) -> float:
    """Fraction of labelled GT points (v > 0) predicted within ``thr`` x the person's size.

    The size is the longest side of the GT box (``bbox_or_norm`` = ``x, y, w, h``, ``(4,)`` or
    ``(N, 4)``), the usual normaliser of top-down COCO PCK; a scalar or ``(N,)`` array is used
    as the size directly. Points of all persons are pooled; NaN if none is labelled.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.ndim == 2:
        p, g = p[None], g[None]
    if g.ndim == 2:
        g = np.broadcast_to(g, p.shape[:1] + g.shape)
    if p.shape[:2] != g.shape[:2] or g.shape[-1] != 3:
        raise ValueError(f"pck expects pred (N, K, 2|3) and gt (N, K, 3); got {p.shape} and {g.shape}")
    b = np.asarray(bbox_or_norm, dtype=np.float64)
    if b.ndim >= 1 and b.shape[-1] == 4 and (b.ndim == 2 or p.shape[0] == 1):
        norm = b.reshape(-1, 4)[:, 2:].max(-1)
    else:
        norm = b.reshape(-1)
    norm = np.broadcast_to(norm, p.shape[:1])
    labelled = g[..., 2] > 0
    if not labelled.any():
        return float("nan")
    dist = np.linalg.norm(p[..., :2] - g[..., :2], axis=-1)
    hit = dist <= thr * norm[:, None]
    return float(hit[labelled].mean())


# --------------------------------------------------------------------------- the runs table (CSV)
def runs_csv(mode: str | None = None) -> Path:
    """The mode's runs table, the project's one results table: one row per run config id (and per
    evaluated teacher's weights), ``<mode folder>/runs.csv``. Its rows are ``runs_table.runs_row``'s."""
    from ..config import run_paths

    return run_paths(mode).root / "runs.csv"


def runs_table(mode: str | None = None):
    """The runs table as a pandas DataFrame (empty when no run was recorded), e.g. every budget of
    the hinted runs: ``df[df["distill.kinds"].str.contains("hint")][["budget.steps", "AP"]]``."""
    import pandas as pd

    path = runs_csv(mode)
    return pd.read_csv(path, dtype={"config_id": str}) if path.is_file() else pd.DataFrame(columns=["config_id"])


def record_run(row: dict, mode: str | None = None) -> None:
    """Insert ``row`` into the runs table, replacing the row of the same ``config_id``."""
    import pandas as pd

    from ..config import atomic_write

    df = runs_table(mode)
    df = df[df["config_id"].astype(str) != row["config_id"]]
    new = pd.DataFrame([row])
    df = new if df.empty else pd.concat([df, new], ignore_index=True)
    atomic_write(runs_csv(mode), lambda f: df.to_csv(f, index=False), mode="w")
