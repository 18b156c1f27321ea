"""COCO person-keypoints data path: loading and checking the JSON, top-down and bottom-up datasets,
and top-down inference to COCO results.

The same code reads real COCO (``person_keypoints_val2017.json`` + ``val2017/``) and the generated
dataset of ``posekd_lib.data.synth`` (same format). Images are decoded with cv2 (``images.read_rgb``, which
rejects truncated and corrupt files by name) and converted to RGB, then normalised with the ImageNet mean/std as the official HRNet pipeline does.
"""
from __future__ import annotations

import copy
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from ..config import progress_bar as tqdm
from ..config import read_json

from .augment import (AUGMENTATIONS, AugConfig, augmentation, colour_jitter,  # noqa: F401  (API)
                      half_body_box, jitter_factors, jitter_weights, sample_rng)
from .codecs import HeatmapCodec, PafCodec, flip_test_average
from .images import CorruptImageError, read_rgb  # noqa: F401  (read_rgb is part of this module's API)
from .keypoints import (COCO_FLIP_INDEX, COCO_FLIP_PAIRS, COCO_JOINTS_WEIGHT,
                        NUM_COCO_KEYPOINTS, NUM_OPENPOSE_KEYPOINTS, COCO_FROM_OPENPOSE)
from .transforms import (affine_points, box_to_center_scale, fliplr_keypoints, get_affine_transform,
                         letterbox_matrix, transform_preds)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# --------------------------------------------------------------------------- annotation file
def load_coco_person_keypoints(ann_file) -> dict:
    """Read and check a COCO person-keypoints JSON; returns the parsed dict.

    Checks what the datasets rely on, naming the file and the missing piece: ``images`` and
    ``annotations`` lists, a category with ``keypoints`` names (17 for COCO), and in every
    annotation of that category a ``keypoints`` list of 3 x 17 numbers and a 4-number ``bbox``.
    """
    path = Path(ann_file)
    data = read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO person-keypoints file, no '{key}' list")
    cats = [c for c in data["categories"] if c.get("keypoints")]
    if not cats:
        raise ValueError(f"{path}: no category with 'keypoints' names (is this an instances/detection "
                         f"file instead of person_keypoints?)")
    cat = next((c for c in cats if c.get("name") == "person"), cats[0])
    if len(cat["keypoints"]) != NUM_COCO_KEYPOINTS:
        raise ValueError(f"{path}: category {cat.get('name')!r} has {len(cat['keypoints'])} keypoint names, "
                         f"expected {NUM_COCO_KEYPOINTS} (COCO order)")
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
        if missing:
            raise ValueError(f"{path}: images[{i}] lacks {missing}")
    for i, ann in enumerate(data["annotations"]):
        if ann.get("category_id") != cat["id"]:
            continue
        if "keypoints" not in ann:
            raise ValueError(f"{path}: annotations[{i}] (id {ann.get('id')}) has no 'keypoints' field")
        if len(ann["keypoints"]) != 3 * NUM_COCO_KEYPOINTS:
            raise ValueError(f"{path}: annotations[{i}] (id {ann.get('id')}) has {len(ann['keypoints'])} "
                             f"keypoint numbers, expected {3 * NUM_COCO_KEYPOINTS}")
        if len(ann.get("bbox", ())) != 4:
            raise ValueError(f"{path}: annotations[{i}] (id {ann.get('id')}) has no 4-number 'bbox'")
    data["_person_category_id"] = cat["id"]
    return data


