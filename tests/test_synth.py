"""The embedded dataset generator: determinism, COCO format, annotation validity, caching."""
from __future__ import annotations

import json

import numpy as np
import pytest

from posekd_lib.data import synth
from posekd_lib.data.synth import people, splits
from posekd_lib.data.keypoints import COCO_KEYPOINTS, COCO_SKELETON_1BASED

KP = {n: i for i, n in enumerate(COCO_KEYPOINTS)}


def _single_person_scene(yaw: float, kind: str = "stand", height_px: float = 200.0) -> dict:
    """One person at the image centre, no clutter objects, head looking straight ahead."""
    scene = synth.sample_scene(np.random.default_rng(11), 0.0, (200, 240))
    p = synth.sample_person(np.random.default_rng(5), kind=kind, yaw=yaw)
    p["pose"]["body"].update(head_yaw=0.0, head_pitch=0.0, roll=0.0, twist=0.0, bend=0.0, lean=0.0)
    p["pos"] = np.array([0.0, 0.0, scene["f"] * p["height"] / height_px])
    scene.update(persons=[p], objects=[], roll=0.0)
    return scene


def _kps(ann: dict) -> np.ndarray:
    return np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)


def test_render_is_deterministic_and_seed_dependent():
    a, b, c = synth.render_sample(7), synth.render_sample(7), synth.render_sample(8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    assert a[1] == b[1]
    assert a[0].shape == (240, 320, 3) and a[0].dtype == np.uint8
    assert not np.array_equal(a[0], c[0])


def test_annotations_agree_with_the_rendered_label_map_and_depth():
    """v=2: the point's pixel shows its own person, within the joint's part thickness.
    v=1: inside the image and covered there, by another person / object (label differs) or by a
    nearer own body part (front depth more than the tolerance in front of the joint).
    v=0: x = y = 0. bbox = tight box of the label mask, area = its pixel count."""
    counts = {"v2": 0, "v1_other": 0, "v1_self": 0, "v0": 0}
    for seed in range(24):
        scene = synth.sample_scene(np.random.default_rng(seed), 0.8)
        img, anns, label, ex = synth.render_scene(scene)
        h, w = label.shape
        ids, n = np.unique(label, return_counts=True)
        assert set(ids[(ids > 0) & (n >= synth.MIN_PERSON_AREA)]) == {i + 1 for i in ex["person_index"]}
        for ann, pi, z, tol in zip(anns, ex["person_index"], ex["kp_z"], ex["kp_tol"]):
            mask = label == pi + 1
            k = _kps(ann)
            v = k[:, 2]
            assert set(v) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((v > 0).sum())
            assert ann["area"] == int(mask.sum()) >= synth.MIN_PERSON_AREA
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["iscrowd"] == 0 and ann["category_id"] == 1
            assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann["segmentation"])
            bx, by, bw, bh = ann["bbox"]
            for j, (x, y, vis) in enumerate(k):
                if vis == 0:
                    assert x == 0 and y == 0
                    counts["v0"] += 1
                    continue
                assert 0 <= x < w and 0 <= y < h
                px, py = int(np.floor(x)), int(np.floor(y))
                if vis == 2:
                    assert label[py, px] == pi + 1, (seed, j)
                    assert ex["depth"][py, px] >= z[j] - tol[j] - 1e-4
                    assert bx <= x < bx + bw and by <= y < by + bh
                    counts["v2"] += 1
                elif label[py, px] != pi + 1:
                    counts["v1_other"] += 1
                else:
                    assert ex["depth"][py, px] < z[j] - tol[j], (seed, j)
                    counts["v1_self"] += 1
    assert all(n > 20 for n in counts.values()), counts


def test_frontal_person_has_left_on_image_right_and_visible_face():
    _, anns, _, _ = synth.render_scene(_single_person_scene(yaw=0.0))
    k = _kps(anns[0])
    for a, b in ((KP["left_shoulder"], KP["right_shoulder"]), (KP["left_hip"], KP["right_hip"]),
                 (KP["left_eye"], KP["right_eye"]), (KP["left_ear"], KP["right_ear"])):
        assert k[a, 2] > 0 and k[b, 2] > 0
        assert k[a, 0] > k[b, 0], COCO_KEYPOINTS[a]
    assert (k[[KP["nose"], KP["left_eye"], KP["right_eye"]], 2] == 2).all()
    assert (k[:, 2] == 2).sum() >= 15
    assert k[KP["nose"], 1] < k[KP["left_shoulder"], 1] < k[KP["left_hip"], 1] < k[KP["left_ankle"], 1]


