"""Evaluation: COCO keypoint AP with pycocotools (``coco``), error analysis (``analysis``), FiftyOne
datasets of predictions (``inspect_fo``) and the series' figures (``plotting``)."""