def _clip_box(box, width: int, height: int) -> list[float] | None:
    """Clip a COCO box to the image as the official loader does; None when nothing is left."""
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def to_tensor_normalized(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)``, ``ToTensor`` + ImageNet ``Normalize``."""
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    x *= _NORM_MUL
    x -= _NORM_SUB
    return torch.from_numpy(x)


_NORM_MUL = (1.0 / (255.0 * IMAGENET_STD)).reshape(3, 1, 1)
_NORM_SUB = (IMAGENET_MEAN / IMAGENET_STD).reshape(3, 1, 1)


# --------------------------------------------------------------------------- top-down dataset
class TopDownDataset(Dataset):
    """One sample per person box: affine crop, (augmented) Gaussian targets, metadata for decoding.

    With ``use_gt_boxes`` the boxes are the ground-truth persons (crowd, keypoint-less and empty
    boxes skipped; ``skipped`` counts them by reason). With ``det_file`` (COCO results format) every
    detected person box with score ≥ ``det_score_thr`` becomes a sample, for evaluation.
    """

    def __init__(self, ann_file, img_dir, input_size=(192, 256), heatmap_size=(48, 64), sigma: float = 2.0,
                 train: bool = False, aug: AugConfig | str | None = None, use_gt_boxes: bool = True,
                 det_file=None, det_score_thr: float = 0.0, use_joints_weight: bool = False,
                 flip_pairs=COCO_FLIP_PAIRS):
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        self.coco = load_coco_person_keypoints(ann_file)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.aspect_ratio = self.input_size[0] / self.input_size[1]
        self.codec = HeatmapCodec(self.input_size, heatmap_size, sigma)
        self.train = train
        self.aug = augmentation(aug) if train else None
        self.use_joints_weight = use_joints_weight
        self.flip_pairs = flip_pairs
        self.images = {img["id"]: img for img in self.coco["images"]}
        self.skipped: Counter = Counter()
        if det_file is not None:
            self.samples = self._detection_samples(Path(det_file), det_score_thr)
        elif use_gt_boxes:
            self.samples = self._gt_samples()
        else:
            raise ValueError("TopDownDataset needs use_gt_boxes=True or a det_file")

    def _sample(self, image_id, ann_id, box, joints, area, score) -> dict:
        center, scale = box_to_center_scale(box, self.aspect_ratio)
        return {"image_id": int(image_id), "ann_id": int(ann_id), "box": np.asarray(box, np.float32),
                "joints": joints, "center": center, "scale": scale, "area": float(area), "score": float(score)}

    def _gt_samples(self) -> list[dict]:
        cat = self.coco["_person_category_id"]
        out = []
        for ann in self.coco["annotations"]:
            if ann.get("category_id") != cat:
                continue
            img = self.images.get(ann["image_id"])
            if img is None:
                raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} refers to unknown image_id "
                                 f"{ann['image_id']}")
            if ann.get("iscrowd", 0):
                self.skipped["crowd"] += 1
                continue
            joints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(NUM_COCO_KEYPOINTS, 3)
            if ann.get("num_keypoints", int((joints[:, 2] > 0).sum())) == 0:
                self.skipped["no_keypoints"] += 1
                continue
            box = _clip_box(ann["bbox"], img["width"], img["height"])
            if box is None or ann.get("area", 1) <= 0:
                self.skipped["empty_box"] += 1
                continue
            out.append(self._sample(ann["image_id"], ann["id"], box, joints, ann.get("area", box[2] * box[3]), 1.0))
        return out

    def _detection_samples(self, det_file: Path, thr: float) -> list[dict]:
        if not det_file.is_file():
            raise FileNotFoundError(f"detection file not found: {det_file}")
        dets = json.loads(det_file.read_text())
        if not isinstance(dets, list) or (dets and not {"image_id", "bbox", "score"} <= set(dets[0])):
            raise ValueError(f"{det_file}: expected a COCO results list of {{image_id, bbox, score, ...}}")
        out = []
        for i, d in enumerate(dets):
            if d.get("category_id", 1) != 1:
                continue
            if d["score"] < thr:
                self.skipped["low_score"] += 1
                continue
            if d["image_id"] not in self.images:
                raise ValueError(f"{det_file}: detection {i} refers to image_id {d['image_id']} "
                                 f"not in {self.ann_file}")
            x, y, w, h = d["bbox"]
            if w <= 0 or h <= 0:
                self.skipped["empty_box"] += 1
                continue
            out.append(self._sample(d["image_id"], -1, d["bbox"], np.zeros((NUM_COCO_KEYPOINTS, 3)),
                                    w * h, d["score"]))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.image_file(self.samples[index]["image_id"])

    def image_file(self, image_id: int) -> Path:
        """The file of image ``image_id``: under ``img_dir``, or under the folder its entry names
        (``"_dir"``: an image that :func:`add_unlabelled` brought from another split)."""
        img = self.images[image_id]
        return Path(img.get("_dir", self.img_dir)) / img["file_name"]

    def draw(self, index: int, image_width: int, rng: np.random.Generator | None) -> dict:
        """One sample's crop geometry and colour factors: ``joints`` (image pixels, flipped when the
        sample is), ``center``, ``scale``, ``rot``, ``flipped``, ``M`` (image -> crop, for the joints),
        ``warp`` (the matrix that cuts the crop out of the unflipped image) and ``colour`` (jitter
        factors, None without training). ``rng`` draws the augmentation (None: no augmentation);
        :meth:`__getitem__` and the batched device path both cut their crops from this."""
        s = self.samples[index]
        joints = s["joints"].copy()
        center, scale, rot, flipped = s["center"].copy(), s["scale"].copy(), 0.0, False
        colour = None
        if self.train and rng is not None:
            cfg = self.aug
            if (cfg.half_body_prob and (joints[:, 2] > 0).sum() > cfg.half_body_min_joints
                    and rng.random() < cfg.half_body_prob):
                hb = half_body_box(joints, self.aspect_ratio, rng)
                if hb is not None:
                    center, scale = hb
            sf, rf = cfg.scale_factor, cfg.rotation
            scale = scale * np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf)
            if rng.random() <= cfg.rotation_prob:
                rot = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
            if rng.random() < cfg.flip_prob:
                joints = fliplr_keypoints(joints, image_width, self.flip_pairs)
                center[0] = image_width - center[0] - 1
                flipped = True
            colour = jitter_factors(cfg, rng)
        M = get_affine_transform(center, scale, rot, self.input_size)
        # a flipped sample crops the mirrored image: fold the mirror x -> W - 1 - x into the warp
        warp = M @ np.array([[-1.0, 0, image_width - 1], [0, 1, 0], [0, 0, 1]]) if flipped else M
        return {"joints": joints, "center": center, "scale": scale, "rot": rot, "flipped": flipped, "M": M,
                "warp": warp, "colour": colour}

    def crop_joints(self, geo: dict) -> np.ndarray:
        """The drawn joints in crop pixels (unlabelled ones stay 0)."""
        joints = geo["joints"].copy()
        labelled = joints[:, 2:3] > 0
        joints[:, :2] = np.where(labelled, affine_points(joints, geo["M"]), 0.0)
        return joints

    def meta(self, index: int, geo: dict) -> dict:
        s = self.samples[index]
        return {"index": index, "image_id": s["image_id"], "ann_id": s["ann_id"],
                "center": torch.from_numpy(geo["center"].astype(np.float32)),
                "scale": torch.from_numpy(np.asarray(geo["scale"], dtype=np.float32)),
                "rotation": float(geo["rot"]), "area": s["area"], "score": s["score"], "flipped": geo["flipped"]}

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        img = read_rgb(self.image_path(index), f"sample {index}, image id {s['image_id']}")
        geo = self.draw(index, img.shape[1], sample_rng() if self.train else None)
        crop = cv2.warpAffine(img, geo["warp"], self.input_size, flags=cv2.INTER_LINEAR)
        if geo["colour"] is not None:
            crop = colour_jitter(crop, self.aug, None, geo["colour"])
        joints = self.crop_joints(geo)
        target, weight = self.codec.encode(joints)
        if self.use_joints_weight:
            weight = weight * COCO_JOINTS_WEIGHT
        return {
            "image": to_tensor_normalized(crop),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight.astype(np.float32)),
            "joints": torch.from_numpy(joints.astype(np.float32)),
            "meta": self.meta(index, geo),
        }


def split_labelled(ds: TopDownDataset, fraction: float, seed: int = 0) -> tuple[TopDownDataset, TopDownDataset]:
    """Keep the keypoints of ``fraction`` of the images and hide the rest: ``(labelled, unlabelled)``.

    The scenario of KD on extra unlabelled images: an annotation budget labels whole images, so
    images (not persons) are drawn, reproducibly for a ``seed``. ``unlabelled`` keeps each person's
    box (what a person detector would give) with no keypoints, so its samples come with
    ``target_weight`` 0: the ground-truth loss ignores them and only a teacher can label them. Both
    are shallow copies of ``ds`` (same images, crop and augmentation) with their own ``samples``.
    """
    if not isinstance(ds, TopDownDataset):
        raise TypeError(f"split_labelled needs a TopDownDataset, got {type(ds).__name__}")
    if not 0 < fraction <= 1:
        raise ValueError(f"split_labelled: fraction must be in (0, 1], got {fraction}")
    image_ids = sorted({s["image_id"] for s in ds.samples})
    n_keep = max(1, round(fraction * len(image_ids)))
    keep = set(np.random.default_rng(seed).permutation(image_ids)[:n_keep].tolist())
    labelled, unlabelled = copy.copy(ds), copy.copy(ds)
    labelled.samples = [s for s in ds.samples if s["image_id"] in keep]
    unlabelled.samples = [{**s, "ann_id": -1, "joints": np.zeros_like(s["joints"])}
                          for s in ds.samples if s["image_id"] not in keep]
    return labelled, unlabelled


def add_unlabelled(ds: TopDownDataset, extra: TopDownDataset) -> TopDownDataset:
    """``ds`` with the persons of ``extra`` (another split: more images, e.g. ``synth.ensure_extra_train``)
    added without keypoints, for a teacher to label: KD on unlabelled images at full label budget.

    One :class:`TopDownDataset` (a shallow copy of ``ds``: its crop, targets and augmentation), so a
    teacher cache built over it covers every row. The extra persons keep their boxes, their joints
    are zeroed (``target_weight`` 0: the ground-truth loss ignores them) and their annotation ids
    become negative (``-id``), unique among them and apart from ``ds``'s labelled ones. The two
    splits' image ids must not overlap (the embedded extra split numbers its images after the
    training split's)."""
    if not isinstance(ds, TopDownDataset) or not isinstance(extra, TopDownDataset):
        raise TypeError(f"add_unlabelled needs two TopDownDatasets, got {type(ds).__name__} and {type(extra).__name__}")
    shared = sorted(set(ds.images) & set(extra.images))
    if shared:
        raise ValueError(f"add_unlabelled: {extra.ann_file} and {ds.ann_file} share image ids "
                         f"{shared[:5]}{' ...' if len(shared) > 5 else ''}; the extra split needs its own")
    out = copy.copy(ds)
    out.images = {**ds.images, **{i: {**img, "_dir": str(extra.img_dir)} for i, img in extra.images.items()}}
    out.samples = ds.samples + [{**s, "ann_id": -abs(s["ann_id"]), "joints": np.zeros_like(s["joints"])}
                                for s in extra.samples]
    return out


