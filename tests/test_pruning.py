"""Pruning: channel pruning frees MAX78000 weight memory, magnitude pruning does not."""
from __future__ import annotations

import pytest
import torch

from posekd_lib.mcu import ai8x, pruning
from posekd_lib.models import ai8x_models as am

from conftest import assert_float32_close

SHAPE = (3, 32, 32)


@pytest.fixture(autouse=True)
def _float_device():
    ai8x.set_device(85, False, False)
    torch.set_num_threads(1)
    yield


def _model(variant="tiny"):
    torch.manual_seed(0)
    m = am.ai85posenet(variant, input_size=(32, 32))
    with torch.no_grad():
        m.train()(torch.rand(4, *SHAPE) * 2 - 1)
    return m.eval()


def test_prunable_layers_skip_the_head_and_eltwise_operands():
    assert list(pruning.prunable_layers(_model(), SHAPE)) == [n for n, _, _ in am.VARIANTS["tiny"]]
    golden_like = ai8x.ai85poselike()                 # conv2 and conv4 feed the residual add
    allowed = pruning.prunable_layers(golden_like, (3, 64, 64))
    assert set(allowed) == {"conv1", "conv3", "conv5"}
    with pytest.raises(ValueError, match="conv2"):
        pruning.prune_channels(golden_like, (3, 64, 64), 0.5, layers=["conv2"])


def test_channel_pruning_frees_weight_memory_and_still_runs():
    m = _model()
    before = pruning.weight_memory_bytes(m, SHAPE, data_format="CHW")
    p = pruning.prune_channels(m, SHAPE, 0.5)
    after = pruning.weight_memory_bytes(p, SHAPE, data_format="CHW")
    assert after < 0.35 * before                                    # ~ (1/2)^2 on inner layers
    assert [c for _, _, c in p.spec] == [c // 2 for _, _, c in am.VARIANTS["tiny"]]
    assert p.enc1.bn.num_features == p.enc1.op.out_channels == 8
    assert p.up3.op.weight.shape[:2] == (p.enc4b.op.out_channels, p.up3.op.out_channels)
    ai8x.check_model(p)
    with torch.no_grad():
        assert p(torch.zeros(1, *SHAPE)).shape == (1, 17, 8, 8)
    # the original is untouched and a model rebuilt from the spec has the same state-dict shapes
    assert pruning.weight_memory_bytes(m, SHAPE, data_format="CHW") == before
    rebuilt = am.ai85posenet(spec=p.spec, input_size=(32, 32))
    rebuilt.load_state_dict(p.state_dict())


def test_channel_pruning_keeps_the_most_important_channels():
    m = _model()
    with torch.no_grad():
        m.enc1.bn.weight.copy_(torch.arange(16, dtype=torch.float32))
    p = pruning.prune_channels(m, SHAPE, 0.5, layers=["enc1"])
    assert torch.equal(p.enc1.bn.weight, torch.arange(8, 16, dtype=torch.float32))
    assert torch.equal(p.enc2.op.weight, m.enc2.op.weight[:, 8:])
    assert p.enc2.op.out_channels == m.enc2.op.out_channels


def test_channel_pruning_preserves_function_of_kept_channels():
    """Pruning channels whose BN gamma and beta are zero (dead ReLU outputs) changes nothing."""
    m = _model()
    with torch.no_grad():
        m.enc3.bn.weight[:24] = 0
        m.enc3.bn.bias[:24] = 0
        x = torch.rand(2, *SHAPE) * 2 - 1
        y = m(x)
        p = pruning.prune_channels(m, SHAPE, 0.5, layers=["enc3"])
        # float32: the next layer sums 24 instead of 48 channels (the dropped ones are zero),
        # in another kernel's order; tolerance from the longest sum (conftest.float32_atol)
        assert_float32_close(p(x), y, m, what="pruned vs unpruned")


def test_gmp_schedule_values():
    assert pruning.gmp_sparsity(0, 100, 0.5) == 0.0
    assert pruning.gmp_sparsity(100, 100, 0.5) == 0.5
    assert pruning.gmp_sparsity(50, 100, 0.5) == pytest.approx(0.5 - 0.5 * 0.5 ** 3)
    assert pruning.gmp_sparsity(200, 100, 0.5) == 0.5
    assert pruning.gmp_sparsity(5, 100, 0.3, 0.1, start_step=10) == pytest.approx(0.1)
    s = [pruning.gmp_sparsity(t, 10, 0.4) for t in range(11)]
    assert all(b >= a for a, b in zip(s, s[1:]))
    assert s[1] - s[0] > s[-1] - s[-2]                      # prunes fast early, slowly late


def test_magnitude_pruning_hits_sparsity_but_frees_no_memory():
    m = _model()
    before = pruning.weight_memory_bytes(m, SHAPE, data_format="CHW")
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    pruner = pruning.GradualMagnitudePruner(m, total_steps=4, final_sparsity=0.5)
    handle = pruning.masked_optimizer_step(opt, pruner)
    x = torch.rand(2, *SHAPE) * 2 - 1
    for _ in range(4):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        opt.step()
    handle.remove()
    assert pruner.sparsity == 0.5
    assert pruning.sparsity_of(m) == pytest.approx(0.5, abs=0.01)
    assert pruning.weight_memory_bytes(m, SHAPE, data_format="CHW") == before
    w = m.enc4b.op.weight
    kept = w[w != 0].abs().min()
    assert kept > 0 and (w == 0).float().mean() == pytest.approx(0.5, abs=0.01)
