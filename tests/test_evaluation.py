"""COCO AP on the real sample, OKS against COCOeval.computeOks, PCK, results table."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from posekd_lib.evaluation.coco import (
    COCO_METRICS, coco_evaluate, gap_closed, gt_as_results, oks, oks_matrix, pck, write_coco_results,
)
from posekd_lib.data.keypoints import COCO_OKS_SIGMAS
from coco_helpers import cocoeval_evaluated




def _assert_oks_equal_computeoks(ev):
    """Every (image) OKS matrix COCOeval computed equals oks_matrix on the same dets/gts."""
    n = 0
    for (img_id, cat_id), ious in ev.ious.items():
        if len(ious) == 0:
            continue
        dts = ev._dts[img_id, cat_id]
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")][: ev.params.maxDets[-1]]
        gts = ev._gts[img_id, cat_id]
        mine = oks_matrix(
            [np.reshape(d["keypoints"], (-1, 3)) for d in dts],
            [np.reshape(g["keypoints"], (-1, 3)) for g in gts],
            [g["area"] for g in gts], [g["bbox"] for g in gts])
        np.testing.assert_allclose(mine, ious, rtol=1e-12, atol=1e-14)
        n += ious.size
    return n


def test_coco_evaluate_hrnet_matches_known_figures(coco_sample):
    m = coco_evaluate(coco_sample / "person_keypoints.json", coco_sample / "person_keypoints_results_hrnet.json")
    assert list(m) == list(COCO_METRICS)
    expected = dict(AP=0.861, AP50=0.993, AP75=0.911, APm=0.776, APl=0.937, AR=0.875)
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=5e-4), k


def test_coco_evaluate_sanity_inputs(coco_sample, tmp_path, capsys):
    gt_file = coco_sample / "person_keypoints.json"
    fed_back = gt_as_results(gt_file)
    assert len(fed_back) == 12  # 14 persons, 2 without labelled keypoints
    assert coco_evaluate(gt_file, fed_back)["AP"] == pytest.approx(1.0)
    fake = coco_sample / "person_keypoints_results_cocoapi_fake_img785.json"
    assert coco_evaluate(gt_file, fake, img_ids=[785])["AP"] == pytest.approx(1.0)
    assert coco_evaluate(gt_file, fake)["AP"] < 0.2  # the other images have no predictions
    assert set(coco_evaluate(gt_file, []).values()) == {0.0}
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced

    written = write_coco_results([{**r, "score": np.float32(0.5)} for r in fed_back], tmp_path / "r.json")
    loaded = json.loads(written.read_text())
    assert loaded[0]["score"] == 0.5 and len(loaded) == 12
    assert coco_evaluate(gt_file, written)["AP"] == pytest.approx(1.0)

    with pytest.raises(ValueError, match="absent from the ground truth"):
        coco_evaluate(gt_file, [{**fed_back[0], "image_id": 123456789}])


def test_oks_equals_computeoks_on_hrnet_results(coco_sample):
    results = json.loads((coco_sample / "person_keypoints_results_hrnet.json").read_text())
    ev = cocoeval_evaluated(coco_sample / "person_keypoints.json", results)
    # includes the two persons with no labelled keypoint (bbox rule)
    assert _assert_oks_equal_computeoks(ev) > 50


def test_oks_equals_computeoks_on_random_perturbations(coco_sample):
    rng = np.random.default_rng(0)
    gt = json.loads((coco_sample / "person_keypoints.json").read_text())
    results = []
    for a in gt["annotations"]:
        k = np.reshape(a["keypoints"], (-1, 3)).astype(float)
        x, y, w, h = a["bbox"]
        for _ in range(3):
            noisy = k.copy()
            noisy[:, 0] = np.where(k[:, 2] > 0, k[:, 0], x + rng.uniform(-1.5, 2.5, 17) * w)
            noisy[:, 1] = np.where(k[:, 2] > 0, k[:, 1], y + rng.uniform(-1.5, 2.5, 17) * h)
            noisy[:, :2] += rng.normal(0, rng.uniform(1, 30), (17, 2))
            noisy[:, 2] = rng.uniform(0, 1, 17)
            results.append({"image_id": a["image_id"], "category_id": 1,
                            "keypoints": noisy.ravel().tolist(), "score": float(rng.uniform())})
    ev = cocoeval_evaluated(coco_sample / "person_keypoints.json", results)
    assert _assert_oks_equal_computeoks(ev) > 50


def test_oks_formula_by_hand():
    gt = np.zeros((17, 3))
    gt[:, 0], gt[:, 1], gt[:, 2] = np.arange(17) * 10.0, 50.0, 2
    gt[3, 2] = 0  # not labelled: excluded from the mean
    assert oks(gt, gt, area=1000.0) == pytest.approx(1.0)
    pred = gt.copy()
    pred[0, 0] += 5.0
    pred[3, 0] += 500.0
    e0 = 25.0 / (2 * COCO_OKS_SIGMAS[0]) ** 2 / 1000.0 / 2
    assert oks(pred, gt, area=1000.0) == pytest.approx((15 + math.exp(-e0)) / 16)
    batch = oks(np.stack([gt, pred]), gt, area=1000.0)
    assert batch.shape == (2,) and batch[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="bbox"):
        oks(pred, np.zeros((17, 3)), area=100.0)
    # unlabelled GT: a prediction inside the box grown by w/h on each side scores 1
    assert oks(pred[:, :2] * 0 + 20, np.zeros((17, 3)), area=100.0, bbox=[0, 0, 10, 10]) == pytest.approx(1.0)


def test_pck():
    gt = np.zeros((2, 17, 3))
    gt[..., 2] = 2
    gt[1, :5, 2] = 0
    boxes = np.array([[0, 0, 50, 100], [0, 0, 200, 10]])  # longest sides 100 and 200
    pred = gt[..., :2].copy()
    pred[0, :, 0] += 19.0  # inside 0.2 * 100
    pred[0, 0, 0] += 2.0  # 21 px: outside
    pred[1, :, 1] += 41.0  # outside 0.2 * 200 = 40 ...
    pred[1, :5, 1] = 1e6  # ... and unlabelled points do not count
    assert pck(pred, gt, boxes) == pytest.approx(16 / 29)
    assert pck(pred[0], gt[0], boxes[0]) == pytest.approx(16 / 17)
    assert pck(pred, gt, [100.0, 210.0]) == pytest.approx(28 / 29)
    assert pck(pred[1], gt[1], 50.0, thr=1.0) == pytest.approx(1.0)
    assert math.isnan(pck(pred[0], np.zeros((17, 3)), boxes[0]))


def test_spearman_is_scipys_and_keeps_the_hand_written_ranks_results():
    import numpy as np
    from scipy import stats

    from posekd_lib.evaluation.coco import spearman

    x = [0.0, 0.0, 0.2, 0.5, 0.5, 0.5, 0.9, 0.1]
    y = [0.1, 0.3, 0.2, 0.8, 0.4, 0.9, 0.7, 0.0]
    assert spearman(x, y) == stats.spearmanr(x, y).statistic
    # the Pearson correlation of average ranks, as the hand-written version computed it
    assert spearman(x, y) == pytest.approx(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1], abs=1e-15)
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="3 and 2 values"):
        spearman([1, 2, 3], [1, 2])
    # values the hand-written average-rank version gave (before scipy), ties included
    rng = np.random.default_rng(0)
    a = np.round(rng.random(200), 1)
    b = a + rng.normal(0, 0.3, 200)
    b[:20] = 0
    assert spearman(a, b) == pytest.approx(0.6211455843539403, abs=1e-14)
    assert spearman(a, -b) == pytest.approx(-0.6211455843539403, abs=1e-14)
    assert spearman([3, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(-0.31622776601683794, abs=1e-14)


def test_gap_closed_is_the_share_of_the_teacher_baseline_gap():
    assert gap_closed(0.3, 0.1, 0.6) == pytest.approx(0.4)
    assert gap_closed(0.6, 0.1, 0.6) == pytest.approx(1.0)
    assert gap_closed(0.1, 0.1, 0.6) == 0.0
    assert gap_closed(0.05, 0.1, 0.6) == pytest.approx(-0.1)     # worse than the baseline
    assert math.isnan(gap_closed(0.3, 0.6, 0.6)) and math.isnan(gap_closed(0.3, 0.7, 0.6))  # no gap


def test_evaluation_refuses_a_truncated_image_naming_file_and_sample(tmp_path):
    """A cut-short JPEG used to be scored (grey rows, AP moved silently); evaluation now stops on it."""
    import torch

    from posekd_lib.evaluation.coco import evaluate_topdown
    from posekd_lib.data.synth import generate_split

    split = generate_split(tmp_path / "val", 3, seed=5, num_workers=1, progress=False)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 17, 1))
    kw = dict(input_size=(48, 64), heatmap_size=(12, 16), flip_test=False)
    assert 0 <= evaluate_topdown(model, split, **kw)["AP"] <= 1
    images = json.loads(split.ann_file.read_text())["images"]
    path = split.img_dir / images[1]["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ValueError, match=rf"{path.name} \(sample \d+, image id 2\): JPEG truncated"):
        evaluate_topdown(model, split, **kw)


def test_bottom_up_evaluation_of_the_ground_truth_maps_scores_high(tmp_path):
    """The whole-image path end to end: maps drawn from the ground truth, decoded (peaks + PAF
    grouping), mapped back through the letterbox and scored by COCOeval without person boxes."""
    from types import SimpleNamespace

    from torch import nn

    from posekd_lib.data.datasets import BottomUpDataset
    from posekd_lib.evaluation.coco import evaluate_bottom_up
    from test_data import _ann, _write_coco

    # a whole skeleton (every limb present, so the grouping can link every joint), three people
    body = {0: (120, 35), 1: (116, 31), 2: (124, 31), 3: (111, 34), 4: (129, 34), 5: (100, 60), 6: (140, 60),
            7: (94, 90), 8: (146, 88), 9: (90, 120), 10: (150, 115), 11: (105, 130), 12: (135, 130),
            13: (102, 155), 14: (137, 154), 15: (100, 180), 16: (138, 178)}
    anns = [_ann(1, 1, body, [80, 25, 80, 170]),
            _ann(2, 1, {j: (x + 95, y + 5) for j, (x, y) in body.items()}, [175, 30, 80, 165]),
            _ann(3, 2, {j: (x - 30, y) for j, (x, y) in body.items()}, [50, 25, 80, 170])]
    ann, img_dir = _write_coco(tmp_path / "coco", anns, size=(320, 240), n_images=2)
    ds = BottomUpDataset(ann, img_dir, (128, 128), 8, train=False)
    maps = torch.stack([torch.cat([ds[i]["heatmaps"], ds[i]["pafs"]]) for i in range(len(ds))])

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x):
            out = maps[self.seen:self.seen + len(x)]
            self.seen += len(x)
            return out

    metrics, results = evaluate_bottom_up(Oracle(), SimpleNamespace(ann_file=ann, img_dir=img_dir),
                                          batch_size=1, return_results=True)
    assert len(results) == 3 and {r["image_id"] for r in results} == {1, 2}
    assert metrics["AP"] > 0.9, metrics
    maps.zero_()                                   # a model that finds nobody scores 0
    assert evaluate_bottom_up(Oracle(), SimpleNamespace(ann_file=ann, img_dir=img_dir))["AP"] == 0
