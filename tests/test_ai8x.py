"""ai8x layer emulation against the upstream golden files: float, BN fusion, QAT, simulate;
hardware rules; QAT policy; ConvTranspose2d fusion."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from posekd_lib.mcu import ai8x

from conftest import ai8x_qat_is_exact_in_float32, assert_float32_close, longest_dot_product

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
    """Float mode is float32 arithmetic: equal to the golden up to the rounding of the longest
    sum (conftest.float32_atol). Eval: conv2/conv3/conv5's 3x3 over 32 channels, n = 288, on
    outputs <= 0.65: atol 2.2e-5. Train mode also sums BatchNorm's batch statistics, over
    N*H*W = 2*64*64 = 8192 values per channel for conv1: n = 8192, atol 8.2e-4 (outputs <= 0.84)."""
    io = load(g, "float_io.pt")
    m = float_model(g)
    with torch.no_grad():
        assert_float32_close(m(io["input"]), io["output_eval_float"], m, what="float eval")
        train = copy.deepcopy(m).train()
        n, _, h, w = io["input"].shape
        assert_float32_close(train(io["input"]), io["output_train_mode_batch_stats"],
                             n=n * h * w, what="float train mode (batch statistics)")


def test_bn_fusion_matches_upstream(g):
    m = ai8x.fuse_bn_layers(float_model(g))
    ref = load(g, "fused_float_state_dict.pt")
    sd = m.state_dict()
    assert list(sd) == list(ref)
    # exact by construction on every CPU: the fused weights are elementwise IEEE-754 float32
    # operations (sub, mul, add and rsqrt, which ATen computes as 1 / sqrt in its scalar and
    # every vector kernel: each correctly rounded, no reduction), the same operations in the same
    # order as upstream's fusion, so no kernel choice can change them
    for k in ref:
        assert torch.equal(sd[k], ref[k]), k
    io = load(g, "float_io.pt")
    with torch.no_grad():         # the forward is a float32 conv: n = 288 (see the test above)
        assert_float32_close(m(io["input"]), io["output_eval_after_bn_fusion"], m,
                             what="float eval after BN fusion")


def test_qat_forward_is_bit_exact(g):
    """Exact by construction (not float32 noise): see conftest.ai8x_qat_is_exact_in_float32."""
    io = load(g, "qat_io.pt")
    m = qat_model(g)
    assert ai8x_qat_is_exact_in_float32(m, io["input"])
    assert int(m.conv3.weight_bits) == 4 and int(m.conv3.bias_bits) == 4 and int(m.conv1.weight_bits) == 8
    shifts = {n: float(getattr(m, n).effective_output_shift()) for n in io["computed_output_shift"]}
    assert shifts == io["computed_output_shift"]
    y, seen = run_with_hooks(m, io["input"])
    assert torch.equal(y, io["output_qat"])
    for n in LAYERS:
        assert torch.equal(seen[n], io["intermediates"][n]), n


def test_simulate_forward_is_bit_exact_and_matches_izer(g):
    """Exact on every CPU: simulate computes with integers in float64 (see the tests below)."""
    io = load(g, "simulate_io.pt")
    y, seen = run_with_hooks(simulate_model(g), io["input_int"])
    assert y.dtype == torch.float64
    assert torch.equal(y, io["output_simulate"].double())
    for n in LAYERS:
        assert torch.equal(seen[n], io["intermediates"][n].double()), n
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
    assert torch.equal(y, io["output_simulate"].double())
    assert torch.equal(y, y_qat.double() * 2 ** 14)      # QAT exact by construction (see above)
    assert torch.equal(ai8x.wide_output_to_float(y, m.head), y_qat.double() / 2)   # head shift -1


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
def test_bn_fusion_preserves_the_float_output(cls):
    """Fusion is exact in real arithmetic; in float32 the fused and unfused layers round
    differently: the conv sums 4 * 3 * 3 = 36 products (conftest.float32_atol), and the BN's
    scale and shift and the fused weight and bias add one rounding each: n = 36 + 4."""
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
    assert_float32_close(after, before, n=longest_dot_product(layer) + 4, what="fused vs unfused")


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


# --------------------------------------------------------------------------------------------
# simulate is exact whatever convolution kernel torch picks

def _int_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Exact reference: an int64 convolution (numpy's integer einsum: no float anywhere)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))   # N,C,H,W,k,k
    return np.einsum("nchwij,ocij->nohw", win, w, dtype=np.int64) + b[None, :, None, None]


def _kernel_variants(x: torch.Tensor):
    """The same input through different convolution kernels: oneDNN on and off, channels-last
    memory, one and two threads."""
    enabled = torch.backends.mkldnn.enabled
    try:
        for mkldnn in (True, False):
            torch.backends.mkldnn.enabled = mkldnn
            for fmt in (torch.contiguous_format, torch.channels_last):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    yield (mkldnn, fmt, threads), x.contiguous(memory_format=fmt)
    finally:
        torch.backends.mkldnn.enabled = enabled


def _wide_simulate_conv(c_in: int, wide: bool, shift: float = 0.0):
    layer = ai8x.Conv2d(c_in, 8, 3, padding=1, wide=wide, activation=None if wide else "ReLU",
                        weight_bits=8, quantize_activation=True, name="big",
                        device=ai8x.Device(85, simulate=True))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                     # int8 weights, mostly positive: large sums
        layer.op.weight.copy_(torch.randint(-16, 128, layer.op.weight.shape, generator=g).float())
        layer.op.bias.copy_(torch.randint(-128, 128, (8,), generator=g).float())
        layer.output_shift.fill_(shift)
    x = torch.randint(0, 128, (1, c_in, 6, 6), generator=g).float()    # ReLU outputs: >= 0
    return layer.eval(), x


def test_simulate_wide_output_beyond_float32_range_is_exact_with_any_kernel():
    """A 1024-channel 3x3 wide conv (fan-in 9216): its int32 accumulator reaches ~5e7 > 2**24,
    where float32 holds only even (then multiples of 4) integers, so a float32 convolution
    cannot be exact; the float64 simulate path equals the int64 reference with every kernel."""
    layer, x = _wide_simulate_conv(1024, wide=True)
    ref = _int_conv(x.numpy().astype(np.int64), layer.op.weight.detach().numpy().astype(np.int64),
                    layer.op.bias.detach().numpy().astype(np.int64), 1)
    ref = np.clip(ref, -2 ** 29, 2 ** 29 - 1)          # the wide output: the accumulator itself
    assert ref.max() > 2 ** 24
    assert (ref.astype(np.float32).astype(np.int64) != ref).any()      # float32 cannot hold it
    for how, xv in _kernel_variants(x):
        with torch.no_grad():
            y = layer(xv)
        assert y.dtype == torch.float64
        assert np.array_equal(y.numpy().astype(np.int64), ref), how


def test_simulate_8bit_output_of_a_large_fan_in_is_exact_with_any_kernel():
    """The same conv as an 8-bit ReLU layer with output shift -15: floor(acc * 2**-15), ReLU,
    round half up to 8 bits (/128), clamp to [-128, 127] in integers."""
    layer, x = _wide_simulate_conv(1024, wide=False, shift=-15.0)
    acc = _int_conv(x.numpy().astype(np.int64), layer.op.weight.detach().numpy().astype(np.int64),
                    layer.op.bias.detach().numpy().astype(np.int64), 1)
    ref = np.clip((np.maximum(acc >> 15, 0) + 64) // 128, -128, 127)
    assert 0 < ref.max() < 127                              # not all clamped
    for how, xv in _kernel_variants(x):
        with torch.no_grad():
            y = layer(xv)
        assert np.array_equal(y.numpy().astype(np.int64), ref), how


@pytest.mark.parametrize("round_avg", [False, True])
def test_simulate_avg_pool_3x3_is_exact(round_avg):
    """Average pooling by 9 (not a power of two): the integer window sum over 9, truncated (or
    rounded half to even, with ``round_avg``) exactly as integer arithmetic does."""
    pool = ai8x.AvgPool2d(3, 3, device=ai8x.Device(85, simulate=True, round_avg=round_avg)).eval()
    x = torch.randint(-128, 128, (2, 64, 30, 30), generator=torch.Generator().manual_seed(1)).float()
    s = x.numpy().astype(np.int64).reshape(2, 64, 10, 3, 10, 3).sum(axis=(3, 5))
    if round_avg:
        ref = np.round(s / 9)            # s/9 is never exactly .5 (9 is odd): plain rounding
    else:
        ref = np.sign(s) * (np.abs(s) // 9)
    with torch.no_grad():
        y = pool(x)
    assert y.dtype == torch.float64 and np.array_equal(y.numpy(), ref.astype(np.float64))
