"""The bottom-up MAX78000 student: teacher keypoints as targets, the KD loss, a short train -> QAT -> int8 run."""
import json

import numpy as np
import pytest
import torch

from posekd_lib.train import bottom_up
from posekd_lib.distill import freeze
from posekd_lib.train.recipes import weights_fingerprint
from posekd_lib.models.teachers import load_teacher


def test_teacher_keypoints_become_targets_through_the_same_augmentation():
    teacher = freeze(load_teacher(mode="quick")[0])
    kp = bottom_up.teacher_keypoints(teacher, "quick")
    ds = bottom_up.training_set("quick", kp)
    assert len(kp) > 0
    assert all(k.shape == (17, 3) and set(np.unique(k[:, 2])) <= {0.0, 2.0} for k in kp.values())
    torch.manual_seed(0)
    s = ds[0]
    assert s["teacher_heatmaps"].shape == s["heatmaps"].shape and s["teacher_pafs"].shape == s["pafs"].shape
    # the ground truth given as the "teacher's" keypoints: its targets equal the ground-truth targets
    gt_as_teacher = {a["id"]: np.asarray(a["keypoints"], float).reshape(17, 3)
                     for anns in ds.anns.values() for a in anns}
    mirror = bottom_up.training_set("quick", gt_as_teacher)
    torch.manual_seed(0)
    m = mirror[0]
    torch.testing.assert_close(m["teacher_heatmaps"], m["heatmaps"])
    torch.testing.assert_close(m["teacher_pafs"], m["pafs"])
    assert bottom_up.teacher_keypoints(teacher, "quick").keys() == kp.keys()     # read back from its cache


def test_kd_loss_weights_the_two_targets():
    z = torch.zeros(1, 19, 2, 2), torch.zeros(1, 38, 2, 2)
    batch = {"heatmaps": z[0] + 1, "pafs": z[1], "mask": torch.ones(1, 1, 2, 2),
             "teacher_heatmaps": z[0], "teacher_pafs": z[1]}
    out = bottom_up.kd_loss(0.25)(torch.zeros(1, 57, 2, 2), batch)
    torch.testing.assert_close(out["loss"], 0.75 * out["gt"] + 0.25 * out["kd"])
    assert out["kd"] == 0 and out["gt"] > 0


@pytest.mark.slow  # train (2 + 2 steps) and three whole-image evaluations in quick mode: ~20 s
def test_a_short_distilled_run_trains_quantizes_and_scores():
    teacher = freeze(load_teacher(mode="quick")[0])
    run = bottom_up.train_bottom_up("tiny", "quick", teacher_kp=bottom_up.teacher_keypoints(teacher, "quick"),
                                    steps=(2, 2), batch_size=4, progress=False)
    assert set(run.metrics) == {"float", "qat", "int8"}
    assert all(0 <= m["AP"] <= 1 for m in run.metrics.values())
    info = json.loads((run.run_dir / "run_info.json").read_text())
    assert info["teacher"] == weights_fingerprint(teacher) and info["kd"]   # the card names its teacher
    from posekd_lib.train import History

    clocks = sum(History.load(run.run_dir.parent / f"{run.name}_{p}" / "history.json").train_time_s
                 for p in ("float", "qat"))
    assert info["train_time_s"] == pytest.approx(clocks, abs=0.11)   # the phases' clocks, which survive a resume


def test_map_diagnosis_scores_the_four_mixes_and_the_peaks():
    from posekd_lib.models.ai8x_models import ai85bottomup
    from posekd_lib.data.datasets import dataset_splits

    torch.manual_seed(0)
    model = ai85bottomup("tiny")
    split = dataset_splits("quick").val
    d = bottom_up.map_diagnosis(model, split)
    assert d["frames"] == 16 and d["stride"] == 8
    assert d["AP_labels"] > 0.3                          # the label maps decode into the people
    assert d["AP_student"] < 0.01 and d["AP_student_heatmaps"] < d["AP_labels"]   # an untrained student
    assert d["peaks_label"] > 16 and 0 <= d["peak_recall"] <= 1 and 0 <= d["peak_precision"] <= 1
    assert 0.9 < d["paf_on_limbs_label"] <= 1.0001 and d["paf_on_limbs_student"] < 0.5
    assert model.training                                # left as it was


@pytest.mark.slow  # one 1 + 1-step run in quick mode and its three whole-frame evaluations
def test_a_cached_run_of_another_recipe_is_refused_by_name():
    run = bottom_up.train_bottom_up("tiny", "quick", steps=(1, 1), tag="recipe_check", progress=False)
    assert run.name == "recipe_check"
    with pytest.raises(ValueError, match=r"recipe_check_qat: run 'recipe_check' was trained with another recipe.*'loss'"):
        bottom_up.train_bottom_up("tiny", "quick", steps=(1, 1), tag="recipe_check", progress=False, loss="mse_pos10")
    again = bottom_up.train_bottom_up("tiny", "quick", steps=(1, 1), tag="recipe_check", progress=False)
    assert again.metrics == run.metrics                       # the same recipe: the cached run