# --------------------------------------------------------------------------- bottom-up dataset
class BottomUpDataset(Dataset):
    """Whole images letterboxed to ``input_size`` with OpenPose-18 heatmaps, PAFs and a loss mask.

    The mask (1, h, w) is 0 over crowd regions and people without labelled keypoints, so a model is
    not punished for finding people nobody annotated. Augmentation (``train``): random zoom, small
    rotation, horizontal flip, colour jitter (``AugConfig.whole_image()`` by default).
    """

    def __init__(self, ann_file, img_dir, input_size=(128, 128), stride: int = 8, train: bool = False,
                 aug: AugConfig | None = None, sigma: float = 7.0, paf_thickness: float = 1.0,
                 teacher_keypoints: dict | None = None, teacher_maps=None):
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        #: ``{ann_id: (17, 3)}`` keypoints a teacher found (image pixels, v > 0 where it is
        #: confident): with them each sample also carries ``teacher_heatmaps`` / ``teacher_pafs``
        #: drawn from them through the same augmentation (KD targets for a bottom-up student).
        self.teacher_keypoints = teacher_keypoints
        #: A teacher cache (``distill.teacher_cache.TeacherCache``: each person's top-down heatmaps)
        #: whose maps, pasted into the frame, replace the 17 COCO keypoint channels of
        #: ``teacher_heatmaps`` (soft targets: the teacher's own heatmaps instead of Gaussians at its
        #: keypoints); the neck and the PAFs stay drawn from ``teacher_keypoints``.
        if teacher_maps is not None and teacher_keypoints is None:
            raise ValueError("teacher_maps needs teacher_keypoints (the neck and the PAFs are drawn from them)")
        self.teacher_maps = teacher_maps
        self.coco = load_coco_person_keypoints(ann_file)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.codec = PafCodec(self.input_size, stride, sigma, paf_thickness)
        self.train = train
        self.aug = (aug or AugConfig.whole_image()) if train else None
        cat = self.coco["_person_category_id"]
        self.anns: dict[int, list] = {img["id"]: [] for img in self.coco["images"]}
        for ann in self.coco["annotations"]:
            if ann.get("category_id") == cat and ann["image_id"] in self.anns:
                self.anns[ann["image_id"]].append(ann)
        self.image_ids = [i for i, anns in self.anns.items() if anns]
        self.images = {img["id"]: img for img in self.coco["images"]}

    def __len__(self) -> int:
        return len(self.image_ids)

    def to_input(self, kpts: np.ndarray, M: np.ndarray, flipped: bool = False) -> np.ndarray:
        """People's keypoints ``(P, 17, 3)`` from image pixels into the network input (``M``, then
        the left/right swap of a flip); points off the input become unlabelled."""
        kpts = np.array(kpts, dtype=np.float64, copy=True)
        labelled = kpts[..., 2:3] > 0
        kpts[..., :2] = np.where(labelled, affine_points(kpts, M), 0.0)
        if flipped:
            kpts = kpts[:, list(COCO_FLIP_INDEX)]
        inside = np.all((kpts[..., :2] >= 0) & (kpts[..., :2] <= np.array(self.input_size) - 1.0), axis=-1)
        kpts[~inside] = 0.0
        return kpts

    def _ignore_mask(self, anns, img_h: int, img_w: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        ignore = np.zeros((img_h, img_w), dtype=np.uint8)
        for ann in anns:
            if not (ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) == 0):
                continue
            seg = ann.get("segmentation")
            if seg:
                rle = mask_utils.frPyObjects(seg, img_h, img_w) if isinstance(seg, list) or \
                    isinstance(seg.get("counts"), list) else seg
                m = mask_utils.decode(mask_utils.merge(rle) if isinstance(rle, list) else rle)
                ignore |= m.astype(np.uint8)
            else:
                x, y, w, h = (int(round(v)) for v in ann["bbox"])
                ignore[max(y, 0):y + h, max(x, 0):x + w] = 1
        return ignore

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        info, anns = self.images[image_id], self.anns[image_id]
        img = read_rgb(self.img_dir / info["file_name"], f"sample {index}, image id {image_id}")
        h0, w0 = img.shape[:2]
        people = [a for a in anns if not a.get("iscrowd", 0) and a.get("num_keypoints", 1) > 0]
        kpts = np.asarray([a["keypoints"] for a in people], dtype=np.float64).reshape(-1, NUM_COCO_KEYPOINTS, 3)
        ignore = self._ignore_mask(anns, h0, w0)

        M, _, _ = letterbox_matrix((w0, h0), self.input_size)
        flipped = False
        rng = sample_rng() if self.train else None
        if self.train:
            cfg = self.aug
            zoom = float(np.clip(rng.standard_normal() * cfg.scale_factor + 1, 1 - cfg.scale_factor,
                                 1 + cfg.scale_factor))
            rot = float(rng.uniform(-cfg.rotation, cfg.rotation)) if rng.random() < cfg.rotation_prob else 0.0
            c = np.array(self.input_size, dtype=np.float64) / 2
            R = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), rot, zoom)
            M = R @ np.vstack([M, [0, 0, 1]])
            if rng.random() < cfg.flip_prob:
                F_ = np.array([[-1.0, 0, self.input_size[0] - 1], [0, 1, 0], [0, 0, 1]])
                M = (F_ @ np.vstack([M, [0, 0, 1]]))[:2]
                flipped = True
        size = self.input_size
        x = cv2.warpAffine(img, M, size, flags=cv2.INTER_LINEAR)
        ign = cv2.warpAffine(ignore, M, size, flags=cv2.INTER_NEAREST)
        if self.train:
            x = colour_jitter(x, self.aug, rng)
        kpts = self.to_input(kpts, M, flipped)
        heatmaps, pafs = self.codec.encode(kpts)
        mw, mh = self.codec.map_size
        mask = 1.0 - cv2.resize(ign.astype(np.float32), (mw, mh), interpolation=cv2.INTER_AREA)
        mask = (mask > 0.5).astype(np.float32)
        extra = {}
        if self.teacher_keypoints is not None:
            tk = np.asarray([self.teacher_keypoints.get(a["id"], np.zeros((NUM_COCO_KEYPOINTS, 3))) for a in people],
                            dtype=np.float64).reshape(-1, NUM_COCO_KEYPOINTS, 3)
            t_hm, t_paf = self.codec.encode(self.to_input(tk, M, flipped))
            if self.teacher_maps is not None:
                t_hm = soft_openpose_heatmaps(t_hm, self.teacher_maps.paste(
                    [a["id"] for a in people], M, flipped, self.codec.map_size, self.codec.cell_to_input).numpy())
            extra = {"teacher_heatmaps": torch.from_numpy(t_hm), "teacher_pafs": torch.from_numpy(t_paf)}
        return {
            "image": to_tensor_normalized(x),
            "heatmaps": torch.from_numpy(heatmaps),
            "pafs": torch.from_numpy(pafs),
            "mask": torch.from_numpy(mask[None]),
            **extra,
            "meta": {"index": index, "image_id": int(image_id), "flipped": flipped,
                     "affine": torch.from_numpy(np.asarray(M, dtype=np.float32)),
                     "num_persons": len(people)},
        }


