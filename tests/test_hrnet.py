"""hrnet_pose: official state-dict layout, golden outputs, configs and strict checkpoint loading."""
from __future__ import annotations

import json

import pytest
import torch

from hrnet_pose.checkpoint import (
    CheckpointMismatchError, load_pose_checkpoint, save_fp16_state_dict, state_dict_manifest,
)
from hrnet_pose.configs import CONFIG_DIR, available_configs, load_configs
from hrnet_pose.hrnetpose_model import count_parameters, get_pose_net

from conftest import assert_float32_close

PAPER_CONFIGS = ["w32_256x192", "w32_384x288", "w48_256x192", "w48_384x288"]


def build(name: str, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    with torch.device(device):
        return get_pose_net(load_configs(name), is_train=False).eval()


def randomize_bn(model: torch.nn.Module, seed: int = 3) -> None:
    """Non-trivial BN statistics, so a loader that drops buffers would be caught."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def tiny():
    model = build("tiny_golden")
    randomize_bn(model)
    return model


# ------------------------------------------------------------------ golden (official code)

def test_tiny_golden_yaml_matches_golden_config(golden):
    ref = json.loads((golden / "hrnet" / "hrnet_tiny_config.json").read_text())
    cfg = load_configs("tiny_golden")
    for stage in ("STAGE2", "STAGE3", "STAGE4"):
        assert cfg.MODEL.EXTRA[stage].to_dict() == ref["EXTRA"][stage]
    assert cfg.MODEL.EXTRA.FINAL_CONV_KERNEL == ref["EXTRA"]["FINAL_CONV_KERNEL"]
    assert cfg.MODEL.IMAGE_SIZE == ref["IMAGE_SIZE_WH"]
    assert cfg.MODEL.HEATMAP_SIZE == ref["HEATMAP_SIZE_WH"]
    assert cfg.MODEL.NUM_JOINTS == ref["NUM_JOINTS"]


def test_tiny_golden_reproduces_official_output(golden):
    state = torch.load(golden / "hrnet" / "hrnet_tiny_state_dict.pt", weights_only=True)
    io = torch.load(golden / "hrnet" / "hrnet_tiny_io.pt", weights_only=True)
    model = build("tiny_golden", seed=123)
    assert list(model.state_dict()) == list(state)
    load_pose_checkpoint(model, state, strict=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = model(io["input"])
    finally:
        torch.set_num_threads(threads)
    # float32, not bit-exact: the golden was made on another CPU, whose oneDNN kernels sum each
    # conv in another order. Longest sum: transition1's 3x3 conv over 256 channels, n = 2304;
    # outputs reach 110, so atol = 2*2304*2**-24*110 = 3.0e-2 (~3e-4 relative; seen: 5e-5).
    assert_float32_close(out, io["output"], model, what="tiny HRNet output")


@pytest.mark.parametrize("name,golden_file,params", [
    ("w32_256x192", "hrnet_w32_256x192_keys.json", 28_536_113),
    ("w48_384x288", "hrnet_w48_384x288_keys.json", 63_595_745),
])
def test_full_model_manifest_matches_official(golden, name, golden_file, params):
    model = build(name, device="meta")
    reference = json.loads((golden / "hrnet" / golden_file).read_text())
    assert len(reference) == 1754
    assert state_dict_manifest(model) == reference
    assert count_parameters(model) == params


def test_same_width_configs_share_the_official_layout():
    for a, b in (("w32_256x192", "w32_384x288"), ("w48_256x192", "w48_384x288"), ("w16_128x96", "w16_160x128"),
                 ("w16_128x96", "w16_224x160"), ("w16_128x96", "w16demo_256x192")):
        assert state_dict_manifest(build(a, "meta")) == state_dict_manifest(build(b, "meta"))


# ------------------------------------------------------------------ configs

@pytest.mark.parametrize("name", available_configs())
def test_every_config_builds_and_gives_configured_heatmaps(name):
    cfg = load_configs(name)
    model = build(name, device="meta")
    w, h = cfg.MODEL.IMAGE_SIZE
    with torch.no_grad():
        out = model(torch.empty(2, 3, h, w, device="meta"))
    hw, hh = cfg.MODEL.HEATMAP_SIZE
    assert tuple(out.shape) == (2, cfg.MODEL.NUM_JOINTS, hh, hw)
    assert model.image_size == (w, h)            # what a distiller feeds it (recipes.kd_recipe)
    assert {"FLIP_TEST", "SHIFT_HEATMAP", "POST_PROCESS"} <= set(cfg.TEST)


def test_config_set_covers_paper_and_demo_rows():
    assert set(PAPER_CONFIGS + ["w16_256x192", "w8_128x96", "tiny_golden"]) <= set(available_configs())


def test_small_demo_teacher_runs_on_cpu():
    cfg = load_configs("w8_128x96")
    model = build("w8_128x96")
    w, h = cfg.MODEL.IMAGE_SIZE
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, 17, h // 4, w // 4)
    assert torch.isfinite(out).all()
    assert count_parameters(model) * 2 < 15e6  # fp16 bytes


def test_load_configs_by_name_path_and_official_file_name():
    by_name = load_configs("w48_384x288")
    assert by_name.MODEL.EXTRA.STAGE2.NUM_CHANNELS == [48, 96]
    assert by_name["MODEL"]["IMAGE_SIZE"] == [288, 384]
    assert by_name.MODEL.SIGMA == 3
    assert by_name.TEST.FLIP_TEST and by_name.TEST.SHIFT_HEATMAP and by_name.TEST.POST_PROCESS
    assert load_configs(CONFIG_DIR / "w48_384x288.yaml") == by_name
    assert load_configs(str(CONFIG_DIR / "w48_384x288.yaml")) == by_name
    assert load_configs("w48_384x288_adam_lr1e-3") == by_name


def test_load_configs_from_short_user_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("MODEL:\n  NUM_JOINTS: 13\n  EXTRA:\n"
                    + "".join(f"    STAGE{n}: {{NUM_MODULES: 1, NUM_BRANCHES: {n}, BLOCK: BASIC, "
                              f"NUM_BLOCKS: {[1] * n}, NUM_CHANNELS: {[4 * 2 ** i for i in range(n)]}}}\n"
                              for n in (2, 3, 4)))
    cfg = load_configs(path)
    assert cfg.MODEL.NUM_JOINTS == 13 and cfg.MODEL.NAME == "pose_hrnet"  # default filled in
    out = get_pose_net(cfg)(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 13, 16, 8)


def test_load_configs_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="w64_999x1.*known configs: .*w32_256x192"):
        load_configs("w64_999x1")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_configs(tmp_path / "nope.yaml")
    with pytest.raises(AttributeError, match="NUM_JOINT"):
        load_configs("w8_128x96").MODEL.NUM_JOINT


def test_bad_sizes_are_rejected_with_the_key_name():
    cfg = load_configs("w8_128x96")
    cfg.MODEL.IMAGE_SIZE = [100, 128]
    with pytest.raises(ValueError, match="MODEL.IMAGE_SIZE"):
        get_pose_net(cfg)
    cfg = load_configs("w8_128x96")
    cfg.MODEL.HEATMAP_SIZE = [48, 64]
    with pytest.raises(ValueError, match="MODEL.HEATMAP_SIZE"):
        get_pose_net(cfg)
    cfg = load_configs("w8_128x96")
    del cfg.MODEL.EXTRA.STAGE3.NUM_CHANNELS
    with pytest.raises(KeyError, match="STAGE3.NUM_CHANNELS"):
        get_pose_net(cfg)


# ------------------------------------------------------------------ model behaviour

def test_is_train_applies_official_init():
    torch.manual_seed(0)
    model = get_pose_net(load_configs("w8_128x96"), is_train=True)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.001) < 1e-4
    assert torch.count_nonzero(model.final_layer.bias) == 0
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    default = get_pose_net(load_configs("w8_128x96"), is_train=False)
    assert default.conv1.weight.std() > 0.05  # PyTorch default init, not the training init


def test_imagenet_pretrained_path_is_never_read():
    cfg = load_configs("w8_128x96")
    cfg.MODEL.PRETRAINED = "models/pytorch/imagenet/hrnet_w32-36af842e.pth"
    with pytest.warns(UserWarning, match="MODEL.PRETRAINED.*ignored"), torch.device("meta"):
        get_pose_net(cfg, is_train=True)


def test_named_stages_expose_features_to_hooks(tiny):
    seen = {}
    handles = [getattr(tiny, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
               for n in ("stage2", "stage3", "stage4", "final_layer")]
    x = torch.randn(1, 3, 64, 64)
    try:
        with torch.no_grad():
            out = tiny(x)
            feats = tiny.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    assert [t.shape[1:] for t in seen["stage3"]] == [(8, 16, 16), (16, 8, 8), (32, 4, 4)]
    assert len(seen["stage4"]) == 1 and seen["stage4"][0].shape[1:] == (8, 16, 16)
    torch.testing.assert_close(seen["final_layer"], out)
    torch.testing.assert_close(feats["heatmaps"], out)
    torch.testing.assert_close(feats["stage2"][1], seen["stage2"][1])
    assert feats["layer1"].shape[1:] == (256, 16, 16)


def test_forward_rejects_sizes_that_break_fusion(tiny):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny(torch.randn(1, 3, 48, 64))


# ------------------------------------------------------------------ checkpoints

def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("wrap", ["plain", "module_prefix", "state_dict", "model_and_prefix"])
def test_wrapped_and_prefixed_checkpoints_load(tiny, tmp_path, wrap):
    state = tiny.state_dict()
    if wrap in ("module_prefix", "model_and_prefix"):
        state = {f"module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 3} if wrap == "state_dict" else state
    if wrap == "model_and_prefix":
        obj = {"model": state, "optimizer": {}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    fresh = build("tiny_golden", seed=99)
    load_pose_checkpoint(fresh, path)
    _assert_same_state(fresh, tiny)


def test_mismatched_checkpoint_lists_missing_unexpected_and_wrong_shapes(tiny, tmp_path):
    state = dict(tiny.state_dict())
    del state["stage4.2.fuse_layers.0.3.0.weight"]
    state["head.extra.weight"] = torch.zeros(1)
    state["final_layer.weight"] = torch.zeros(13, 8, 1, 1)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_pose_checkpoint(build("tiny_golden"), path)
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing: stage4.2.fuse_layers.0.3.0.weight" in msg
    assert "1 unexpected: head.extra.weight" in msg
    assert "1 wrong shape: final_layer.weight: (13, 8, 1, 1) vs model (17, 8, 1, 1)" in msg


def test_a_checkpoint_without_batchnorm_counters_loads_and_only_those_may_be_missing(tiny, tmp_path):
    """Checkpoints older than PyTorch 0.4.1 have no num_batches_tracked; PyTorch accepts them, so do we."""
    state = {k: v for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(tiny.state_dict())
    torch.save(state, tmp_path / "old.pth")
    fresh = build("tiny_golden", seed=99)
    load_pose_checkpoint(fresh, tmp_path / "old.pth")
    for k, v in tiny.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(fresh.state_dict()[k], v), k
    del state["conv1.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing: conv1.weight\n") as err:
        load_pose_checkpoint(build("tiny_golden"), state)
    assert "num_batches_tracked" not in str(err.value)


def test_checkpoint_of_another_width_is_refused_with_counts(tiny):
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape: .*\(\d+ more\)"):
        load_pose_checkpoint(build("w32_256x192", device="meta"), tiny.state_dict())


def test_non_strict_load_skips_only_mismatched_entries(tiny):
    state = dict(tiny.state_dict())
    state["final_layer.weight"] = torch.zeros(13, 8, 1, 1)
    fresh = build("tiny_golden", seed=5)
    before = fresh.final_layer.weight.clone()
    load_pose_checkpoint(fresh, state, strict=False)
    torch.testing.assert_close(fresh.final_layer.weight, before)
    torch.testing.assert_close(fresh.conv1.weight, tiny.conv1.weight)


def test_missing_checkpoint_says_where_to_put_the_official_file(tmp_path):
    path = tmp_path / "pose_hrnet_w48_384x288.pth"
    with pytest.raises(FileNotFoundError, match="pose_hrnet_w48_384x288.pth.*model zoo") as err:
        load_pose_checkpoint(build("tiny_golden"), path)
    assert str(path) in str(err.value)


def test_fp16_round_trip(tiny, tmp_path):
    path = save_fp16_state_dict(tiny, tmp_path / "teacher" / "tiny_fp16.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["conv1.weight"].dtype == torch.float16
    assert raw["bn1.num_batches_tracked"].dtype == torch.int64
    fp32_bytes = sum(v.numel() * v.element_size() for v in tiny.state_dict().values())
    assert path.stat().st_size < 0.6 * fp32_bytes
    fresh = build("tiny_golden", seed=7)
    load_pose_checkpoint(fresh, path)
    assert fresh.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(fresh.conv1.weight, tiny.conv1.weight.half().float(), atol=0, rtol=0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, out = tiny(x), fresh(x)
    assert (out - ref).abs().max() < 1e-2 * ref.abs().max()


def test_manifest_is_ordered_key_shape_pairs(tiny):
    manifest = state_dict_manifest(tiny)
    assert manifest[0] == ["conv1.weight", [64, 3, 3, 3]]
    assert manifest[-2:] == [["final_layer.weight", [17, 8, 1, 1]], ["final_layer.bias", [17]]]
    assert [k for k, _ in manifest] == list(tiny.state_dict())
