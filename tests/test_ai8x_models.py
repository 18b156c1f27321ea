"""MAX78000 pose students: legality, resource fit, float/QAT/simulate agreement, QAT training,
network YAML, and (when AI8X_SYNTHESIS_DIR is set) synthesis with the real izer."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml

from posekd_lib.mcu import ai8x, export, max78000
from posekd_lib.models import ai8x_models as am

from conftest import ai8x_qat_is_exact_in_float32

SMALL_IN = (32, 32)                     # (w, h) for fast forward/training tests


@pytest.fixture(autouse=True)
def _float_device():
    ai8x.set_device(85, False, False)
    torch.set_num_threads(1)
    yield
    ai8x.set_device(85, False, False)


def _warmed(variant="tiny", input_size=SMALL_IN, seed=0):
    """A model whose BN statistics moved off their init (one train-mode forward)."""
    torch.manual_seed(seed)
    m = am.ai85posenet(variant, input_size=input_size)
    w, h = input_size
    with torch.no_grad():
        m.train()(torch.rand(4, 3, h, w) * 2 - 1)
    return m.eval()


@pytest.mark.parametrize("variant", ["tiny", "small", "medium"])
def test_variant_is_legal_and_fits_max78000(variant):
    m = am.ai85posenet(variant)
    ai8x.check_model(m)
    w, h = am.AI8X_STUDENT_INPUT
    assert am.input_shape(m) == (3, h, w)
    r = max78000.resource_report(m, am.input_shape(m), data_format=am.AI8X_DATA_FORMAT)
    assert r.fits, r.reasons
    t = r.totals
    assert t["weight_bytes"] <= 442_368 and t["bias_bytes"] <= 2048 and t["layers"] <= 32
    assert t["max_data_bytes"] <= 32 * 1024
    assert t["cycles"] / 50e6 <= 5e-3
    with torch.no_grad():
        y = m.eval()(torch.zeros(1, 3, h, w))
    assert y.shape == (1, 17, h // am.STRIDE, w // am.STRIDE) == (1, 17, 32, 24)   # teacher's maps
    assert m.stride == am.STRIDE


def test_hwc_input_at_teacher_crop_does_not_fit():
    """Why the first layer reads CHW: 128x96 HWC overflows one data-memory instance."""
    m = am.ai85posenet("tiny")
    r = max78000.resource_report(m, am.input_shape(m), data_format="HWC")
    assert not r.fits


def test_small_is_bigger_than_tiny_and_medium_than_small():
    t, s, m = (max78000.resource_report(am.ai85posenet(v), am.input_shape(), data_format="CHW").totals
               for v in ("tiny", "small", "medium"))
    assert t["weight_bytes"] < s["weight_bytes"] < m["weight_bytes"] == 337_360 and m["cycles"] == 213_049


def test_bad_arguments_raise():
    with pytest.raises(KeyError, match="variant"):
        am.ai85posenet("huge")
    with pytest.raises(ValueError, match="multiples of 16"):
        am.ai85posenet("tiny", input_size=(40, 32))


def test_to_ai8x_range_is_the_device_input_grid():
    from posekd_lib.data.datasets import to_tensor_normalized

    rgb = np.array([[[0, 128, 255]]], dtype=np.uint8).repeat(2, 0)           # (2, 1, 3) HWC
    x = am.to_ai8x_range(to_tensor_normalized(rgb)[None])
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, 0.0, 127 / 128]), atol=1e-6)


def test_float_qat_simulate_heatmaps_agree():
    m = _warmed()
    x = torch.randint(-128, 128, (2, 3, 32, 32)).float() / 128
    with torch.no_grad():
        y_float = am.heatmaps_float(m, x)
        ai8x.initiate_qat(m, am.DEFAULT_QAT_POLICY)
        assert all(l.bn is None and int(l.weight_bits) == 8 for _, l in ai8x.ai8x_layers(m))
        y_qat_raw = m(x)
        y_qat = am.heatmaps_float(m, x)
        sim = am.simulate_copy(m)
        y_sim_raw = sim(x * 128)
        y_sim = am.heatmaps_float(sim, x * 128)
    assert y_qat.shape == y_float.shape == (2, 17, 8, 8)
    assert ai8x_qat_is_exact_in_float32(m, x)         # so QAT == simulate exactly, on every CPU
    assert torch.equal(y_sim_raw, y_qat_raw * 2 ** 14)                        # Q17.14 wide head
    assert torch.equal(y_sim, y_qat)
    shift = float(m.head.effective_output_shift())
    assert torch.equal(y_qat, y_qat_raw * 2 ** shift)
    rel = (y_qat - y_float).abs().mean() / y_float.abs().mean()
    assert rel < 0.2                                                          # 8-bit noise only


def test_heatmap_view_feeds_integers_in_simulate():
    m = _warmed()
    ai8x.initiate_qat(m, am.DEFAULT_QAT_POLICY)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = am.HeatmapView(m.eval())(img)
        b = am.HeatmapView(am.simulate_copy(m))(img)
    assert ai8x_qat_is_exact_in_float32(m, am.to_ai8x_range(img))   # exact on every CPU
    assert torch.equal(a, b)


def test_4bit_policy_applies_overrides():
    m = _warmed("small")
    ai8x.initiate_qat(m, am.QAT_POLICY_4BIT_EXAMPLE)
    bits = {n: int(l.weight_bits) for n, l in ai8x.ai8x_layers(m)}
    assert bits["enc4"] == bits["enc4b"] == 4 and bits["enc1"] == bits["head"] == 8
    r8 = max78000.resource_report(_warmed("small"), (3, 32, 32)).totals["weight_bytes"]
    r4 = max78000.resource_report(m, (3, 32, 32)).totals["weight_bytes"]
    assert r8 - r4 == (m.enc4.op.weight.numel() + m.enc4b.op.weight.numel()) // 2


class _TinyPoseSet(torch.utils.data.Dataset):
    """Random crops with Gaussian-blob targets in the datasets' batch format."""

    def __init__(self, n=8, size=SMALL_IN, joints=17):
        g = torch.Generator().manual_seed(0)
        w, h = size
        self.images = torch.randn(n, 3, h, w, generator=g)
        yy, xx = torch.meshgrid(torch.arange(h // 4), torch.arange(w // 4), indexing="ij")
        c = torch.randint(0, w // 4, (n, joints, 2), generator=g)
        d2 = (xx - c[..., :1, None]) ** 2 + (yy - c[..., 1:, None]) ** 2
        self.targets = torch.exp(-d2.float() / 8)
        self.n, self.joints = n, joints

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": self.images[i], "target": self.targets[i],
                "target_weight": torch.ones(self.joints, 1),
                "meta": {"center": torch.zeros(2), "scale": torch.ones(2)}}


def test_train_ai8x_student_float_then_qat(tmp_path):
    torch.manual_seed(0)
    m = am.ai85posenet("tiny", input_size=SMALL_IN)
    loader = torch.utils.data.DataLoader(_TinyPoseSet(), batch_size=4)
    hist = am.train_ai8x_student(m, loader, qat_policy=am.DEFAULT_QAT_POLICY, float_steps=2,
                                 qat_steps=2, out_dir=tmp_path, run_name="t", progress=False,
                                 log_every=1, device="cpu", threads=1)
    assert hist["float"].step[-1] == 2 and hist["qat"].step[-1] == 2
    assert all(np.isfinite(v) for v in hist["qat"].losses["loss"])
    assert (tmp_path / "t_float").is_dir() and (tmp_path / "t_qat").is_dir()
    layers = ai8x.ai8x_layers(m)
    assert all(int(l.weight_bits) == 8 and bool(l.quantize_activation) and l.bn is None for _, l in layers)
    # the QAT loss saw true-scale heatmaps: comparable to the float loss, not 2**shift off
    assert hist["qat"].losses["loss"][0] < 10 * hist["float"].losses["loss"][-1]
    # a second call finds both runs finished and returns the trained QAT model without training
    again = am.ai85posenet("tiny", input_size=SMALL_IN)
    hist2 = am.train_ai8x_student(again, loader, float_steps=2, qat_steps=2, out_dir=tmp_path,
                                  run_name="t", progress=False, device="cpu", threads=1)
    assert hist2["qat"].losses == hist["qat"].losses
    sd, sd2 = m.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


@pytest.mark.parametrize("variant", ["tiny", "small"])
def test_network_yaml_per_variant(variant):
    m = am.ai85posenet(variant)
    text = export.network_yaml(m, am.input_shape(m), f"ai85posenet_{variant}", "coco_pose",
                               data_format=am.AI8X_DATA_FORMAT)
    net = yaml.safe_load(text)
    layers = net["layers"]
    assert len(layers) == len(ai8x.ai8x_layers(m))
    assert layers[0]["data_format"].upper() == "CHW"
    assert layers[-1]["output_width"] == 32
    assert not any(l.get("streaming") for l in layers)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AI8X_SYNTHESIS_DIR"), reason="AI8X_SYNTHESIS_DIR not set")
@pytest.mark.parametrize("variant", ["tiny", "small", "medium", "tiny-pruned", "bottomup-tiny", "bottomup-small",
                                     "bottomup-tiny_s4", "bottomup-recipe", "bottomup-candidate"])
def test_izer_synthesizes_variant(variant, tmp_path):
    """izer accepts the student (a channel-pruned one, the bottom-up 128x128 students and notebook
    08's recipe, 144x112), its weight bytes and cycle estimate equal the resource report's, and its
    computed output equals the simulate-mode model's."""
    from posekd_lib.mcu import pruning
    from posekd_lib.train.bottom_up import RECIPE

    if variant.startswith("bottomup"):
        torch.manual_seed(0)
        name, size = variant.split("-")[1], am.BOTTOM_UP_INPUT
        if name == "recipe":
            name, size = RECIPE["variant"], RECIPE["input_size"]
        if name == "candidate":                          # the capacity candidate at the recipe's frame
            name, size = "small_s4_d2", RECIPE["input_size"]
        m = am.ai85bottomup(name, input_size=size)
        with torch.no_grad():
            m.train()(torch.rand(4, 3, *size[::-1]) * 2 - 1)
        m.eval()
    else:
        m = _warmed(variant.split("-")[0], am.AI8X_STUDENT_INPUT)
    if variant.endswith("pruned"):
        m = pruning.prune_channels(m, am.input_shape(m), 0.5)
    ai8x.initiate_qat(m, am.DEFAULT_QAT_POLICY)
    shape = am.input_shape(m)
    arch = f"ai85posenet_{variant.replace('-', '_')}"
    q = export.quantize_checkpoint(export.lean_checkpoint(m, 1, arch))
    ck = export.save_checkpoint(q, tmp_path / "q.pth.tar")
    cfg = tmp_path / "net.yaml"
    cfg.write_text(export.network_yaml(m, shape, arch, "coco_pose", data_format=am.AI8X_DATA_FORMAT))
    x = am.to_ai8x_range(torch.randn(1, *shape))
    sample = tmp_path / "sample.npy"
    np.save(sample, export.sample_input(x))
    out = export.run_izer(ck, cfg, sample, tmp_path, arch)
    assert out["returncode"] == 0, out["log"][-3000:]
    report = max78000.resource_report(m, shape, data_format=am.AI8X_DATA_FORMAT)
    assert out["weight_bytes"] == report.totals["weight_bytes"]
    assert out["cycles"] == report.totals["cycles"]
    sim = am.simulate_copy(m)
    assert np.array_equal(out["output"], export.expected_output(sim, export.sample_input(x)))


def test_evaluate_ai8x_simulate_equals_qat_on_coco_sample(coco_sample):
    from types import SimpleNamespace

    split = SimpleNamespace(ann_file=coco_sample / "person_keypoints.json", img_dir=coco_sample / "images")
    m = _warmed("tiny", am.AI8X_STUDENT_INPUT)
    ai8x.initiate_qat(m, am.DEFAULT_QAT_POLICY)
    kw = dict(flip_test=False, return_results=True, batch_size=8)
    sim_metrics, sim = am.evaluate_ai8x(m, split, simulate=True, **kw)
    qat_metrics, qat = am.evaluate_ai8x(m, split, simulate=False, **kw)
    assert "AP" in sim_metrics and sim_metrics.keys() == qat_metrics.keys()
    assert len(sim) == len(qat) > 0
    np.testing.assert_array_equal([r["keypoints"] for r in sim], [r["keypoints"] for r in qat])
    assert all(int(l.weight_bits) == 8 and not l.device.simulate for _, l in ai8x.ai8x_layers(m))


def test_simulate_heatmaps_come_back_in_the_input_dtype():
    """Simulate computes in float64 (exact integers); HeatmapView / heatmaps_float return the
    heatmaps in the input's dtype, as in float and QAT mode (notebook 06 compares them)."""
    m = _warmed()
    ai8x.initiate_qat(m, am.DEFAULT_QAT_POLICY)
    sim = am.simulate_copy(m)
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert sim(am.to_ai8x_range(img) * 128).dtype == torch.float64
        hm = am.HeatmapView(sim)(img)
    assert hm.dtype == torch.float32
    sample = export.sample_input(am.to_ai8x_range(img))
    wide = ai8x.wide_output_to_float(torch.from_numpy(export.expected_output(sim, sample)).float()[None],
                                     am.head_layer(sim))
    torch.testing.assert_close(wide, hm)                  # notebook 06's check


@pytest.mark.parametrize("variant,stride", [("tiny", 8), ("small", 8), ("tiny_s4", 4), ("small_s4_d2", 4)])
def test_bottom_up_students_fit_the_max78000(variant, stride):
    """128x128 frames in, 19 heatmaps + 38 PAFs at stride 8 (4 for tiny_s4: a transposed conv and a
    conv after the tiny chain) out; weights within 442,368 B and the estimated latency within 10 ms
    (issue goals), with the rules checked by the resource report."""
    m = am.ai85bottomup(variant)
    y = m(torch.randn(2, 3, 128, 128))
    assert y.shape == (2, am.BOTTOM_UP_OUTPUTS, 128 // stride, 128 // stride) and m.stride == stride
    r = max78000.resource_report(m, am.input_shape(m), data_format=am.AI8X_DATA_FORMAT)
    lim = max78000.limits(85)
    assert r.fits, r.reasons
    assert r.totals["weight_bytes"] <= lim.weight_memory_bytes == 442_368
    assert r.totals["cycles"] / lim.cnn_clock_hz <= 0.010
    with pytest.raises(KeyError, match="unknown bottom-up ai8x variant"):
        am.ai85bottomup("huge")