def soft_openpose_heatmaps(drawn: np.ndarray, coco_maps: np.ndarray) -> np.ndarray:
    """OpenPose-18 heatmaps + background ``(19, h, w)`` whose COCO joints are ``coco_maps``
    ``(17, h, w)`` (a teacher's heatmaps, clipped to [0, 1]) and whose neck is ``drawn``'s (the maps
    drawn from keypoints by ``PafCodec.encode``); the background is ``1 - max`` of the 18, as drawn."""
    out = np.array(drawn, dtype=np.float32, copy=True)
    out[list(COCO_FROM_OPENPOSE)] = np.clip(coco_maps, 0.0, 1.0)
    out[NUM_OPENPOSE_KEYPOINTS] = 1.0 - out[:NUM_OPENPOSE_KEYPOINTS].max(axis=0)
    return out


# --------------------------------------------------------------------------- top-down inference
def _heatmap_output(out, heatmap_size) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[-1]
    out = out.float()
    w, h = heatmap_size
    if out.shape[-2:] != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out


@torch.no_grad()
def predict_topdown(model, loader, codec: HeatmapCodec, flip_pairs=COCO_FLIP_PAIRS, flip_test: bool = True,
                    decode: str = "official", device="cpu", amp: bool = False, in_vis_thr: float = 0.2,
                    progress: bool = True) -> list[dict]:
    """Run a heatmap model over a ``TopDownDataset`` loader -> COCO keypoint results (image coords).

    The model maps ``(N, 3, H, W)`` to ``(N, K, h, w)`` heatmaps (resized bilinearly when its size
    differs from ``codec.heatmap_size``). With ``flip_test`` the flipped input is averaged in as the
    official code does. Keypoints are decoded in heatmap cells and mapped back through the inverse
    crop affine. ``score`` = box score × mean of the keypoint maxvals above ``in_vis_thr`` (0 when
    none is), as HRNet rescores; OKS-NMS is not applied here.
    """
    model.eval()
    device = torch.device(device)
    results = []
    for batch in tqdm(loader, desc="predict", disable=not progress, leave=False):
        x = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            out = _heatmap_output(model(x), codec.heatmap_size)
            if flip_test:
                out_f = _heatmap_output(model(x.flip(3)), codec.heatmap_size)
                out = flip_test_average(out, out_f, flip_pairs)
        coords, maxvals = codec.decode(out.float().cpu(), method=decode)
        meta = batch["meta"]
        for i in range(len(x)):
            c, s = meta["center"][i].numpy(), meta["scale"][i].numpy()
            xy = transform_preds(coords[i].numpy(), c, s, codec.heatmap_size)
            mv = maxvals[i].numpy().astype(np.float64)
            kpts = np.concatenate([xy, mv[:, None]], axis=1)
            confident = mv[mv > in_vis_thr]
            kpt_score = float(confident.mean()) if len(confident) else 0.0
            results.append({
                "image_id": int(meta["image_id"][i]), "category_id": 1,
                "keypoints": [round(float(v), 3) for v in kpts.reshape(-1)],
                "score": kpt_score * float(meta["score"][i]),
                "center": [float(v) for v in c], "scale": [float(v) for v in s],
            })
    return results