def test_person_facing_away_has_no_face_points_and_mirrored_sides():
    _, anns, _, _ = synth.render_scene(_single_person_scene(yaw=180.0))
    k = _kps(anns[0])
    assert (k[[KP["nose"], KP["left_eye"], KP["right_eye"]], 2] == 0).all()
    assert (k[[KP["left_ear"], KP["right_ear"]], 2] > 0).all()
    assert k[KP["left_shoulder"], 0] < k[KP["right_shoulder"], 0]
    assert k[KP["left_hip"], 0] < k[KP["right_hip"], 0]


def test_profile_view_self_occludes_the_far_side():
    _, anns, _, _ = synth.render_scene(_single_person_scene(yaw=90.0))  # left side away from the camera
    k = _kps(anns[0])
    assert k[KP["left_hip"], 2] == 1 and k[KP["right_hip"], 2] == 2
    assert k[KP["left_shoulder"], 2] == 1 and k[KP["right_shoulder"], 2] == 2
    assert k[KP["left_eye"], 2] == 0 and k[KP["right_eye"], 2] == 2 and k[KP["nose"], 2] == 2


def test_sampled_poses_respect_proportions_and_joint_limits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = synth.sample_person(rng)
        for arm in p["pose"]["arms"]:
            assert all(lo <= arm[n] <= hi for n, (lo, hi) in people._ARM_LIMITS.items())
        for leg in p["pose"]["legs"]:
            assert all(lo <= leg[n] <= hi for n, (lo, hi) in people._LEG_LIMITS.items())
        k = synth.person_skeleton(p)["kp"] / p["height"]
        seg = lambda a, b: np.linalg.norm(k[KP[a]] - k[KP[b]])
        for s in ("left", "right"):
            assert 0.15 < seg(f"{s}_shoulder", f"{s}_elbow") < 0.19
            assert 0.13 < seg(f"{s}_elbow", f"{s}_wrist") < 0.16
            assert 0.22 < seg(f"{s}_hip", f"{s}_knee") < 0.27
            assert 0.22 < seg(f"{s}_knee", f"{s}_ankle") < 0.27
        assert 0.14 < seg("left_hip", "right_hip") < 0.2
        assert seg("left_eye", "right_eye") < seg("left_ear", "right_ear")


