"""Reference pycocotools calls shared by the evaluation and FiftyOne tests."""
from __future__ import annotations

import contextlib
import io


def cocoeval_evaluated(gt_file, results):
    """A ``COCOeval`` (keypoints) run with ``evaluate()`` on ``results``: its ``ious`` are computeOks' values."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="keypoints")
        ev.evaluate()
    return ev
