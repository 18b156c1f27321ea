"""FiftyOne helpers on the real COCO sample (a private database per test module: starting it costs seconds)."""
from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from posekd_lib.evaluation import inspect_fo
from posekd_lib.evaluation.coco import gt_as_results
from coco_helpers import cocoeval_evaluated

SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata" / "coco_sample"


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    inspect_fo.fo_env(tmp_path_factory.mktemp("fiftyone_db"))
    return pytest.importorskip("fiftyone")


@pytest.fixture(scope="module")
def sample_files():
    if not SAMPLE.exists():
        pytest.skip(f"reference data not available: {SAMPLE}")
    gt = json.loads((SAMPLE / "person_keypoints.json").read_text())
    return SAMPLE, gt


@pytest.fixture(scope="module")
def ds(fo, sample_files):
    root, _ = sample_files
    return inspect_fo.build_fo_dataset(root / "person_keypoints.json", root / "images", "coco-sample")




def test_build_dataset_matches_json_and_rebuilds_idempotently(fo, ds, sample_files, tmp_path):
    root, gt = sample_files
    anns = gt["annotations"]
    vis = np.array([a["keypoints"][2::3] for a in anns])
    assert len(ds) == len(gt["images"]) == 4
    assert ds.count("ground_truth.keypoints") == ds.count("gt_boxes.detections") == len(anns)
    got_vis = np.array(ds.values("ground_truth.keypoints.visibility", unwind=True))
    assert (got_vis == 2).sum() == (vis == 2).sum() and (got_vis == 1).sum() == (vis == 1).sum()
    pts = np.array(ds.values("ground_truth.keypoints.points", unwind=True), dtype=float)
    assert np.isnan(pts[..., 0]).sum() == (vis == 0).sum()
    assert np.nanmin(pts) >= 0 and np.nanmax(pts) <= 1
    assert sorted(ds.values("coco_id")) == sorted(i["id"] for i in gt["images"])
    assert sorted(ds.values("ground_truth.keypoints.coco_id", unwind=True)) == sorted(a["id"] for a in anns)
    assert len(ds.default_skeleton.edges) == 19 and ds.default_skeleton.labels[0] == "nose"
    assert ds.persistent and ds.info["source_ann_file"].endswith("person_keypoints.json")
    # first person: normalised points map back to the JSON's pixels
    s = ds.match({"coco_id": anns[0]["image_id"]}).first()
    k0 = np.reshape(anns[0]["keypoints"], (-1, 3))
    p0 = np.array(s.ground_truth.keypoints[0].points) * (s.metadata.width, s.metadata.height)
    np.testing.assert_allclose(p0[k0[:, 2] > 0], k0[k0[:, 2] > 0, :2], atol=1e-6)

    other = inspect_fo.build_fo_dataset(root / "person_keypoints.json", root / "images", "coco-sample-2")
    again = inspect_fo.build_fo_dataset(root / "person_keypoints.json", root / "images", "coco-sample")
    assert again._doc.id == ds._doc.id and len(again) == 4  # reused, no duplicate samples

    changed = tmp_path / "person_keypoints.json"
    changed.write_text(json.dumps({**gt, "annotations": anns[1:]}))
    with pytest.raises(ValueError, match="overwrite=True"):
        inspect_fo.build_fo_dataset(changed, root / "images", "coco-sample-2")
    rebuilt = inspect_fo.build_fo_dataset(changed, root / "images", "coco-sample-2", overwrite=True)
    assert len(rebuilt) == 4 and rebuilt.count("ground_truth.keypoints") == len(anns) - 1
    assert fo.dataset_exists("coco-sample") and len(fo.load_dataset("coco-sample")) == 4
    assert other.deleted and not ds.deleted


