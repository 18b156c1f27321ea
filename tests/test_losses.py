import math

import numpy as np

import pytest
import torch

from posekd_lib.distill.losses import (AdaptiveWingLoss, JointsMSELoss, adaptive_wing, adaptive_wing_map, batch_loss,
                               foreground_weight_map, joints_mse)


def official_joints_mse(output, target, target_weight):
    """HRNet's JointsMSELoss.forward (use_target_weight=True), written out joint by joint."""
    n, k = output.shape[:2]
    pred, gt = output.reshape(n, k, -1), target.reshape(n, k, -1)
    loss = 0
    for j in range(k):
        w = target_weight[:, j].reshape(n, 1)
        loss = loss + 0.5 * torch.nn.functional.mse_loss(pred[:, j] * w, gt[:, j] * w)
    return loss / k


def test_joints_mse_by_hand():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.ones(1, 2, 2, 2)
    # joint 0: 4 pixels of error 1 (weight 1); joint 1 masked but still counted in the mean of 8
    assert joints_mse(pred, target, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5 * 4 / 8)
    # the weight multiplies before squaring: w = 2 counts 4x
    assert joints_mse(pred, target, torch.tensor([[2.0, 0.0]])).item() == pytest.approx(0.5 * 16 / 8)
    assert joints_mse(pred, target).item() == pytest.approx(0.5)


def test_joints_mse_matches_official_formula():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(3, 17, 8, 6, generator=g), torch.rand(3, 17, 8, 6, generator=g)
    weight = (torch.rand(3, 17, 1, generator=g) > 0.3).float() * 1.5
    expected = official_joints_mse(pred, target, weight)
    torch.testing.assert_close(joints_mse(pred, target, weight), expected)
    torch.testing.assert_close(JointsMSELoss()(pred, target, weight.squeeze(-1)), expected)
    torch.testing.assert_close(JointsMSELoss(use_target_weight=False)(pred, target, weight), joints_mse(pred, target))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"target_weight has shape \(2, 3\); expected \(2, 17\)"):
        joints_mse(torch.zeros(2, 17, 4, 4), torch.zeros(2, 17, 4, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="pred shape"):
        adaptive_wing(torch.zeros(2, 17, 4, 4), torch.zeros(2, 17, 8, 8))


def awing_scalar(y_hat, y, omega=14.0, theta=0.5, eps=1.0, alpha=2.1):
    d, p = abs(y - y_hat), alpha - y
    if d < theta:
        return omega * math.log(1 + (d / eps) ** p)
    a = omega * (1 / (1 + (theta / eps) ** p)) * p * (theta / eps) ** (p - 1) / eps
    c = theta * a - omega * math.log(1 + (theta / eps) ** p)
    return a * d - c


def test_adaptive_wing_map_matches_paper_formula_and_is_continuous():
    pairs = [(0.0, 0.0), (0.1, 0.0), (0.9, 0.0), (0.2, 1.0), (0.7, 1.0), (-0.4, 0.6), (0.5, 0.3)]
    pred = torch.tensor([p for p, _ in pairs], dtype=torch.float64)
    target = torch.tensor([t for _, t in pairs], dtype=torch.float64)
    got = adaptive_wing_map(pred, target)
    torch.testing.assert_close(got, torch.tensor([awing_scalar(p, t) for p, t in pairs], dtype=torch.float64))
    y = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    below, above = adaptive_wing_map(y - 0.5 + 1e-9, y), adaptive_wing_map(y - 0.5 - 1e-9, y)
    torch.testing.assert_close(below, above, atol=1e-6, rtol=0)


def test_adaptive_wing_ignores_masked_joints_and_is_not_diluted():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 5, 6, 4, generator=g)
    pred = torch.rand(2, 5, 6, 4, generator=g, requires_grad=True)
    weight = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0]])
    loss = adaptive_wing(pred, target, weight)

    changed = pred.detach().clone()
    changed[weight == 0] = 100.0
    assert adaptive_wing(changed, target, weight).item() == pytest.approx(loss.item(), rel=1e-6)

    used = weight > 0
    assert loss.item() == pytest.approx(adaptive_wing_map(pred[used], target[used]).mean().item(), rel=1e-6)

    loss.backward()
    assert pred.grad[~used].abs().sum() == 0 and pred.grad[used].abs().sum() > 0
    assert adaptive_wing(pred, target, torch.zeros(2, 5)).item() == 0