def test_split_is_valid_coco_and_independent_of_worker_count(tmp_path):
    from pycocotools.coco import COCO

    a = synth.generate_split(tmp_path / "a", 5, seed=3, num_workers=1, progress=False)
    b = synth.generate_split(tmp_path / "b", 5, seed=3, num_workers=2, progress=False)
    c = synth.generate_split(tmp_path / "c", 5, seed=4, num_workers=1, progress=False)
    assert a.ann_file.read_bytes() == b.ann_file.read_bytes()
    assert a.ann_file.read_bytes() != c.ann_file.read_bytes()
    files = sorted(p.name for p in a.img_dir.iterdir())
    assert files == sorted(p.name for p in b.img_dir.iterdir()) and len(files) == 5
    assert all((a.img_dir / f).read_bytes() == (b.img_dir / f).read_bytes() for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left

    coco = COCO(str(a.ann_file))
    cat = coco.loadCats(coco.getCatIds(catNms=["person"]))[0]
    assert cat["keypoints"] == list(COCO_KEYPOINTS)
    assert [tuple(e) for e in cat["skeleton"]] == list(COCO_SKELETON_1BASED)
    info = json.loads(a.ann_file.read_text())["info"]
    assert info["version"] == synth.SYNTH_VERSION and info["params"]["seed"] == 3
    import cv2

    for img in coco.loadImgs(coco.getImgIds()):
        arr = cv2.imread(str(a.img_dir / img["file_name"]))
        assert arr.shape == (img["height"], img["width"], 3) == (240, 320, 3)
    ids = [x["id"] for x in coco.dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 5


def test_cache_is_reused_regenerated_on_change_and_written_atomically(tmp_path, monkeypatch):
    root = tmp_path / "embedded"
    kw = dict(root=root, sizes={"train": 3, "val": 2}, num_workers=1, progress=False)
    ds = synth.ensure_embedded_dataset(**kw)
    assert len(json.loads(ds.train.ann_file.read_text())["images"]) == 3
    assert len(list(ds.val.img_dir.iterdir())) == 2
    stamp = ds.train.ann_file.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(splits, "generate_split", lambda *a, **k: calls.append(a))
    assert synth.ensure_embedded_dataset(**kw) == ds and not calls
    monkeypatch.undo()
    assert ds.train.ann_file.stat().st_mtime_ns == stamp

    ds2 = synth.ensure_embedded_dataset(**kw, difficulty=0.2)
    assert json.loads(ds2.train.ann_file.read_text())["info"]["params"]["difficulty"] == 0.2
    assert json.loads((root / "manifest.json").read_text())["params"]["difficulty"] == 0.2

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(splits, "_render_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_embedded_dataset(**kw, seed=1)
    assert json.loads((root / "manifest.json").read_text())["params"]["difficulty"] == 0.2  # old set intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedded"]


def test_split_rendered_in_two_parts_equals_the_whole(tmp_path):
    whole = synth.generate_split(tmp_path / "whole", 5, seed=3, num_workers=1, progress=False)
    tail = synth.generate_split(tmp_path / "tail", 2, seed=3, num_workers=1, progress=False, first_index=3)
    w, t = (json.loads(s.ann_file.read_text()) for s in (whole, tail))
    assert [i["id"] for i in t["images"]] == [4, 5] and t["images"] == w["images"][3:]
    strip = lambda anns: [{k: v for k, v in a.items() if k != "id"} for a in anns]  # noqa: E731
    assert strip(t["annotations"]) == strip([a for a in w["annotations"] if a["image_id"] > 3])
    assert all((tail.img_dir / i["file_name"]).read_bytes() == (whole.img_dir / i["file_name"]).read_bytes()
               for i in t["images"])


def test_extra_train_follows_the_train_split_and_is_cached(tmp_path, monkeypatch):
    extra = synth.ensure_extra_train("quick", images=2, root=tmp_path / "extra", num_workers=1, progress=False)
    imgs = json.loads(extra.ann_file.read_text())["images"]
    n_train = synth.sizes_for_mode("quick")["train"]
    assert [i["id"] for i in imgs] == [n_train + 1, n_train + 2]      # the images after the train split's
    ref = synth.generate_split(tmp_path / "ref", 1, seed=splits._SPLIT_OFFSET["train"], num_workers=1,
                               progress=False, first_index=n_train)
    assert (ref.img_dir / imgs[0]["file_name"]).read_bytes() == (extra.img_dir / imgs[0]["file_name"]).read_bytes()
    monkeypatch.setattr(splits, "generate_split", lambda *a, **k: pytest.fail("regenerated a cached split"))
    assert synth.ensure_extra_train("quick", images=2, root=tmp_path / "extra") == extra


def test_sizes_per_mode():
    assert synth.sizes_for_mode("quick") == {"train": 48, "val": 16}
    w = synth.sizes_for_mode("workshop")
    assert w["train"] * 3 > 11000 and w["val"] * 3 > 1500
    with pytest.raises(ValueError, match="real COCO"):
        synth.sizes_for_mode("full")


@pytest.mark.slow
def test_quick_mode_dataset(tmp_path):
    from pycocotools.coco import COCO

    ds = synth.ensure_embedded_dataset("quick", progress=False)
    assert ds.root.name == "embedded" and ds.root.parent.name == "data"
    train, val = COCO(str(ds.train.ann_file)), COCO(str(ds.val.ann_file))
    assert len(train.getImgIds()) == 48 and len(val.getImgIds()) == 16
    assert train.dataset["images"][0]["file_name"] == val.dataset["images"][0]["file_name"]
    assert (ds.train.img_dir / train.dataset["images"][0]["file_name"]).read_bytes() != \
        (ds.val.img_dir / val.dataset["images"][0]["file_name"]).read_bytes()  # different split seeds
    assert sum(a["num_keypoints"] > 0 for a in train.dataset["annotations"]) > 48


def test_cache_check_re_renders_truncated_empty_and_missing_images(tmp_path):
    """A reused set is checked: broken cached images come back byte-identical, with a warning naming them."""
    kw = dict(root=tmp_path / "embedded", sizes={"train": 4, "val": 2}, num_workers=1, progress=False)
    ds = synth.ensure_embedded_dataset(**kw)
    files = {p: p.read_bytes() for split in (ds.train, ds.val) for p in sorted(split.img_dir.iterdir())}
    train = sorted(ds.train.img_dir.iterdir())
    train[1].write_bytes(files[train[1]][: len(files[train[1]]) // 3])   # truncated
    train[3].write_bytes(b"")                                            # empty
    val = sorted(ds.val.img_dir.iterdir())
    val[0].unlink()                                                      # missing
    stamp = ds.train.ann_file.stat().st_mtime_ns
    with pytest.warns(RuntimeWarning) as record:
        assert synth.ensure_embedded_dataset(**kw) == ds
    text = " | ".join(str(w.message) for w in record)
    assert f"2 corrupt train image(s): {train[1]} (image id 2): JPEG truncated" in text
    assert f"{train[3]} (image id 4): the file is empty" in text
    assert f"1 corrupt val image(s): {val[0]} (image id 1): missing" in text
    assert {p: p.read_bytes() for p in files} == files
    assert ds.train.ann_file.stat().st_mtime_ns == stamp  # only the images were redone
    assert not [p for p in (tmp_path / "embedded" / "train").iterdir() if p.name.startswith(".")]

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert synth.ensure_embedded_dataset(**kw) == ds  # whole again: no warning
    ds.val.ann_file.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="person_keypoints.json is unreadable.*regenerating the whole set"):
        synth.ensure_embedded_dataset(**kw)
    assert json.loads(ds.val.ann_file.read_text())["images"]


UNGUARDED = """
import sys, time
from posekd_lib.data.synth import generate_split
print("top of script", flush=True)
t0 = time.perf_counter()
generate_split({out!r}, 4, seed=3, num_workers=2, progress=False)
print(f"generated in {{time.perf_counter() - t0:.1f}} s", flush=True)
"""


def test_unguarded_script_falls_back_to_one_process_fast(tmp_path):
    """Spawn workers re-run a script with no __main__ guard: it used to hang for minutes."""
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    script = tmp_path / "make_data.py"
    script.write_text(UNGUARDED.format(repo=repo, out=str(tmp_path / "out")))
    try:
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"an unguarded script still hangs: {e}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "generated in" in r.stdout
    assert "not starting worker processes" in r.stderr and "rendering in this process" in r.stderr
    assert "no `if __name__ == \"__main__\":` guard" in r.stderr
    assert r.stdout.count("top of script") == 1  # no worker re-ran the user's script
    ref = synth.generate_split(tmp_path / "ref", 4, seed=3, num_workers=1, progress=False)
    out = tmp_path / "out"
    assert (out / synth.ANN_FILE_NAME).read_bytes() == ref.ann_file.read_bytes()
    assert [p.read_bytes() for p in sorted((out / "images").iterdir())] == \
        [p.read_bytes() for p in sorted(ref.img_dir.iterdir())]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_workers_dying_at_start_up_fall_back_too(tmp_path):
    """The safety net when the script's guard cannot be read: workers re-running it exit at once
    (one line each), the executor breaks, and the parent renders the split itself."""
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    body = UNGUARDED.format(repo=repo, out=str(tmp_path / "out")).replace(
        "from posekd_lib.data.synth import generate_split",
        "from posekd_lib.data.synth import splits\nsplits._unguarded_main_call = lambda: False\nfrom posekd_lib.data.synth import generate_split")
    script = tmp_path / "make_data.py"
    script.write_text(body)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "generated in" in r.stdout and "stopped at start-up" in r.stderr and "Traceback" not in r.stderr
    assert len(list((tmp_path / "out" / "images").iterdir())) == 4


def test_guarded_script_still_uses_workers(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parent.parent)
    body = UNGUARDED.format(repo=repo, out=str(tmp_path / "out")).strip().splitlines()
    head = [ln for ln in body if ln.startswith(("import", "sys.path", "from"))]
    rest = [ln for ln in body if ln not in head]
    script = tmp_path / "make_data.py"
    script.write_text("\n".join(head + ['if __name__ == "__main__":'] + ["    " + ln for ln in rest]) + "\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "generated in" in r.stdout and "guard" not in r.stderr
    assert r.stdout.count("top of script") == 1  # workers import the script without running the guarded part
    assert len(list((tmp_path / "out" / "images").iterdir())) == 4


def test_main_guard_detection(tmp_path, monkeypatch):
    """Calls outside the guard (and in its else branch, which spawned workers run) count as unguarded."""
    import sys
    import types

    script = tmp_path / "s.py"
    script.write_text("call()\nif __name__ == '__main__':\n    call()\nelse:\n    call()\n"
                      "if '__main__' == __name__:\n    call()\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    seen = {}

    def call():
        seen[sys._getframe(1).f_lineno] = splits._unguarded_main_call()

    code = compile(script.read_text(), str(script), "exec")
    main.__dict__.update(call=call, __name__="__main__")
    exec(code, vars(main))
    assert seen == {1: True, 3: False, 7: False}
    seen.clear()
    main.__dict__["__name__"] = "__mp_main__"  # how a spawned worker runs the script
    exec(code, vars(main))
    assert seen == {1: True, 5: True}
    seen.clear()
    call()  # not from the main module's top-level code
    assert list(seen.values()) == [False]
