"""Plotting helpers draw what they claim (markers, limbs, panels) under the Agg backend."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from posekd_lib.evaluation import plotting  # noqa: E402
from posekd_lib.data.keypoints import (  # noqa: E402
    COCO_KEYPOINTS, COCO_SKELETON, NUM_OPENPOSE_PAFS, OPENPOSE_PAF_CHANNELS,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _person(rng=np.random.default_rng(0)):
    k = np.zeros((17, 3))
    k[:, :2] = rng.uniform(10, 90, (17, 2))
    k[:, 2] = 2
    k[[3, 9, 14, 16], 2] = 1
    k[[4, 10, 15], 2] = 0
    return k


def _markers(ax, gid):
    return [c for c in ax.collections if c.get_gid() == gid]


def test_draw_skeleton_marks_visible_occluded_and_skips_unlabelled():
    k = _person()
    fig, ax = plt.subplots()
    assert plotting.draw_skeleton(ax, k) is ax
    (vis,), (occ,) = _markers(ax, "visible"), _markers(ax, "occluded")
    np.testing.assert_allclose(vis.get_offsets(), k[k[:, 2] == 2, :2])
    np.testing.assert_allclose(occ.get_offsets(), k[k[:, 2] == 1, :2])
    assert len(occ.get_facecolors()) == 0 or np.all(occ.get_facecolors()[:, 3] == 0)  # hollow
    v = k[:, 2]
    drawn = [(a, b) for a, b in COCO_SKELETON if v[a] > 0 and v[b] > 0]
    assert len(ax.lines) == len(drawn) < len(COCO_SKELETON)
    assert sum(line.get_linestyle() == "--" for line in ax.lines) == sum(min(v[a], v[b]) == 1 for a, b in drawn)
    left = [to_hex(c) for c, i in zip(vis.get_facecolors(), np.flatnonzero(v == 2)) if COCO_KEYPOINTS[i].startswith("left")]
    assert left and set(left) == {plotting.SIDE_COLORS["left"]}


def test_draw_skeleton_with_scores_and_bad_shape():
    k = _person()
    k[:, 2] = np.linspace(0, 1, 17)
    fig, ax = plt.subplots()
    plotting.draw_skeleton(ax, k, score_thr=0.5, labels=True)
    assert len(_markers(ax, "visible")[0].get_offsets()) == int((k[:, 2] >= 0.5).sum())
    assert not _markers(ax, "occluded")
    assert len(ax.texts) == int((k[:, 2] >= 0.5).sum())
    with pytest.raises(ValueError, match="17, 3"):
        plotting.draw_skeleton(ax, k[:13])


def test_image_and_heatmap_figures():
    img = np.random.default_rng(2).normal(size=(3, 64, 48))  # CHW, normalised: shown rescaled
    fig, ax = plotting.show_image_with_poses(img, [_person(), _person()], title="two")
    shown = ax.get_images()[0].get_array()
    assert shown.shape == (64, 48, 3) and shown.min() == 0 and shown.max() == 1
    assert len(_markers(ax, "visible")) == 2 and ax.get_title() == "two"

    hm = np.random.default_rng(1).random((17, 16, 12))
    fig, ax = plt.subplots()
    plotting.heatmap_overlay(ax, img, hm)
    over = ax.get_images()[1]
    assert over.get_extent() == [0, 48, 64, 0] and np.allclose(over.get_array(), hm.max(0))

    fig = plotting.heatmap_grid(hm, COCO_KEYPOINTS, ncols=6)
    titled = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(fig.axes) == 18 and titled[0] == "0 nose" and len(titled) == 17
    assert len(plotting.heatmap_grid(hm[:3], names=None, img=img).axes) == 6


def test_paf_quiver_draws_only_present_limbs():
    pafs = np.zeros((NUM_OPENPOSE_PAFS, 8, 6))
    pafs[OPENPOSE_PAF_CHANNELS[0][0], 2:4, 1:3] = 1.0  # one limb pointing right
    pafs[OPENPOSE_PAF_CHANNELS[5][1], 5, 4] = -0.8  # another pointing up
    fig, ax = plt.subplots()
    plotting.paf_quiver(ax, np.zeros((32, 24, 3)), pafs, OPENPOSE_PAF_CHANNELS)
    quivers = [c for c in ax.collections if isinstance(c, matplotlib.quiver.Quiver)]
    assert [q.N for q in quivers] == [4, 1]
    np.testing.assert_allclose(quivers[1].get_offsets(), [[(4 + 0.5) * 4, (5 + 0.5) * 4]])


def test_compare_models_and_training_curves():
    gt = _person()
    fig = plotting.compare_models(np.zeros((100, 100, 3)), {"teacher": gt, "student": gt + [3, 1, 0]}, gt=gt)
    assert [a.get_title() for a in fig.axes] == ["ground truth", "teacher", "student"]
    x0, x1 = fig.axes[0].get_xlim()
    assert 0 <= x0 < gt[gt[:, 2] > 0, 0].min() and x1 > gt[gt[:, 2] > 0, 0].max()

    fig = plotting.training_curves({"train_loss": [3, 2, 1], "val_loss": [3.5, 2.5, 2], "val_AP": [0.1, 0.3, 0.4]})
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train_loss", "val_loss"]
    assert len(plotting.training_curves({"loss": [1.0, 0.5]}).axes) == 1


def test_coco_skeleton_figure_labels_every_keypoint():
    spec = importlib.util.spec_from_file_location("make_figures_coco", REPO / "scripts" / "make_figures_coco.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fig = mod.make_figure()
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {f"{i} {n}" for i, n in enumerate(COCO_KEYPOINTS)} <= texts
    assert len(fig.axes[0].lines) == len(COCO_SKELETON)
