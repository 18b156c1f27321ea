"""Target generation speed: vectorized codecs vs plain per-pixel Python loops, and data-loading rate.

Run: ``python benchmarks/bench_targets.py``. Prints, from one run:
  1. top-down heatmaps (17 x 64 x 48, σ=2) per sample: loop reference vs ``HeatmapCodec.encode``;
  2. bottom-up heatmaps + PAFs (OpenPose 19 + 38 channels) per sample: loop vs ``PafCodec.encode``,
     and per image of a 32-image batch through ``PafCodec.encode_batch``;
  3. ``TopDownDataset`` samples/s with training augmentation (real COCO sample when present, else a
     generated image folder), in-process and through a 2-worker DataLoader.
The loop versions are written here as the reference; the script asserts both agree numerically.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

from posekd_lib.data.codecs import HeatmapCodec, PafCodec
from posekd_lib.data.datasets import TopDownDataset
from posekd_lib.data.keypoints import (COCO_KEYPOINTS, OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS,
                                  coco17_to_openpose18)

COCO_SAMPLE = REPO.parent / "shared" / "realdata" / "coco_sample"


# --------------------------------------------------------------------------- loop references
def loop_heatmaps(k, input_size, heatmap_size, sigma):
    """Per-pixel loops over every heatmap cell (the plainest statement of the HRNet target)."""
    w, h = heatmap_size
    sx, sy = input_size[0] / w, input_size[1] / h
    radius = 3 * sigma
    hm = np.zeros((len(k), h, w), np.float32)
    weight = np.zeros(len(k), np.float32)
    for j, (x, y, v) in enumerate(k):
        mx, my = math.floor(x / sx + 0.5), math.floor(y / sy + 0.5)
        if v <= 0 or mx - radius >= w or my - radius >= h or mx + radius + 1 <= 0 or my + radius + 1 <= 0:
            continue
        weight[j] = 1.0
        for yy in range(h):
            for xx in range(w):
                if abs(xx - mx) <= radius and abs(yy - my) <= radius:
                    hm[j, yy, xx] = math.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * sigma ** 2))
    return hm, weight


def loop_pafs(people, codec: PafCodec):
    """Per-pixel loops for OpenPose heatmaps (max over people) and PAFs (averaged over people)."""
    w, h = codec.map_size
    s, shift = codec.stride, codec.stride / 2 - 0.5
    op = coco17_to_openpose18(people)
    heat = np.zeros((19, h, w))
    for p in op:
        for j, (x, y, v) in enumerate(p):
            if v <= 0:
                continue
            for yy in range(h):
                for xx in range(w):
                    e = ((xx * s + shift - x) ** 2 + (yy * s + shift - y) ** 2) / (2 * codec.sigma ** 2)
                    if e <= 4.6052:
                        heat[j, yy, xx] = max(heat[j, yy, xx], math.exp(-e))
    for yy in range(h):
        for xx in range(w):
            heat[18, yy, xx] = 1 - max(heat[j, yy, xx] for j in range(18))

    pafs = np.zeros((38, h, w))
    for (a, b), (cx, cy) in zip(OPENPOSE_LIMBS, OPENPOSE_PAF_CHANNELS):
        count = np.zeros((h, w))
        for p in op:
            if p[a, 2] <= 0 or p[b, 2] <= 0:
                continue
            ax, ay = (p[a, 0] - shift) / s, (p[a, 1] - shift) / s
            bx, by = (p[b, 0] - shift) / s, (p[b, 1] - shift) / s
            length = math.hypot(bx - ax, by - ay)
            if length <= 1e-7:
                continue
            ux, uy = (bx - ax) / length, (by - ay) / length
            for yy in range(h):
                for xx in range(w):
                    t = min(max((xx - ax) * ux + (yy - ay) * uy, 0.0), length)
                    if (xx - ax - t * ux) ** 2 + (yy - ay - t * uy) ** 2 <= codec.paf_thickness ** 2:
                        pafs[cx, yy, xx] += ux
                        pafs[cy, yy, xx] += uy
                        count[yy, xx] += 1
        pafs[cx] /= np.maximum(count, 1)
        pafs[cy] /= np.maximum(count, 1)
    return heat, pafs


def per_call(*fns, repeats=7, min_time=0.1, clock=time.process_time):
    """Seconds per call of each function: best of ``repeats`` batches of at least ``min_time`` (as
    ``timeit`` advises, the minimum is the least disturbed by other processes on a shared machine).
    The batches of the functions alternate, so a speed-up compares runs made under the same load,
    and the clock is this process's CPU time, so waiting for a core held by other jobs is not counted."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            n, t0 = 0, clock()
            while True:
                fn()
                n += 1
                if clock() - t0 >= min_time:
                    break
            best[i] = min(best[i], (clock() - t0) / n)
    return best


