"""Reading finished runs: PCK, keypoint placement apart from ranking.

Helpers over COCO results lists (validation-person order, as ``evaluation.evaluate_topdown`` on
GT boxes returns them). KD's gain by budget is a query over the runs table
(``runs_table.budget_trend``).
"""
from __future__ import annotations

import numpy as np


def _gt_aligned(results: list[dict], split, input_size):
    """``results`` (validation-person order) as an (N, K, 3) array, with each person's GT sample."""
    from ..data.datasets import TopDownDataset

    ds = TopDownDataset(split.ann_file, split.img_dir, input_size, train=False)
    if len(ds.samples) != len(results):
        raise ValueError(f"{len(results)} results for {len(ds.samples)} GT persons in {split.ann_file}")
    ids = np.array([r["image_id"] for r in results])
    if not np.array_equal(ids, [s["image_id"] for s in ds.samples]):
        raise ValueError("results are not in the order of the GT persons (run evaluate_topdown on GT boxes)")
    pred = np.asarray([r["keypoints"] for r in results], dtype=np.float64).reshape(len(results), -1, 3)
    return pred, ds.samples


def pck_of_results(results: list[dict], split, input_size, thr: float = 0.2) -> float:
    """PCK@``thr`` of top-down results on GT boxes, pooled over the labelled points of all persons.

    ``results`` must be in the order of the evaluation dataset's persons (as ``evaluate_topdown``
    returns them); each is compared with its own GT person, normalised by the GT box's longer side.
    """
    from .coco import pck

    pred, samples = _gt_aligned(results, split, input_size)
    return pck(pred, np.stack([s["joints"] for s in samples]), np.stack([s["box"] for s in samples]), thr)


def localization_summary(results: list[dict], split, input_size) -> dict[str, float]:
    """How well placed a model's keypoints are, apart from how it scores its persons.

    ``results`` as for :func:`pck_of_results`. ``mean_OKS``: mean OKS of each person's prediction
    with its own GT person; ``OKS>=0.5``: the share reaching COCO's loosest AP threshold;
    ``AP_oracle``: COCO AP with every person re-scored by that OKS, i.e. ranked perfectly. COCOeval
    ranks by score, so AP mixes placement with ranking; ``AP_oracle`` is the most better scores
    alone could reach, and only better-placed keypoints raise it. ``rank_corr``: how well the
    model's own scores rank its persons, the Spearman correlation of score and OKS (1: in OKS
    order; 0: unrelated).
    """
    from .coco import coco_evaluate, oks, spearman

    pred, samples = _gt_aligned(results, split, input_size)
    o = np.array([oks(p[:, :2], s["joints"], s["area"]) for p, s in zip(pred, samples)])
    rescored = [{**r, "score": float(v)} for r, v in zip(results, o)]
    return {"mean_OKS": float(o.mean()), "OKS>=0.5": float((o >= 0.5).mean()),
            "AP_oracle": coco_evaluate(split.ann_file, rescored)["AP"],
            "rank_corr": spearman([r["score"] for r in results], o)}
