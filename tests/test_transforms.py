"""Crop geometry: center/scale, affine round trips, flips, letterbox."""
import numpy as np
import pytest

from posekd_lib.data.keypoints import COCO_FLIP_PAIRS, COCO_KEYPOINTS
from posekd_lib.data.transforms import (affine_points, box_to_center_scale, crop, fliplr_keypoints,
                                   get_affine_transform, letterbox_matrix, transform_preds)


def test_box_to_center_scale_matches_hrnet_rule():
    # a tall box 100x300 for a 192x256 input: width grows to 0.75 * 300 = 225
    c, s = box_to_center_scale([10, 20, 100, 300], aspect_ratio=192 / 256)
    np.testing.assert_allclose(c, [60, 170])
    np.testing.assert_allclose(s, [225 / 200 * 1.25, 300 / 200 * 1.25], rtol=1e-6)
    # a wide box: height grows
    c, s = box_to_center_scale([0, 0, 300, 100], aspect_ratio=0.75)
    np.testing.assert_allclose(s, [300 / 200 * 1.25, 400 / 200 * 1.25], rtol=1e-6)


def test_affine_maps_box_centre_to_output_centre_and_inverse_is_inverse():
    M = get_affine_transform([300, 200], [1.2, 1.6], 30, (192, 256))
    Minv = get_affine_transform([300, 200], [1.2, 1.6], 30, (192, 256), inv=True)
    np.testing.assert_allclose(affine_points([[300, 200]], M), [[96, 128]], atol=1e-3)
    A = np.vstack([M, [0, 0, 1]]) @ np.vstack([Minv, [0, 0, 1]])
    np.testing.assert_allclose(A, np.eye(3), atol=1e-5)
    # zoom: the box width (1.2 * 200 px) spans the output width
    no_rot = get_affine_transform([300, 200], [1.2, 1.6], 0, (192, 256))
    np.testing.assert_allclose(no_rot[0, 0], 192 / 240, rtol=1e-5)


@pytest.mark.parametrize("input_size,heatmap_size", [((192, 256), (48, 64)), ((288, 384), (72, 96))])
def test_crop_then_inverse_round_trips_keypoints(input_size, heatmap_size):
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = [rng.uniform(0, 300), rng.uniform(0, 200), rng.uniform(20, 300), rng.uniform(20, 300)]
        c, s = box_to_center_scale(box, input_size[0] / input_size[1])
        rot = rng.uniform(-60, 60)
        pts = np.column_stack([rng.uniform(box[0], box[0] + box[2], 17), rng.uniform(box[1], box[1] + box[3], 17)])
        M = get_affine_transform(c, s, rot, input_size)
        back = affine_points(affine_points(pts, M), get_affine_transform(c, s, rot, input_size, inv=True))
        np.testing.assert_allclose(back, pts, atol=1e-2)
        # heatmap coordinates come back through transform_preds (rotation-free decoding path)
        Mh = get_affine_transform(c, s, 0, heatmap_size)
        np.testing.assert_allclose(transform_preds(affine_points(pts, Mh), c, s, heatmap_size), pts, atol=1e-2)


def test_crop_samples_the_right_pixels():
    img = np.zeros((300, 400, 3), np.uint8)
    img[140:160, 290:310] = 255          # white square centred at (299.5, 149.5)
    c, s = np.array([299.5, 149.5]), np.array([0.6, 0.8])
    out = crop(img, c, s, 0, (192, 256))
    ys, xs = np.nonzero(out[..., 0] > 128)
    assert abs(xs.mean() - 95.5) < 1.0 and abs(ys.mean() - 127.5) < 1.0
    # the square is 20 px wide, the box 120 px -> 20 * 192 / 120 = 32 px in the crop
    assert abs((xs.max() - xs.min() + 1) - 32) <= 2


def test_fliplr_twice_is_identity_and_swaps_left_right():
    rng = np.random.default_rng(1)
    k = np.column_stack([rng.uniform(0, 99, 17), rng.uniform(0, 99, 17), rng.integers(0, 3, 17)])
    f = fliplr_keypoints(k, 100, COCO_FLIP_PAIRS)
    np.testing.assert_allclose(fliplr_keypoints(f, 100, COCO_FLIP_PAIRS), k)
    ls, rs = COCO_KEYPOINTS.index("left_shoulder"), COCO_KEYPOINTS.index("right_shoulder")
    k[rs, 2] = 2
    f = fliplr_keypoints(k, 100, COCO_FLIP_PAIRS)
    assert f[ls, 0] == pytest.approx(99 - k[rs, 0]) and f[ls, 2] == 2
    assert f[0, 0] == pytest.approx(99 - k[0, 0]) or k[0, 2] == 0


def test_fliplr_mirrors_labelled_points_and_keeps_unlabelled_at_zero():
    k = np.zeros((17, 3))
    k[5] = [10, 20, 2]
    f = fliplr_keypoints(k, 100, COCO_FLIP_PAIRS)
    np.testing.assert_allclose(f[6], [89, 20, 2])
    assert np.all(f[np.arange(17) != 6] == 0)


def test_letterbox_fits_and_centres():
    M, zoom, off = letterbox_matrix((640, 320), (128, 128))
    assert zoom == pytest.approx(0.2)
    np.testing.assert_allclose(affine_points([[0, 0], [640, 320]], M), [[0, 32], [128, 96]])


def test_center_scale_match_official_hrnet_results(coco_sample):
    """Every official HRNet result on the real sample carries the center/scale it cropped with;
    each must come from one detector box through our box_to_center_scale (w32_256x192: w/h = 0.75)."""
    import json

    results = json.loads((coco_sample / "person_keypoints_results_hrnet.json").read_text())
    dets = json.loads((coco_sample / "person_detection_results_AP_H_56.json").read_text())
    for r in results:
        cands = [np.concatenate(box_to_center_scale(d["bbox"], 0.75)) for d in dets if d["image_id"] == r["image_id"]]
        err = np.abs(np.array(cands) - np.concatenate([r["center"], r["scale"]])).max(axis=1)
        assert err.min() < 1e-3


def test_affine_transforms_equal_get_affine_transform_for_a_batch():
    """The batched similarity (the teacher cache's warp) is the three-point transform, box by box."""
    from posekd_lib.data.transforms import affine_transforms

    rng = np.random.default_rng(0)
    centers, scales, rots = rng.uniform(0, 600, (64, 2)), rng.uniform(0.3, 3, (64, 2)), rng.uniform(-45, 45, 64)
    for size in ((96, 128), (192, 256)):
        batched = affine_transforms(centers, scales, rots, size)
        one_by_one = np.stack([get_affine_transform(c, s, r, size) for c, s, r in zip(centers, scales, rots)])
        np.testing.assert_allclose(batched[:, :2], one_by_one, rtol=1e-5, atol=1e-3)  # float32 points there
        np.testing.assert_array_equal(batched[:, 2], np.tile([0.0, 0.0, 1.0], (64, 1)))
    np.testing.assert_allclose(affine_transforms(centers, scales, 0.0, (96, 128))[:, :2],
                               np.stack([get_affine_transform(c, s, 0.0, (96, 128)) for c, s in zip(centers, scales)]),
                               rtol=1e-5, atol=1e-3)
