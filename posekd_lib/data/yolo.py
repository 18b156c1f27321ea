"""YOLO-pose txt labels <-> COCO person keypoints, following the STM32 model zoo's converter.

One ``<image stem>.txt`` per image, one line per person: ``0 cx cy w h`` then ``x y v`` per keypoint,
every coordinate divided by the image width or height, ``v`` reduced to 0/1 (labelled or not).
``single_person`` keeps only images with exactly one person annotation (crowd ones included in the
count, as the converter counts them); crowd and zero-size boxes are skipped, and an image whose
kept people have no labelled keypoint at all gets no file. 13-keypoint labels replace the five face
points with one head point (``keypoints.coco17_to_stm32_13`` on the 0/1 visibilities, i.e. the mean
of the labelled face points, labelled if any is).
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from .datasets import load_coco_person_keypoints
from .images import check_image
from .keypoints import (COCO_KEYPOINTS, COCO_SKELETON_1BASED, NUM_COCO_KEYPOINTS, STM32_13_KEYPOINTS,
                        STM32_13_SKELETON, coco17_to_stm32_13)

SUPPORTED_KEYPOINTS = (17, 13)


def _check_k(num_keypoints: int) -> None:
    if num_keypoints not in SUPPORTED_KEYPOINTS:
        raise ValueError(f"num_keypoints must be one of {SUPPORTED_KEYPOINTS}, got {num_keypoints}")


def coco_to_yolo(ann_file, out_dir, num_keypoints: int = 17, single_person: bool = False,
                 img_dir=None) -> dict:
    """Write YOLO-pose label files for a COCO person-keypoints JSON into ``out_dir``.

    With ``img_dir`` the kept images are copied next to their labels (the zoo's layout), each
    checked first (``images.check_image``: an empty or truncated file raises, naming it).
    Returns counts: ``images`` (label files written), ``persons`` (lines), and the skips
    ``skipped_crowd``, ``skipped_empty_box``, ``skipped_not_single``, ``skipped_no_keypoints``.
    """
    _check_k(num_keypoints)
    coco = load_coco_person_keypoints(ann_file)
    cat = coco["_person_category_id"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        if ann.get("category_id") == cat:
            by_image.setdefault(ann["image_id"], []).append(ann)

    stats = Counter(images=0, persons=0)
    for index, img in enumerate(coco["images"]):
        anns = by_image.get(img["id"], [])
        if not anns:
            continue
        if single_person and len(anns) != 1:
            stats["skipped_not_single"] += 1
            continue
        W, H = float(img["width"]), float(img["height"])
        lines, labelled = [], 0
        for ann in anns:
            if ann.get("iscrowd", 0):
                stats["skipped_crowd"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                stats["skipped_empty_box"] += 1
                continue
            k = np.asarray(ann["keypoints"], dtype=np.float64).reshape(NUM_COCO_KEYPOINTS, 3)
            k[:, 2] = k[:, 2] >= 1
            if num_keypoints == 13:
                k = coco17_to_stm32_13(k)
            k[:, 0] /= W
            k[:, 1] /= H
            labelled += int((k[:, 2] > 0).sum())
            box = [(x + w / 2) / W, (y + h / 2) / H, w / W, h / H]
            lines.append(" ".join(["0"] + [_fmt(v) for v in box] + [_fmt(v) for v in k.reshape(-1)]))
        if labelled == 0:
            stats["skipped_no_keypoints"] += 1
            continue
        if img_dir is not None:
            check_image(Path(img_dir) / img["file_name"], f"sample {index}, image id {img['id']}")
        (out / (Path(img["file_name"]).stem + ".txt")).write_text("\n".join(lines) + "\n")
        if img_dir is not None:
            shutil.copyfile(Path(img_dir) / img["file_name"], out / Path(img["file_name"]).name)
        stats["images"] += 1
        stats["persons"] += len(lines)
    return dict(stats)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def read_yolo_labels(path, num_keypoints: int = 17) -> np.ndarray:
    """Parse one label file -> ``(P, 5 + 3K)`` float array (class, cx, cy, w, h, x, y, v, ...)."""
    _check_k(num_keypoints)
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        vals = [float(t) for t in line.split()]
        if len(vals) != 5 + 3 * num_keypoints:
            raise ValueError(f"{path}: line {i + 1} has {len(vals)} numbers, expected "
                             f"{5 + 3 * num_keypoints} for {num_keypoints} keypoints")
        rows.append(vals)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5 + 3 * num_keypoints)


def yolo_to_coco(labels_dir, images, num_keypoints: int = 17) -> dict:
    """Build a COCO person-keypoints JSON dict from YOLO-pose labels.

    ``images`` is a list of COCO image dicts (``id``, ``file_name``, ``width``, ``height``); each
    looks for ``<stem>.txt`` in ``labels_dir`` (images without one get no annotations). Labelled
    points come back with v = 2 (YOLO keeps only labelled / not), ``area`` is the box area, and
    ``iscrowd`` is 0. 13-keypoint labels get the 13-keypoint category (``STM32_13_KEYPOINTS``).
    """
    _check_k(num_keypoints)
    names = COCO_KEYPOINTS if num_keypoints == 17 else STM32_13_KEYPOINTS
    skeleton = COCO_SKELETON_1BASED if num_keypoints == 17 else tuple((a + 1, b + 1) for a, b in STM32_13_SKELETON)
    annotations, ann_id = [], 1
    for img in images:
        path = Path(labels_dir) / (Path(img["file_name"]).stem + ".txt")
        if not path.is_file():
            continue
        W, H = float(img["width"]), float(img["height"])
        for row in read_yolo_labels(path, num_keypoints):
            cx, cy, w, h = row[1] * W, row[2] * H, row[3] * W, row[4] * H
            k = row[5:].reshape(num_keypoints, 3).copy()
            lab = k[:, 2] > 0
            k[:, 0] = np.where(lab, k[:, 0] * W, 0.0)
            k[:, 1] = np.where(lab, k[:, 1] * H, 0.0)
            k[:, 2] = np.where(lab, 2.0, 0.0)
            annotations.append({
                "id": ann_id, "image_id": img["id"], "category_id": 1, "iscrowd": 0,
                "bbox": [cx - w / 2, cy - h / 2, w, h], "area": w * h,
                "num_keypoints": int(lab.sum()),
                "keypoints": [round(float(v), 2) for v in k.reshape(-1)],
            })
            ann_id += 1
    return {
        "images": [dict(img) for img in images],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(names), "skeleton": [list(s) for s in skeleton]}],
    }