# --------------------------------------------------------------------------- data set for loading speed
def _person(rng, cx, cy, s):
    base = np.array([[0, -40], [-3, -43], [3, -43], [-7, -41], [7, -41], [-12, -30], [12, -30], [-15, -12],
                     [15, -12], [-16, 5], [16, 5], [-8, 5], [8, 5], [-8, 25], [8, 25], [-8, 45], [8, 45]], float)
    return np.column_stack([base * s + [cx, cy] + rng.normal(0, 2, (17, 2)), np.full(17, 2.0)])


def synthetic_folder(root: Path, n_images=8) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n_images + 1):
        img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{i}.jpg"), img)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for j in range(2):
            k = _person(rng, 160 + 300 * j, 240, 3.0)
            x0, y0 = k[:, :2].min(0)
            x1, y1 = k[:, :2].max(0)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                         "num_keypoints": 17, "keypoints": k.reshape(-1).tolist()})
    cat = {"id": 1, "name": "person", "keypoints": list(COCO_KEYPOINTS), "skeleton": []}
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [cat]}))
    return root / "ann.json", root / "images"


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    # 1. top-down heatmaps
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2)
    # a typical crop: most joints labelled, a few missing, one just outside the crop
    k = np.column_stack([rng.uniform(0, 192, 17), rng.uniform(0, 256, 17), rng.choice([0, 1, 2], 17, p=[.15, .15, .7])])
    k[3, :2] = [-10, 40]
    ref_hm, ref_w = loop_heatmaps(k, codec.input_size, codec.heatmap_size, codec.sigma)
    hm, w = codec.encode(k)
    np.testing.assert_allclose(hm, ref_hm, atol=1e-6)
    np.testing.assert_array_equal(w, ref_w)
    t_loop, t_vec = per_call(lambda: loop_heatmaps(k, codec.input_size, codec.heatmap_size, codec.sigma),
                             lambda: codec.encode(k))
    print(f"heatmaps 17x64x48      loop {t_loop * 1e3:8.2f} ms   vectorized {t_vec * 1e6:8.1f} us   "
          f"speed-up {t_loop / t_vec:7.0f}x")

    # 2. bottom-up heatmaps + PAFs
    for size, people_n in (((128, 128), 2), ((368, 368), 3)):
        paf_codec = PafCodec(size, stride=8)
        people = np.stack([_person(rng, size[0] * (i + 0.5) / people_n, size[1] / 2, size[1] / 130)
                           for i in range(people_n)])
        people[0, 3:5, 2] = 0
        ref_heat, ref_paf = loop_pafs(people, paf_codec)
        heat, paf = paf_codec.encode(people)
        np.testing.assert_allclose(heat, ref_heat, atol=1e-6)
        np.testing.assert_allclose(paf, ref_paf, atol=1e-6)
        t_loop, t_vec = per_call(lambda: loop_pafs(people, paf_codec), lambda: paf_codec.encode(people),
                                 repeats=5)
        print(f"heatmaps+PAFs {size[0]}x{size[1]} ({people_n} people, 57x{paf_codec.map_size[1]}x"
              f"{paf_codec.map_size[0]})  loop {t_loop * 1e3:8.2f} ms   vectorized {t_vec * 1e6:8.1f} us   "
              f"speed-up {t_loop / t_vec:7.0f}x")
        # a training batch of 32 images encoded in one call (each image's maps equal encoding it alone)
        batch = [people + rng.normal(0, 1.0, people.shape) * [1, 1, 0] for _ in range(32)]
        heat_b, paf_b = paf_codec.encode_batch(batch)
        np.testing.assert_array_equal(paf_b[0], paf_codec.encode(batch[0])[1])
        (t_batch,) = per_call(lambda: paf_codec.encode_batch(batch), repeats=5)
        print(f"  in batches of 32 images (encode_batch): {t_batch / 32 * 1e6:8.1f} us per image   "
              f"speed-up {t_loop * 32 / t_batch:7.0f}x")

    # 3. data loading
    with tempfile.TemporaryDirectory() as tmp:
        if (COCO_SAMPLE / "person_keypoints.json").is_file():
            ann, img_dir, what = COCO_SAMPLE / "person_keypoints.json", COCO_SAMPLE / "images", "COCO sample"
        else:
            (ann, img_dir), what = synthetic_folder(Path(tmp)), "synthetic 640x480 JPEGs"
        ds = TopDownDataset(ann, img_dir, train=True)
        n = 120
        ds[0]
        t0 = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        rate = n / (time.perf_counter() - t0)
        print(f"TopDownDataset 256x192 + augmentation ({what}): {rate:6.1f} samples/s in one process")
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [i % len(ds) for i in range(n)]),
                                             batch_size=16, num_workers=2)
        t0 = time.perf_counter()
        for _ in loader:
            pass
        print(f"TopDownDataset through DataLoader(num_workers=2, batch 16): "
              f"{n / (time.perf_counter() - t0):6.1f} samples/s (includes worker start-up)")


if __name__ == "__main__":
    main()
