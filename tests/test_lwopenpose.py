"""posekd_lib.models.lwopenpose: official key names, golden outputs of every stage, strict loading, preprocessing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hrnet_pose.checkpoint import CheckpointMismatchError
from posekd_lib.data.keypoints import NUM_OPENPOSE_HEATMAPS, NUM_OPENPOSE_PAFS
from posekd_lib.models.lwopenpose import (CHECKPOINT_NAME, PoseEstimationWithMobileNet, load_lwopenpose_checkpoint,
                                   normalize, pad_to_stride, preprocess)

from conftest import assert_float32_close, shared_path

GOLDEN_DIFF = 1e-5     # what the issue asks for; the float32 bound of conftest is checked as well


@pytest.fixture(scope="module")
def golden_state():
    return torch.load(shared_path("golden", "lwopenpose", "lwopenpose_state_dict.pt"), weights_only=True)


@pytest.fixture(scope="module")
def golden_io():
    return torch.load(shared_path("golden", "lwopenpose", "lwopenpose_io.pt"), weights_only=True)


@pytest.fixture(scope="module")
def model_cpu(golden_state):
    return load_lwopenpose_checkpoint(golden_state)


# --------------------------------------------------------------------------- architecture and golden data
def test_state_dict_keys_and_shapes_are_the_official_ones(golden_state):
    model = PoseEstimationWithMobileNet()
    ours = model.state_dict()
    assert list(ours) == list(golden_state)                      # same names, same order
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in golden_state.values()]
    assert len(ours) == 250 and sum(k.endswith("num_batches_tracked") for k in ours) == 33
    assert sum(p.numel() for p in model.parameters()) == 4_091_698
    groups = {g: sum(v.numel() for k, v in golden_state.items() if k.startswith(g + ".")
                     and not k.endswith("num_batches_tracked") and "running_" not in k)
              for g in ("model", "cpm", "initial_stage", "refinement_stages")}
    assert groups == {"model": 1_613_120, "cpm": 265_856, "initial_stage": 604_089,
                      "refinement_stages": 1_608_633}


def test_refinement_stage_count_changes_only_the_stage_list():
    keys3 = PoseEstimationWithMobileNet(num_refinement_stages=3).state_dict().keys()
    keys1 = set(PoseEstimationWithMobileNet().state_dict())
    extra = {k for k in keys3 if k not in keys1}
    assert extra and all(k.startswith(("refinement_stages.1.", "refinement_stages.2.")) for k in extra)
    assert keys1 <= set(keys3)


def test_conv_macs_at_368_match_the_published_count():
    """8.88 G conv multiply-accumulates at 368x368 (strides and widths; counted on the meta device)."""
    with torch.device("meta"):
        model = PoseEstimationWithMobileNet()
    macs = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, _, out: macs.append(
                out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]))
    model(torch.zeros(1, 3, 368, 368, device="meta"))
    assert round(sum(macs) / 1e9, 2) == 8.88


def test_golden_outputs_of_every_stage(model_cpu, golden_io):
    with torch.no_grad():
        outputs = model_cpu(golden_io["input"])
    assert len(outputs) == len(golden_io["outputs"]) == 4
    for out, ref, name in zip(outputs, golden_io["outputs"], golden_io["output_names"]):
        assert out.shape == ref.shape
        diff = assert_float32_close(out, ref, model_cpu, what=name)
        assert diff <= GOLDEN_DIFF, f"{name}: max abs diff {diff:.3g} > {GOLDEN_DIFF}"
    assert outputs[0].shape[1] == NUM_OPENPOSE_HEATMAPS and outputs[1].shape[1] == NUM_OPENPOSE_PAFS


def test_a_wrong_weight_is_caught_by_the_golden_comparison(golden_state, golden_io):
    """The comparison above can fail: one BN statistic of the refinement stage moved a little."""
    state = dict(golden_state)
    key = "refinement_stages.0.trunk.2.trunk.1.1.running_mean"
    state[key] = state[key] + 0.05
    with torch.no_grad():
        out = load_lwopenpose_checkpoint(state)(golden_io["input"])
    assert (out[2] - golden_io["outputs"][2]).abs().max() > 100 * GOLDEN_DIFF
    torch.testing.assert_close(out[0], golden_io["outputs"][0], rtol=0, atol=GOLDEN_DIFF)  # stage 1 untouched


def test_preprocess_reproduces_the_golden_input(golden_io):
    img = golden_io["input_bgr_uint8_hwc"].numpy()
    x, scale, pad = preprocess(img)                          # 368 high: no resize, no padding
    assert scale == 1.0 and pad == (0, 0, 0, 0)
    assert x.dtype == torch.float32 and torch.equal(x, golden_io["input"])
    x_rgb, _, _ = preprocess(np.ascontiguousarray(img[..., ::-1]), channel_order="rgb")
    assert torch.equal(x_rgb, golden_io["input"])


# --------------------------------------------------------------------------- checkpoint loading
def test_official_wrapping_and_bare_state_dict_load_strictly(golden_state, tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"state_dict": golden_state, "optimizer": {}, "scheduler": {}, "iter": 370000}, path)
    for source in (path, str(path), golden_state, {"state_dict": golden_state},
                   {f"module.{k}": v for k, v in golden_state.items()}):
        model = load_lwopenpose_checkpoint(source)
        assert not model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, golden_state[k]), k


def test_strict_load_failure_names_the_file_and_the_keys(golden_state, tmp_path):
    state = dict(golden_state)
    del state["cpm.trunk.1.2.weight"]
    state["cpm.extra.weight"] = torch.zeros(1)
    state["initial_stage.pafs.1.0.bias"] = torch.zeros(34)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_lwopenpose_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "1 missing: cpm.trunk.1.2.weight" in msg
    assert "1 unexpected: cpm.extra.weight" in msg
    assert "1 wrong shape: initial_stage.pafs.1.0.bias: (34,) vs model (38,)" in msg
    assert "refinement stage" not in msg                     # the stage count is right


def test_the_released_three_stage_layout_loads_with_defaults_as_upstreams_demo_runs_it(tmp_path):
    """The released file holds three refinement stages; upstream's demo builds one and loads
    non-strictly, so the defaults give the initial + first refinement stage, saying what is unused."""
    torch.manual_seed(0)
    three = PoseEstimationWithMobileNet(num_refinement_stages=3).eval()
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"state_dict": three.state_dict(), "optimizer": {}, "iter": 370000}, path)
    with pytest.warns(UserWarning, match=r"holds 3 refinement stages; the model uses the first 1 .*\[1, 2\]"):
        model = load_lwopenpose_checkpoint(path)
    one = PoseEstimationWithMobileNet(num_refinement_stages=1).eval()
    one.load_state_dict({k: v for k, v in three.state_dict().items() if k in one.state_dict()})
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        ours, theirs, all_stages = model(x), one(x), three(x)
    assert len(ours) == 4 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert all(torch.equal(a, b) for a, b in zip(ours, all_stages[:4]))      # the first refinement stage's maps
    model3 = load_lwopenpose_checkpoint(path, num_refinement_stages=3)      # all three, when asked
    with torch.no_grad():
        assert len(model3(x)) == 8
    with pytest.raises(CheckpointMismatchError, match=r"The checkpoint has 1 refinement stage\(s\)"):
        load_lwopenpose_checkpoint(one.state_dict(), num_refinement_stages=3)   # fewer than asked: an error
    broken = {**three.state_dict(), "cpm.extra.weight": torch.zeros(1)}     # another unexpected key: strict
    with pytest.raises(CheckpointMismatchError, match=r"177 unexpected: refinement_stages\.1\."):
        load_lwopenpose_checkpoint(broken)


def test_checkpoints_without_batchnorm_counters_load_and_nothing_else_is_forgiven(golden_state):
    no_counters = {k: v for k, v in golden_state.items() if not k.endswith("num_batches_tracked")}
    assert len(no_counters) < len(golden_state)
    model = load_lwopenpose_checkpoint(no_counters)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, golden_state[k]), k
    del no_counters["cpm.trunk.1.2.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"1 missing: cpm.trunk.1.2.weight"):
        load_lwopenpose_checkpoint(no_counters)


def test_missing_checkpoint_file_says_what_to_fetch(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_NAME) as err:
        load_lwopenpose_checkpoint(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- preprocessing
def test_normalize_is_minus_128_over_256():
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)
    out = normalize(img)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[-0.5, 0.0, 127 / 256]]])


def test_pad_to_stride_splits_the_padding_and_uses_the_pad_value():
    img = np.ones((13, 21, 3), np.float32)
    out, pad = pad_to_stride(img)
    assert out.shape == (16, 24, 3)
    assert pad == (1, 1, 2, 2)                               # the odd pixel goes to the bottom / right
    np.testing.assert_array_equal(out[1:14, 1:22], img)
    assert out.sum() == img.sum() and out[0].max() == 0 and out[:, -2:].max() == 0
    out, pad = pad_to_stride(img, min_size=(16, 40), pad_value=-1.0)
    assert out.shape == (16, 40, 3) and pad == (1, 9, 2, 10) and out[0, 0, 0] == -1.0
    same, pad = pad_to_stride(np.zeros((16, 8, 3)))
    assert same.shape == (16, 8, 3) and pad == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="H, W, C"):
        pad_to_stride(np.zeros((16, 8)))


def test_preprocess_resizes_to_the_base_height_and_pads_to_stride():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (200, 301, 3), dtype=np.uint8)
    x, scale, pad = preprocess(img)
    assert scale == pytest.approx(368 / 200)
    assert x.shape[:3] == (1, 3, 368) and x.shape[3] % 8 == 0 and x.shape[3] - (pad[1] + pad[3]) == 554
    assert pad[0] == pad[2] == 0
    narrow = preprocess(img[:, :50])[0]
    assert narrow.shape == (1, 3, 368, 368)                  # at least as wide as high, as infer_fast
    assert float(narrow[0, :, :, :50].abs().max()) == 0.0    # padded with 0 = grey after normalising
    bgr, _, _ = preprocess(img, base_height=None)
    rgb, _, _ = preprocess(img, base_height=None, channel_order="rgb")
    assert bgr.shape == (1, 3, 200, 304) and torch.equal(rgb, bgr.flip(1))
    with pytest.raises(ValueError, match="channel_order"):
        preprocess(img, channel_order="hsv")


def test_forward_is_stride_8_on_a_padded_input(model_cpu):
    x, _, _ = preprocess(np.full((37, 50, 3), 200, np.uint8), base_height=None)
    with torch.no_grad():
        outs = model_cpu(x)
    assert [tuple(o.shape) for o in outs] == [(1, 19, 5, 7), (1, 38, 5, 7)] * 2


# --------------------------------------------------------------------------- what the golden data cannot see
# The golden weights are PyTorch's default init: each MobileNet block shrinks the input's influence
# ~4x, so after the trunk the outputs depend on the input by < 1e-7 (below float32 noise). The
# golden outputs pin the CPM, the stages and the constant (bias / BN / border) path, but not the
# trunk's strides, dilation or padding. The receptive field does: measured here with positive
# weights (every path adds to the gradient), it must be the one the official layer list implies.
def _expected_receptive_field(layers):
    """``(size, offset, jump)``: output cell i sees input pixels ``[i * jump - offset, ... + size)``."""
    size, offset, jump = 1, 0, 1
    for k, s, d, p in layers:
        size += (k - 1) * d * jump
        offset += p * jump
        jump *= s
    return size, offset, jump


# (kernel, stride, dilation, padding) of the trunk's spatial convs: conv1 3x3/2, then the depthwise
# 3x3 of conv2_1 ... conv5_5 (strides 2 at conv2_2, conv3_2; conv4_2's successor dilated by 2).
TRUNK_SPATIAL = [(3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 1, 1),
                 (3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1)]


def test_trunk_receptive_field_shows_stride_8_and_the_dilated_block():
    trunk = PoseEstimationWithMobileNet().model.double().eval()
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_(), m.running_var.fill_(1.0), m.weight.fill_(1.0), m.bias.zero_()
    x = torch.ones(1, 3, 200, 200, dtype=torch.float64, requires_grad=True)
    out = trunk(x)
    assert out.shape[-2:] == (25, 25)
    i = 12
    out[0, :, i, i].sum().backward()
    rows = torch.nonzero(x.grad[0].sum(0).sum(1)).flatten()
    cols = torch.nonzero(x.grad[0].sum(0).sum(0)).flatten()
    size, offset, jump = _expected_receptive_field(TRUNK_SPATIAL)
    assert (jump, size, offset) == (8, 155, 77)
    for seen in (rows, cols):
        assert (int(seen[0]), int(seen[-1])) == (i * jump - offset, i * jump - offset + size - 1)
