"""load_teacher: the demo teacher from a file named by the env var, its card, and the errors for missing files."""
from __future__ import annotations

import json

import pytest
import torch

from hrnet_pose.configs import load_configs
from hrnet_pose.hrnetpose_model import get_pose_net
from posekd_lib.models import teachers
from posekd_lib.config import run_paths
from posekd_lib.models.teachers import load_teacher


@pytest.fixture(scope="module")
def w8_state():
    torch.manual_seed(0)
    return get_pose_net(load_configs("w8_128x96"), is_train=True).state_dict()


def test_demo_teacher_from_env_checkpoint(tmp_path, monkeypatch, w8_state):
    path = tmp_path / "teacher.pt"
    torch.save({"model": w8_state, "step": 3}, path)  # a fit checkpoint, as exported during training
    path.with_suffix(".json").write_text(json.dumps({"name": "demo_w8_128x96", "config": "w8_128x96",
                                                     "val_metrics_flip_gt_boxes": {"AP": 0.4321}}))
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(path))
    model, info = load_teacher("demo")
    assert not model.training
    assert info.weights == path and info.config == "w8_128x96" and info.val_ap == pytest.approx(0.4321)
    demo = load_configs("w8_128x96").MODEL
    assert info.input_size == (96, 128) and info.heatmap_size == (24, 32) and info.sigma == demo.SIGMA
    assert info.params == sum(v.numel() for k, v in w8_state.items() if "running" not in k and "num_batches" not in k)
    ref = get_pose_net(load_configs("w8_128x96"))
    ref.load_state_dict(w8_state)
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x))


def test_default_name_follows_mode(tmp_path, monkeypatch):
    torch.save(get_pose_net(load_configs(teachers.DEMO_CONFIG)).state_dict(), tmp_path / "plain.pt")  # no card
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(tmp_path / "plain.pt"))
    _, info = load_teacher(mode="workshop")
    assert info.config == teachers.DEMO_CONFIG and info.val_ap is None
    assert teachers.default_teacher_name("full") == "w48_384x288"


def test_missing_demo_weights_say_what_to_do(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pt"
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(missing))
    with pytest.raises(FileNotFoundError) as e:
        load_teacher("demo")
    msg = str(e.value)
    assert str(missing) in msg and "configs/teacher_w16.yaml" in msg and teachers.WEIGHTS_ENV in msg


def test_full_mode_error_names_the_official_checkpoint(monkeypatch):
    monkeypatch.delenv(teachers.W48_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        load_teacher(mode="full")
    msg = str(e.value)
    expected = run_paths("full").checkpoints / "pose_hrnet_w48_384x288.pth"
    assert str(expected) in msg and teachers.W48_ENV in msg and "deep-high-resolution-net" in msg
    monkeypatch.setenv(teachers.W48_ENV, "/somewhere/else/w48.pth")
    with pytest.raises(FileNotFoundError, match=f"/somewhere/else/w48.pth, which {teachers.W48_ENV} names") as e:
        load_teacher(mode="full")
    assert "Put it at" not in str(e.value)     # the variable overrides the default place: no advice to use it


def test_wrong_architecture_is_rejected(tmp_path, monkeypatch):
    from hrnet_pose.checkpoint import CheckpointMismatchError

    other = "w8_128x96" if teachers.DEMO_CONFIG != "w8_128x96" else "w16_128x96"
    torch.save(get_pose_net(load_configs(other)).state_dict(), tmp_path / "other.pt")  # no card: read as the demo config
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointMismatchError, match="other.pt"):
        load_teacher("demo")


def test_a_shipped_teacher_of_the_demo_line_loads_by_its_file_name(tmp_path, monkeypatch, w8_state):
    """``load_teacher("demo_<...>")`` reads hrnet_pose/weights/<name>.pt and its card's config and name;
    a config run names it in ``distill.teacher``. Other names keep their meaning."""
    torch.save(w8_state, tmp_path / "demo_w8_test.pt")
    (tmp_path / "demo_w8_test.json").write_text(json.dumps({"name": "demo_w8_test", "config": "w8_128x96",
                                                            "val_metrics_flip_gt_boxes": {"AP": 0.5}}))
    monkeypatch.setattr(teachers, "SHIPPED_DIR", tmp_path)
    assert teachers.shipped_teacher("demo_w8_test") and not teachers.shipped_teacher("demo_missing")
    assert not teachers.shipped_teacher("w48_384x288")
    _, info = load_teacher("demo_w8_test")
    assert (info.name, info.config, info.weights, info.val_ap) == ("demo_w8_test", "w8_128x96",
                                                                    tmp_path / "demo_w8_test.pt", 0.5)
    with pytest.raises(FileNotFoundError):        # not shipped: read as an official config's checkpoint
        load_teacher("demo_missing", mode="quick")