def test_add_predictions_oks_agrees_with_cocoeval_and_views(ds, sample_files):
    root, gt = sample_files
    gt_file = root / "person_keypoints.json"
    results = json.loads((root / "person_keypoints_results_hrnet.json").read_text())
    counts = inspect_fo.add_predictions(ds, results, "hrnet", gt_file)
    assert counts["predictions"] == len(results) and counts["matched"] == 12

    ev = cocoeval_evaluated(gt_file, results)
    pairs = 0
    for s in ds:
        gt_ids = [g["id"] for g in ev._gts[s.coco_id, 1]]
        dts = ev._dts[s.coco_id, 1]
        det_ids = [dts[i]["id"] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")]
        for kp in s.hrnet.keypoints:
            assert len(kp.confidence) == 17
            if kp.gt_id is not None and det_ids.index(kp.result_index + 1) < 20:
                want = ev.ious[s.coco_id, 1][det_ids.index(kp.result_index + 1), gt_ids.index(kp.gt_id)]
                assert kp.oks == pytest.approx(want, rel=1e-12)
                pairs += 1
        scored = {a["id"] for a in gt["annotations"] if a["image_id"] == s.coco_id and a["num_keypoints"] > 0}
        matched = [kp.oks for kp in s.hrnet.keypoints if kp.gt_id in scored]
        assert len(matched) == len(scored)  # HRNet finds every scored person of the sample
        assert s.hrnet_oks == pytest.approx(sum(matched) / len(scored))
    assert pairs >= 12

    shifted = [{**r, "keypoints": (np.asarray(r["keypoints"]) + [0.5, 0, 0] * 17).tolist()} for r in gt_as_results(gt_file)]
    inspect_fo.add_predictions(ds, shifted, "gt_shifted", gt_file)
    oks_h = dict(zip(ds.values("coco_id"), ds.values("hrnet_oks")))
    worst = inspect_fo.worst_samples(ds, "hrnet", 2).values("coco_id")
    assert worst == sorted(oks_h, key=oks_h.get)[:2]
    view = inspect_fo.a_beats_b(ds, "gt_shifted", "hrnet", margin=0.0)
    gaps = np.subtract(view.values("gt_shifted_oks"), view.values("hrnet_oks"))
    assert len(view) == 4 and np.all(np.diff(gaps) <= 0) and gaps.min() > 0
    assert len(inspect_fo.a_beats_b(ds, "gt_shifted", "hrnet", margin=gaps[1])) == 1
    assert len(inspect_fo.a_beats_b(ds, "hrnet", "gt_shifted")) == 0

    for k in (1, 4):
        want = sum(np.sum(np.array(a["keypoints"][2::3]) == 1) >= k for a in gt["annotations"])
        view = inspect_fo.occluded_persons(ds, min_occluded=k)
        assert view.count("ground_truth.keypoints") == want > 0
        assert all(np.sum(np.array(v) == 1) >= k for v in view.values("ground_truth.keypoints.visibility", unwind=True))


def test_launch_app_stays_off_when_not_interactive(monkeypatch, capsys):
    class Named:
        name = "coco-sample"

    assert inspect_fo.launch_app(Named()) is None  # POSEKD_MODE=quick under pytest
    assert "make app DATASET=coco-sample PORT=5151" in capsys.readouterr().out
    monkeypatch.setenv("POSEKD_MODE", "workshop")
    monkeypatch.setenv("CI", "1")
    assert inspect_fo.launch_app(Named()) is None
    assert "CI is set" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_app_serves_dataset_on_localhost(ds):
    port = _free_port()
    session = inspect_fo.launch_app(ds, port=port, remote=True, force=True)
    try:
        assert session.server_address == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        query = {"query": '{ dataset(name: "coco-sample") { name estimatedSampleCount } }'}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps(query).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            data = json.loads(r.read())["data"]["dataset"]
        assert data == {"name": "coco-sample", "estimatedSampleCount": 4}
    finally:
        session.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)


def test_build_dataset_from_the_embedded_set(fo, tmp_path):
    """The generated set goes through the same importer: samples, persons and visible points equal the JSON's."""
    from posekd_lib.data.synth import ensure_embedded_dataset

    split = ensure_embedded_dataset("quick", root=tmp_path / "embedded", sizes={"train": 1, "val": 6},
                                    num_workers=1, progress=False).val
    gt = json.loads(split.ann_file.read_text())
    vis = np.concatenate([np.array(a["keypoints"][2::3]) for a in gt["annotations"]])
    ds = inspect_fo.build_fo_dataset(split.ann_file, split.img_dir, "embedded-quick-val")
    got_vis = np.array(ds.values("ground_truth.keypoints.visibility", unwind=True)).ravel()
    assert len(ds) == len(gt["images"]) == 6
    assert ds.count("ground_truth.keypoints") == len(gt["annotations"]) > 6
    assert (got_vis == 2).sum() == (vis == 2).sum() > 0 and (got_vis == 1).sum() == (vis == 1).sum() > 0
    assert len(inspect_fo.build_fo_dataset(split.ann_file, split.img_dir, "embedded-quick-val")) == 6


def _tiny_split(root, n=2):
    from posekd_lib.data.synth import generate_split

    return generate_split(root, n, seed=11, num_workers=1, progress=False)


