"""ai8x layer emulation against the upstream golden files: float, BN fusion, QAT, simulate;
hardware rules; QAT policy; ConvTranspose2d fusion."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from posekd_lib import ai8x

LAYERS = ("conv1", "conv2", "conv3", "conv4", "add", "conv5", "head")


@pytest.fixture
def g(golden):
    return golden / "ai8x"


@pytest.fixture(autouse=True)
def _one_thread_float_device():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ai8x.set_device(85, False, False)
    yield
    torch.set_num_threads(threads)
    ai8x.set_device(85, False, False)


def load(g, name):
    return torch.load(g / name, map_location="cpu", weights_only=True)


def float_model(g):
    m = ai8x.ai85poselike()
    m.load_state_dict(load(g, "float_state_dict.pt"))
    return m.eval()


def qat_model(g):
    m = float_model(g)
    ai8x.initiate_qat(m, load(g, "qat_io.pt")["qat_policy"])
    m.load_state_dict(load(g, "qat_state_dict.pt"))
    return m.eval()


def simulate_model(g):
    m = ai8x.ai85poselike(weight_bits=8, bias_bits=8, quantize_activation=True,
                          device=ai8x.Device(85, simulate=True))
    ai8x.fuse_bn_layers(m)
    m.load_state_dict(load(g, "quantized_state_dict.pt"))
    return m.eval()


def run_with_hooks(model, x):
    seen = {}
    hooks = [getattr(model, n).register_forward_hook(lambda _m, _a, o, n=n: seen.__setitem__(n, o))
             for n in LAYERS]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y, seen


def test_state_dict_layout_matches_upstream(g):
    sd = ai8x.ai85poselike().state_dict()
    ref = load(g, "float_state_dict.pt")
    assert list(sd) == list(ref)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in sd.items()} == \
        {k: (v.dtype, tuple(v.shape)) for k, v in ref.items()}
    assert list(sd)[:8] == ["conv1.output_shift", "conv1.weight_bits", "conv1.bias_bits",
                            "conv1.quantize_activation", "conv1.adjust_output_shift",
                            "conv1.shift_quantile", "conv1.op.weight", "conv1.op.bias"]
    assert not any(p.requires_grad for n, p in ai8x.ai85poselike().named_parameters()
                   if not n.endswith(("op.weight", "op.bias", "bn.weight", "bn.bias")))


def test_float_eval_and_train_mode_outputs(g):
    io = load(g, "float_io.pt")
    m = float_model(g)
    with torch.no_grad():
        torch.testing.assert_close(m(io["input"]), io["output_eval_float"], rtol=0, atol=1e-6)
        train = copy.deepcopy(m).train()
        torch.testing.assert_close(train(io["input"]), io["output_train_mode_batch_stats"],
                                   rtol=0, atol=1e-6)


def test_bn_fusion_matches_upstream(g):
    m = ai8x.fuse_bn_layers(float_model(g))
    ref = load(g, "fused_float_state_dict.pt")
    sd = m.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k]), k
    io = load(g, "float_io.pt")
    with torch.no_grad():
        torch.testing.assert_close(m(io["input"]), io["output_eval_after_bn_fusion"], rtol=0, atol=1e-6)


def test_qat_forward_is_bit_exact(g):
    io = load(g, "qat_io.pt")
    m = qat_model(g)
    assert int(m.conv3.weight_bits) == 4 and int(m.conv3.bias_bits) == 4 and int(m.conv1.weight_bits) == 8
    shifts = {n: float(getattr(m, n).effective_output_shift()) for n in io["computed_output_shift"]}
    assert shifts == io["computed_output_shift"]
    y, seen = run_with_hooks(m, io["input"])
    assert torch.equal(y, io["output_qat"])
    for n in LAYERS:
        assert torch.equal(seen[n], io["intermediates"][n]), n


def test_simulate_forward_is_bit_exact_and_matches_izer(g):
    io = load(g, "simulate_io.pt")
    y, seen = run_with_hooks(simulate_model(g), io["input_int"])
    assert torch.equal(y, io["output_simulate"])
    for n in LAYERS:
        assert torch.equal(seen[n], io["intermediates"][n]), n
    izer = np.load(g / "izer_expected_output.npy")
    assert np.array_equal(y[0].numpy().astype(np.int64), izer)


def test_apply_device_switches_a_built_model_to_simulate(g):
    """A QAT model switched to simulate and loaded with the quantized weights is the chip,
    and its output is 2**14 x the QAT output (wide head, Q17.14)."""
    m = qat_model(g)
    with torch.no_grad():
        y_qat = m(load(g, "qat_io.pt")["input"])
    ai8x.apply_device(m, ai8x.Device(85, simulate=True))
    m.load_state_dict(load(g, "quantized_state_dict.pt"))
    io = load(g, "simulate_io.pt")
    with torch.no_grad():
        y = m(io["input_int"])
    assert torch.equal(y, io["output_simulate"])
    assert torch.equal(y, y_qat * 2 ** 14)
    assert torch.equal(ai8x.wide_output_to_float(y, m.head), y_qat / 2)     # head shift is -1


def test_wide_output_to_float_undoes_the_qat_shift(g):
    float_out = load(g, "float_io.pt")["output_eval_after_bn_fusion"]
    m = ai8x.fuse_bn_layers(ai8x.ai85poselike())
    m.load_state_dict(load(g, "fused_float_state_dict.pt"))
    ai8x.initiate_qat(m, {"start_epoch": 0, "weight_bits": 8})
    with torch.no_grad():
        y = ai8x.wide_output_to_float(m.eval()(load(g, "float_io.pt")["input"]), m.head)
    rel = (y - float_out).abs().mean() / float_out.abs().mean()
    assert rel < 0.1                                   # 8-bit noise (~4%), not the 2x shift factor


def test_qat_gradients_are_straight_through():
    x = torch.linspace(-1, 1, 11, requires_grad=True)
    ai8x.quantize(x, 8, simulate=False).sum().backward()
    assert torch.equal(x.grad, torch.ones(11))
    layer = ai8x.FusedConv2dReLU(3, 4, 3, padding=1, weight_bits=4, quantize_activation=True)
    layer(torch.rand(2, 3, 8, 8) * 0.5).sum().backward()
    assert layer.op.weight.grad is not None and layer.op.weight.grad.abs().sum() > 0


def test_shift_quantile_uses_midpoint_interpolation():
    p = torch.tensor([-4.0, 1.0, 3.0, -2.0, 0.5])
    for q in (0.1, 0.3, 0.5, 0.9):
        ref = torch.quantile(p.abs(), q, interpolation="midpoint")
        assert torch.equal(ai8x.abs_quantile(p, q), ref)
    assert float(ai8x.abs_quantile(p, 1.0)) == 4.0
    assert float(ai8x.output_shift_of(p)) == 2.0           # 1/4 -> log2 = -2 -> shift +2
    assert float(ai8x.output_shift_of(p, 0.5)) == 1.0       # median |p| = 2 -> shift 1


@pytest.mark.parametrize("build, rule", [
    (lambda: ai8x.FusedConv2dReLU(3, 8, 3, padding=1, stride=2, name="stem"), "stride"),
    (lambda: ai8x.Conv2d(3, 8, 5, padding=2, name="stem"), "kernel 5x5"),
    (lambda: ai8x.Conv2d(3, 8, (3, 1), name="stem"), "square"),
    (lambda: ai8x.Conv2d(3, 8, 3, padding=1, dilation=2, name="stem"), "dilation"),
    (lambda: ai8x.Conv2d(8, 8, 3, padding=1, groups=8, name="stem"), "MAX78002"),
    (lambda: ai8x.Conv2d(3, 8, 3, padding=3, name="stem"), "padding"),
    (lambda: ai8x.Conv2d(3, 8, 1, padding=1, name="stem"), "padding"),
    (lambda: ai8x.Conv2d(3, 8, 3, padding=1, activation="ELU", name="stem"), "ELU"),
    (lambda: ai8x.Conv2d(3, 8, 3, padding=1, activation="Sigmoid", name="stem"), "Sigmoid"),
    (lambda: ai8x.FusedMaxPoolConv2d(3, 8, 3, pool_size=17, name="stem"), "pool size"),
    (lambda: ai8x.FusedConv2dBNReLU(3, 8, 3, padding=1, bias=False, name="stem"), "bias"),
    (lambda: ai8x.Conv2d(3, 8, 1, wide=True, activation="ReLU", name="stem"), "wide"),
    (lambda: ai8x.Conv2d(3, 8, 3, padding=1, weight_bits=3, quantize_activation=True,
                         name="stem"), "weight_bits"),
    (lambda: ai8x.Conv2d(3, 2048, 1, name="stem"), "1024"),
    (lambda: ai8x.ConvTranspose2d(3, 8, 3, stride=1, name="stem"), "stride 2"),
])
def test_illegal_layers_raise_naming_layer_and_rule(build, rule):
    with pytest.raises(ai8x.Ai8xRuleError) as err:
        build()
    assert "stem" in str(err.value) and rule in str(err.value)


def test_depthwise_is_legal_on_max78002_only():
    ai8x.Conv2d(8, 8, 3, padding=1, groups=8, device=ai8x.Device(87))
    with pytest.raises(ai8x.Ai8xRuleError):
        ai8x.Conv2d(8, 8, 3, padding=1, groups=8, device=ai8x.Device(85))


def test_check_model_names_the_module():
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential())
    model.backbone.add_module("conv", ai8x.FusedConv2dReLU(3, 8, 3, padding=1))
    ai8x.check_model(model)
    model.backbone.conv.op.stride = (2, 2)
    with pytest.raises(ai8x.Ai8xRuleError, match=r"backbone\.conv: stride 2"):
        ai8x.check_model(model)
    model.backbone.conv.op.stride = (1, 1)
    model.add_module("act", nn.ELU())
    with pytest.raises(ai8x.Ai8xRuleError, match=r"act: ELU"):
        ai8x.check_model(model)


@pytest.mark.parametrize("cls", [ai8x.FusedConvTranspose2dBNReLU, ai8x.FusedConv2dBNReLU])
def test_bn_fusion_is_exact_in_float(cls):
    torch.manual_seed(0)
    layer = cls(4, 6, 3, padding=1)                     # in != out: catches a wrong BN axis
    layer.train()
    for _ in range(3):
        layer(torch.rand(2, 4, 5, 5) * 0.5)             # non-trivial running stats
    with torch.no_grad():
        layer.bn.weight.uniform_(0.5, 2.0)
        layer.bn.bias.uniform_(-0.2, 0.2)
    layer.eval()
    x = torch.rand(2, 4, 5, 5) * 0.5
    with torch.no_grad():
        before = layer(x)
        ai8x.fuse_bn_layers(layer)
        after = layer(x)
    assert layer.bn is None and not any(".bn." in f".{k}" for k in layer.state_dict())
    assert before.abs().max() > 0.05
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_qat_policy_validation_and_start_epoch(tmp_path):
    path = tmp_path / "qat.yaml"
    path.write_text("start_epoch: 0\nweight_bits: 8\nshift_quantile: 0.99\n"
                    "overrides:\n  conv3:\n    weight_bits: 2\n")
    policy = ai8x.load_qat_policy(path)
    assert policy == {"start_epoch": 0, "weight_bits": 8, "shift_quantile": 0.99,
                      "overrides": {"conv3": {"weight_bits": 2}}}
    assert ai8x.qat_should_start(0, policy)            # upstream's `epoch > 0` would never start
    assert not ai8x.qat_should_start(1, policy)
    later = dict(policy, start_epoch=5)
    assert [e for e in range(10) if ai8x.qat_should_start(e, later)] == [5]
    for bad, msg in [({"weight_bits": 8}, "start_epoch"),
                     ({"start_epoch": 1, "weight_bits": 3}, "weight_bits"),
                     ({"start_epoch": 1, "weight_bits": 8, "shift_quantile": 1.5}, "shift_quantile"),
                     ({"start_epoch": 1, "weight_bits": 8, "overrides": {"conv3": {"weight_bits": 5}}},
                      "conv3"),
                     ({"start_epoch": 1, "weight_bits": 8, "stat_epoch": 2}, "stat_epoch")]:
        with pytest.raises(ValueError, match=msg):
            ai8x.load_qat_policy(bad)
    m = ai8x.ai85poselike()
    with pytest.raises(ValueError, match="conv9"):
        ai8x.initiate_qat(m, {"start_epoch": 0, "weight_bits": 8, "overrides": {"conv9": {"weight_bits": 4}}})
    ai8x.initiate_qat(m, policy)
    assert m.conv1.bn is None
    assert int(m.conv3.weight_bits) == 2 and int(m.head.weight_bits) == 8
    assert bool(m.conv1.adjust_output_shift) and bool(m.conv1.quantize_activation)
    assert float(m.conv1.shift_quantile) == pytest.approx(0.99)