def test_a_design_the_mcu_cannot_hold_is_refused_before_training():
    from posekd_lib.models.ai8x_models import ai85bottomup

    bottom_up.check_fits(ai85bottomup(**{k: v for k, v in bottom_up.RECIPE.items() if k in ("variant", "input_size")}))
    with pytest.raises(ValueError, match=r"\(160, 128\) does not fit the MAX78000: L0 \(enc1\): data memory"):
        bottom_up.train_bottom_up("tiny_s4", "quick", input_size=(160, 128), steps=(1, 1), progress=False)


def test_a_cached_heatmap_pasted_into_its_own_crop_is_itself():
    """``TeacherCache.paste`` with the frame = a person's plain crop and its cells = the cache's cells
    warps by the identity: it returns the cached heatmaps of that person; mirrored, the flip partners'."""
    from posekd_lib.data.keypoints import COCO_FLIP_PAIRS
    from posekd_lib.distill.teacher_cache import TeacherCache

    torch.manual_seed(0)
    hm = torch.rand(3, 17, 32, 24).half()
    centers, scales = [[50.0, 60.0], [80.0, 40.0], [120.0, 90.0]], [[0.5, 0.66], [0.4, 0.53], [0.8, 1.06]]
    cache = TeacherCache(hm, [11, 22, 33], centers, scales, [160, 160, 160], (96, 128))
    from posekd_lib.data.transforms import affine_transforms

    plain = affine_transforms(np.asarray(centers), np.asarray(scales), 0.0, (96, 128))
    cells = np.diag([96 / 24, 128 / 32, 1.0])
    got = cache.paste([22], plain[1], False, (24, 32), cells)
    torch.testing.assert_close(got, hm[1].float(), atol=1e-5, rtol=0)
    perm = list(range(17))
    for a, b in COCO_FLIP_PAIRS:
        perm[a], perm[b] = b, a
    torch.testing.assert_close(cache.paste([22], plain[1], True, (24, 32), cells), hm[1, perm].float(), atol=1e-5, rtol=0)
    assert cache.paste([99], plain[1], False, (24, 32), cells).abs().sum() == 0      # not in the cache: nothing


def test_soft_targets_peak_where_the_teachers_keypoints_are_drawn():
    """The teacher's heatmaps pasted into an augmented frame (letterbox, zoom, rotation, mirror) put
    each joint's peak where the Gaussian drawn at the teacher's keypoint for it is (the keypoints are
    those heatmaps' flip-tested peaks), keep the drawn neck and recompute the background."""
    from posekd_lib.train.recipes import teacher_cache_for

    teacher = freeze(load_teacher(mode="quick")[0])
    kp, maps = bottom_up.teacher_keypoints(teacher, "quick"), teacher_cache_for(teacher, "quick")
    soft = bottom_up.training_set("quick", kp, (144, 112), 4, 3.5, teacher_maps=maps)
    hard = bottom_up.training_set("quick", kp, (144, 112), 4, 3.5)
    close, total, flips = 0, 0, set()
    for i in range(len(soft))[:40]:
        if len(soft.anns[soft.image_ids[i]]) != 1:
            continue                                       # one person: one peak per channel
        torch.manual_seed(i)
        s = soft[i]
        torch.manual_seed(i)
        h = hard[i]
        flips.add(bool(s["meta"]["flipped"]))
        torch.testing.assert_close(s["teacher_pafs"], h["teacher_pafs"])
        torch.testing.assert_close(s["teacher_heatmaps"][1], h["teacher_heatmaps"][1])          # the neck: drawn
        torch.testing.assert_close(s["teacher_heatmaps"][18], 1 - s["teacher_heatmaps"][:18].amax(0))
        for c in [c for c in range(18) if c != 1 and h["teacher_heatmaps"][c].max() > 0.9]:
            w = h["teacher_heatmaps"].shape[-1]
            ps, ph = int(s["teacher_heatmaps"][c].argmax()), int(h["teacher_heatmaps"][c].argmax())
            close += np.hypot(ps % w - ph % w, ps // w - ph // w) <= 1.5
            total += 1
    assert flips == {True, False} and total > 50
    assert close / total > 0.9, (close, total)      # 54 of 57 when written; 47 without the mirror's swap


def test_soft_targets_are_a_config_option_of_the_bottom_up_fpd_term():
    from pathlib import Path

    from posekd_lib.runs import runconfig as rc

    bottom_up_config = Path(__file__).resolve().parent.parent / "configs" / "bottomup_s4_kd.yaml"
    cfg = rc.apply_overrides(rc.from_yaml(bottom_up_config), ["data.mode=quick", "distill.terms.0.options.targets=heatmaps"])
    rc.validate(cfg)
    assert cfg.distill.terms[0].options == {"targets": "heatmaps"}
    with pytest.raises(rc.ConfigError, match=r"distill\.terms\[0\]\.options\.targets: 'peaks' is not one of"):
        rc.validate(rc.apply_overrides(rc.from_yaml(bottom_up_config), ["distill.terms.0.options.targets=peaks"]))
    with pytest.raises(rc.ConfigError, match="whose one option is 'targets'"):
        rc.validate(rc.apply_overrides(rc.from_yaml(bottom_up_config), ["distill.terms.0.options.tau=2"]))