def test_bad_annotation_files_name_the_file(tmp_path):
    """Invalid JSON used to give a bare JSONDecodeError, a top-level list an AttributeError."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        inspect_fo.build_fo_dataset(bad, img_dir, "never-built")
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"broken\.json: expected a COCO JSON object, got list"):
        inspect_fo.build_fo_dataset(bad, img_dir, "never-built")
    bad.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}')
    with pytest.raises(ValueError, match=r"broken\.json: no category with 'keypoints'"):
        inspect_fo.build_fo_dataset(bad, img_dir, "never-built")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        inspect_fo.build_fo_dataset(tmp_path / "nothing.json", img_dir, "never-built")


def test_build_refuses_a_truncated_image_naming_file_and_sample(fo, tmp_path):
    split = _tiny_split(tmp_path / "val", 3)
    images = json.loads(split.ann_file.read_text())["images"]
    path = split.img_dir / images[2]["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ValueError, match=rf"{path.name} \(sample 2, image id 3\): JPEG truncated"):
        inspect_fo.build_fo_dataset(split.ann_file, split.img_dir, "truncated-val")
    assert not fo.dataset_exists("truncated-val")
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{path.name} \(sample 2, image id 3\): the file is empty"):
        inspect_fo.build_fo_dataset(split.ann_file, split.img_dir, "truncated-val")


def test_app_hint_command_finds_the_dataset_from_a_fresh_shell(fo, tmp_path, capsys):
    """Quick mode keeps its datasets in a private database: a bare `fiftyone app launch NAME` in a
    new shell looks in ~/.fiftyone and finds nothing. The printed command must name the database
    and the venv's CLI; run as `datasets list` from a clean environment, it lists the dataset."""
    import os
    import shlex
    import subprocess

    split = _tiny_split(tmp_path / "val")
    ds = inspect_fo.build_fo_dataset(split.ann_file, split.img_dir, "app-hint-val")
    assert inspect_fo.launch_app(ds, port=5152) is None
    hint = next(ln.strip() for ln in capsys.readouterr().out.splitlines() if "make app" in ln)
    assert hint == inspect_fo.app_hint("app-hint-val", 5152)
    assert hint.endswith("make app DATASET=app-hint-val PORT=5152")
    assert f"FIFTYONE_DATABASE_DIR={fo.config.database_dir}" in hint   # a private database outside the checkout
    line = inspect_fo.app_command("app-hint-val", 5152)                # what `make app` runs, spelled out
    words = shlex.split(line)
    env_words = [w for w in words if "=" in w and w.split("=")[0].startswith("FIFTYONE_")]
    cmd = words[len(env_words):]
    assert cmd[1:] == ["app", "launch", "app-hint-val", "--address", "127.0.0.1", "--port", "5152"]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIFTYONE_", "POSEKD_", "VIRTUAL_ENV"))}
    env.update(dict(w.split("=", 1) for w in env_words), HOME=str(tmp_path / "home"),
               PATH="/usr/bin:/bin", FIFTYONE_DO_NOT_TRACK="true")
    out = subprocess.run([cmd[0], "datasets", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "app-hint-val" in out.stdout.split()
    assert dict(w.split("=", 1) for w in env_words)["FIFTYONE_DATABASE_DIR"] == str(fo.config.database_dir)
    assert Path(cmd[0]).is_file()  # the venv's own CLI, not whatever a new shell has on PATH


def test_make_app_runs_the_venvs_fiftyone(tmp_path):
    """The notebooks' hint is `make app DATASET=... PORT=...`: the Makefile's target launches the venv's
    own `fiftyone` on that dataset, on 127.0.0.1 (dry run); without a dataset it says what is missing."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    venv = Path(sys.executable).parent.parent
    if not (venv / ".posekd-installed-2").is_file():
        pytest.skip("not running in the Makefile's venv")
    dry = subprocess.run(["make", "-n", "-s", "app", "DATASET=some-val", "PORT=5153", f"VENV={venv}"], cwd=repo,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1] == \
        f"{venv}/bin/fiftyone app launch some-val --address 127.0.0.1 --port 5153"
    missing = subprocess.run(["make", "-s", "app", f"VENV={venv}"], cwd=repo, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0 and "name the dataset" in missing.stdout


def test_add_predictions_takes_images_where_nobody_was_found(ds, sample_files):
    """A bottom-up model can find nobody in an image: that image gets an empty field and OKS 0."""
    root, gt = sample_files
    gt_file = root / "person_keypoints.json"
    results = json.loads((root / "person_keypoints_results_hrnet.json").read_text())
    first = ds.first().coco_id
    some = [r for r in results if r["image_id"] != first]
    counts = inspect_fo.add_predictions(ds, some, "partial", gt_file)
    assert counts["predictions"] == len(some)
    s = ds[ds.first().filepath]
    assert s.partial.keypoints == [] and s.partial_oks == 0


def test_every_keypoints_field_gets_its_own_fixed_colour(ds, sample_files):
    """Ground truth and the models are drawn in the library's colours, the same in every notebook
    (the ground truth and the teacher always in theirs), and no two fields of a dataset share one."""
    root, _ = sample_files
    gt_file = root / "person_keypoints.json"
    results = json.loads((root / "person_keypoints_results_hrnet.json").read_text())
    for field in ("teacher", "ai8x_tiny_float", "ai8x_tiny_int8"):
        inspect_fo.add_predictions(ds, results, field, gt_file)
    scheme = {f["path"]: f["fieldColor"] for f in ds.app_config.color_scheme.fields}
    assert scheme["ground_truth"] == inspect_fo.FIELD_COLORS["ground_truth"]
    assert scheme["teacher"] == inspect_fo.FIELD_COLORS["teacher"]
    assert {"ai8x_tiny_float", "ai8x_tiny_int8"} <= set(scheme)
    assert len(set(scheme.values())) == len(scheme)