def test_adaptive_wing_weight_map():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2] = 1.0
    m = foreground_weight_map(target)
    assert m[0, 0, 1:4, 1:4].eq(11).all() and m.sum() == 25 + 10 * 9
    pred = torch.full_like(target, 0.3)
    module = AdaptiveWingLoss(weight_map=True)
    expected = (adaptive_wing_map(pred, target) * m).mean()
    torch.testing.assert_close(module(pred, target, torch.ones(1, 1)), expected)


def test_batch_loss_reads_the_batch():
    pred, target = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    weight = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    fn = batch_loss(AdaptiveWingLoss())
    assert fn(pred, {"target": target, "target_weight": weight}) == adaptive_wing(pred, target, weight)
    with pytest.raises(TypeError, match="heatmap tensor"):
        batch_loss()((pred,), {"target": target})


def test_heatmap_softmax_ce_is_smallest_at_the_target_distribution():
    from posekd_lib.distill.losses import heatmap_softmax_ce, joints_mse, mse_with_ce

    from posekd_lib.data.codecs import HeatmapCodec
    codec = HeatmapCodec((96, 128), (24, 32), 2.0)
    target, weight = codec.encode(np.array([[[40.0, 50.0, 2]] * 3]))
    target, weight = torch.from_numpy(target), torch.from_numpy(weight)      # (1, 3, 32, 24)
    p = target / target.sum(dim=(-2, -1), keepdim=True)
    best = (0.1 * torch.log(p.clamp_min(1e-30))).requires_grad_()           # softmax(best / 0.1) == p
    loss = heatmap_softmax_ce(best, target, weight)
    entropy = -(p[p > 0] * p[p > 0].log()).sum() / 3
    torch.testing.assert_close(loss, entropy.float(), rtol=1e-4, atol=1e-4)
    loss.backward()
    assert best.grad.abs().max() < 1e-4
    assert heatmap_softmax_ce(torch.zeros_like(target), target, weight) > loss + 1   # a flat map is far worse
    # masked joints and empty targets do not count
    w2 = weight.clone()
    w2[0, 1] = 0
    shifted = best.detach().clone()
    shifted[0, 1] = shifted[0, 1].roll(5, dims=-1)
    torch.testing.assert_close(heatmap_softmax_ce(shifted, target, w2), heatmap_softmax_ce(best, target, w2))
    x = torch.rand_like(target)
    torch.testing.assert_close(mse_with_ce(x, target, weight, ce_weight=0.5),
                               joints_mse(x, target, weight) + 0.5 * heatmap_softmax_ce(x, target, weight))


def test_bottom_up_mse_masks_and_takes_both_output_forms():
    from posekd_lib.distill.losses import bottom_up_mse

    g = torch.Generator().manual_seed(0)
    batch = {"heatmaps": torch.rand(2, 19, 4, 4, generator=g), "pafs": torch.rand(2, 38, 4, 4, generator=g) - 0.5,
             "mask": torch.ones(2, 1, 4, 4)}
    exact = torch.cat([batch["heatmaps"], batch["pafs"]], dim=1)
    assert bottom_up_mse(exact, batch) == 0
    off = exact + 0.1
    expected = 0.5 * 0.01 * 2                      # 0.5 * mean(0.1^2), heatmaps and PAFs
    torch.testing.assert_close(bottom_up_mse(off, batch), torch.tensor(expected))
    # LW-OpenPose's per-stage list: two stages count twice
    two_stages = [off[:, :19], off[:, 19:], off[:, :19], off[:, 19:]]
    torch.testing.assert_close(bottom_up_mse(two_stages, batch), torch.tensor(2 * expected))
    masked = {**batch, "mask": torch.zeros(2, 1, 4, 4)}
    assert bottom_up_mse(off, masked) == 0
    with pytest.raises(ValueError, match="50 channels"):
        bottom_up_mse(torch.zeros(2, 50, 4, 4), batch)
    # positive weight: cells weighted 1 + λ|target| on the keypoints and PAFs, not on the background
    lam = 10.0
    w_hm = torch.cat([1 + lam * batch["heatmaps"][:, :18], torch.ones(2, 1, 4, 4)], 1)
    w_paf = 1 + lam * batch["pafs"].abs()
    expected_w = 0.5 * 0.01 * (w_hm.mean() + w_paf.mean())
    torch.testing.assert_close(bottom_up_mse(off, batch, positive_weight=lam), expected_w)
    assert bottom_up_mse(off, batch, positive_weight=0.0) == bottom_up_mse(off, batch)
    assert bottom_up_mse(exact, batch, positive_weight=lam) == 0