# --------------------------------------------------------------------------- which data a mode uses
def dataset_splits(mode: str | None = None, coco_root=None):
    """The train/val COCO files for a run mode.

    ``quick`` and ``workshop`` use the embedded dataset (generated and cached on first use);
    ``full`` uses real COCO 2017 under ``coco_root`` or ``$COCO_ROOT``, laid out as
    ``annotations/person_keypoints_{train,val}2017.json`` and ``{train,val}2017/*.jpg``.
    Nothing is downloaded: a missing file raises an error saying where to put it.
    """
    from ..config import get_mode
    from .synth import CocoSplit, EmbeddedDataset, ensure_embedded_dataset

    mode = get_mode(mode)
    if mode != "full":
        return ensure_embedded_dataset(mode)
    root = coco_root or os.environ.get("COCO_ROOT")
    if not root:
        raise FileNotFoundError(
            "POSEKD_MODE=full needs real COCO 2017: set COCO_ROOT to a folder containing "
            "annotations/person_keypoints_train2017.json, annotations/person_keypoints_val2017.json, "
            "train2017/ and val2017/ (from cocodataset.org: annotations_trainval2017.zip, train2017.zip, "
            "val2017.zip)")
    root = Path(root).expanduser()
    splits = {s: CocoSplit(root / "annotations" / f"person_keypoints_{s}2017.json", root / f"{s}2017")
              for s in ("train", "val")}
    for s in splits.values():
        for p in (s.ann_file, s.img_dir):
            if not p.exists():
                raise FileNotFoundError(f"COCO_ROOT={root}: {p} is missing; put the COCO 2017 "
                                        f"{'annotation file' if p.suffix == '.json' else 'image folder'} there")
    return EmbeddedDataset(root, splits["train"], splits["val"])
