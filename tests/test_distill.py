"""Distillation losses, hooks and loss objects on tiny random conv nets (no real models)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from posekd_lib.data.codecs import HeatmapCodec
from posekd_lib.distill import (FeatureAdapter, FeatureHooks, FeatureKD, LogitsKD, feature_kd_loss, fpd_loss,
                                kd_weight_schedule, list_feature_shapes, resize_heatmaps, resize_input,
                                spatial_kl_loss, standardize_channels)
from posekd_lib.distill.losses import joints_mse
from posekd_lib.train import fit

K = 5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny nets: one thread avoids OpenMP spin-waits on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyPose(nn.Module):
    """stem (stride 2) -> body (stride ``body_stride``) -> 1x1 head with K heatmaps."""

    def __init__(self, width: int = 8, body_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, stride=body_stride, padding=1),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, K, 1)

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def nets(seed: int = 0):
    """A wider stride-2 teacher and a narrower stride-4 student on 24x32 (w x h) inputs."""
    torch.manual_seed(seed)
    return TinyPose(width=12, body_stride=1), TinyPose(width=6, body_stride=2)


def make_batch(n: int = 4, seed: int = 1, size=(24, 32), hm=(6, 8)) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(n, K, generator=g) > 0.3).float()
    return {"image": torch.randn(n, 3, size[1], size[0], generator=g),
            "target": torch.rand(n, K, hm[1], hm[0], generator=g), "target_weight": w,
            "meta": {"index": torch.arange(n)}}


# --------------------------------------------------------------------------- logits losses
def test_fpd_loss_endpoints_and_mix():
    g = torch.Generator().manual_seed(0)
    s, t, gt = (torch.rand(2, K, 8, 6, generator=g) for _ in range(3))
    w = torch.tensor([[1.0, 0, 1, 1, 0], [0, 1, 1, 0, 1]])
    torch.testing.assert_close(fpd_loss(s, t, gt, w, alpha=0.0), joints_mse(s, gt, w))
    torch.testing.assert_close(fpd_loss(s, t, gt, w, alpha=1.0), joints_mse(s, t))
    torch.testing.assert_close(fpd_loss(s, t, gt, w, alpha=1.0, teacher_weight="target"), joints_mse(s, t, w))
    torch.testing.assert_close(fpd_loss(s, t, gt, w, alpha=0.3), 0.7 * joints_mse(s, gt, w) + 0.3 * joints_mse(s, t))
    # the teacher term supervises joints the ground truth masks out
    assert fpd_loss(s, t, gt, w, alpha=1.0) > fpd_loss(s, t, gt, w, alpha=1.0, teacher_weight="target")


def test_spatial_kl_zero_positive_and_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, K, 8, 6, generator=g), torch.randn(3, K, 8, 6, generator=g)
    assert spatial_kl_loss(t, t.clone(), temperature=0.5).abs() < 1e-6
    for T in (1.0, 0.25, 4.0):
        got = spatial_kl_loss(s, t, temperature=T)
        kl = F.kl_div(F.log_softmax(s.flatten(2) / T, -1), F.log_softmax(t.flatten(2) / T, -1),
                      reduction="none", log_target=True).sum(-1)
        torch.testing.assert_close(got, T ** 2 * kl.mean())
        assert got > 0
    # the T² factor: at a large T the KL shrinks like 1/T², the scaled loss settles to a constant
    big = [spatial_kl_loss(s, t, temperature=T) for T in (50.0, 100.0)]
    torch.testing.assert_close(big[0], big[1], rtol=1e-2, atol=0)


def test_spatial_kl_weight_masks_joints():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, K, 8, 6, generator=g), torch.randn(2, K, 8, 6, generator=g)
    w = torch.ones(2, K)
    w[0, 1] = 0
    s2 = s.clone()
    s2[0, 1] += torch.randn(8, 6, generator=g) * 5
    torch.testing.assert_close(spatial_kl_loss(s, t, 1.0, w), spatial_kl_loss(s2, t, 1.0, w))
    assert not torch.isclose(spatial_kl_loss(s, t), spatial_kl_loss(s2, t))
    with pytest.raises(ValueError, match="resize_heatmaps"):
        spatial_kl_loss(s, t[..., :4])


# --------------------------------------------------------------------------- resizing and schedule
def test_resize_heatmaps_matches_codec_at_half_resolution():
    """A σ=2 target at 48x64 resized to 24x32 is the σ=1 target the codec draws at 24x32."""
    kps = torch.tensor([[[40.0, 64.0, 2], [96, 200, 1], [8, 8, 2], [184, 248, 2], [120, 16, 1]]])
    big, _ = HeatmapCodec((192, 256), (48, 64), sigma=2).encode(kps.numpy())
    small, _ = HeatmapCodec((192, 256), (24, 32), sigma=1).encode(kps.numpy())
    out = resize_heatmaps(torch.from_numpy(big), (24, 32))
    assert out.shape == (1, 5, 32, 24)
    torch.testing.assert_close(out, torch.from_numpy(small), atol=1e-5, rtol=0)
    # F.interpolate's half-cell shift would not
    shifted = F.interpolate(torch.from_numpy(big), size=(32, 24), mode="bilinear", align_corners=False)
    assert (shifted - torch.from_numpy(small)).abs().max() > 0.1
    assert resize_heatmaps(out, out) is out


def test_resize_input_grid_and_shapes():
    ramp = torch.arange(24.0).expand(2, 3, 32, 24)                          # value = x
    up = resize_input(ramp, (36, 48))
    assert up.shape == (2, 3, 48, 36)
    torch.testing.assert_close(up[0, 0, 0], (torch.arange(36.0) * 24 / 36).clamp(max=23))
    down = resize_input(ramp, (12, 16))
    torch.testing.assert_close(down[1, 2, 5], torch.arange(12.0) * 2)
    with pytest.raises(ValueError, match="N, C, H, W"):
        resize_input(ramp[0], (12, 16))


def test_kd_weight_schedule_values():
    assert [kd_weight_schedule(s, 10) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert [kd_weight_schedule(s, 10, "linear_decay") for s in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match="total_steps"):
        kd_weight_schedule(3, None, "linear_decay")
    with pytest.raises(ValueError, match="constant"):
        kd_weight_schedule(3, 10, "cosine")


# --------------------------------------------------------------------------- LogitsKD
def test_logits_kd_frozen_teacher_gets_no_grad_and_stays_in_eval():
    teacher, student = nets()
    kd = LogitsKD(teacher, alpha=0.5)
    teacher.train()                                            # a careless caller
    student.train()
    stats = teacher.stem[1].running_mean.clone()
    batch = make_batch()
    out = kd.loss(student(batch["image"]), batch)
    out["loss"].backward()
    assert set(out) == {"loss", "gt", "kd"}
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not any(m.training for m in teacher.modules()) and student.training
    torch.testing.assert_close(teacher.stem[1].running_mean, stats)


def test_logits_kd_resizes_teacher_and_combines_terms():
    teacher, student = nets()
    batch = make_batch()
    s = student(batch["image"])                                # (4, K, 8, 6); teacher gives (4, K, 16, 12)
    kd = LogitsKD(teacher, kind="mse", alpha=0.25)
    out = kd.loss(s, batch)
    with torch.no_grad():
        t = resize_heatmaps(teacher.eval()(batch["image"]), s)
    torch.testing.assert_close(out["kd"], joints_mse(s, t))
    torch.testing.assert_close(out["loss"], fpd_loss(s, t, batch["target"], batch["target_weight"], 0.25))
    kl = LogitsKD(teacher, kind="kl", alpha=0.1, temperature=0.5).loss(s, batch)
    torch.testing.assert_close(kl["kd"], spatial_kl_loss(s, t, 0.5))


def test_logits_kd_teacher_input_size():
    teacher, student = nets()
    batch = make_batch()
    kd = LogitsKD(teacher, teacher_input_size=(48, 64))
    seen = []
    h = teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    out = kd.loss(student(batch["image"]), batch)
    h.remove()
    assert seen == [(4, 3, 64, 48)] and out["kd"].ndim == 0


def test_logits_kd_step_counter_and_linear_decay():
    teacher, student = nets()
    batch = make_batch()
    kd = LogitsKD(teacher, alpha=0.8, schedule="linear_decay", total_steps=4)
    for step in range(4):
        out = kd.loss(student(batch["image"]), batch)
        a = 0.8 * (1 - step / 4)
        torch.testing.assert_close(out["loss"], (1 - a) * out["gt"] + a * out["kd"])
    assert kd.step == 4
    with torch.no_grad():                                      # evaluation does not advance the schedule
        kd.loss(student(batch["image"]), batch)
    assert kd.step == 4 and kd.kd_weight() == 0.0
    kd.set_step(1)
    assert kd.kd_weight() == 0.75
    with pytest.raises(ValueError, match="total_steps"):
        LogitsKD(teacher, schedule="linear_decay")


def test_logits_kd_cache_runs_teacher_once_per_sample():
    teacher, student = nets()
    batch = make_batch()
    calls = []
    teacher.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    cached, plain = LogitsKD(teacher, cache=True), LogitsKD(teacher)
    s = student(batch["image"]).detach()
    first = cached.loss(s, batch)
    again = cached.loss(s, batch)
    assert calls == [4]
    torch.testing.assert_close(first["kd"], plain.loss(s, batch)["kd"])
    torch.testing.assert_close(again["kd"], first["kd"])
    with pytest.raises(KeyError, match="index"):
        cached.loss(s, {k: v for k, v in batch.items() if k != "meta"})


def test_logits_kd_rejects_mismatched_outputs():
    teacher, student = nets()
    batch = make_batch()
    kd = LogitsKD(teacher, teacher_output=lambda out: out[:, :3])
    with pytest.raises(ValueError, match="joint count"):
        kd.loss(student(batch["image"]), batch)
    with pytest.raises(TypeError, match="heatmaps"):
        LogitsKD(teacher).loss([student(batch["image"])], batch)
    with pytest.raises(TypeError, match=r"loss\(outputs, batch\)"):          # the loss_fn call of old
        LogitsKD(teacher, student)(student(batch["image"]), batch)
    with pytest.raises(RuntimeError, match="without a student"):
        LogitsKD(teacher)(batch["image"])


PAIRS5 = ((1, 2), (3, 4))   # left/right pairs of the tests' 5 joints


def _official_flip_test(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The flip test written out: mirrored input, mirror the maps back, swap pairs, shift a cell, average."""
    with torch.no_grad():
        out, back = teacher(x), teacher(x.flip(-1)).flip(-1)
    back = back[:, [0, 2, 1, 4, 3]]
    back = torch.cat([back[..., :1], back[..., :-1]], dim=-1)
    return (out + back) / 2


def test_logits_kd_flip_test_target_is_the_teachers_flip_test():
    teacher, student = nets()
    teacher.eval()
    batch = make_batch()
    s = student(batch["image"]).detach()
    kd = LogitsKD(teacher, alpha=1.0, teacher_flip_test=True, flip_pairs=PAIRS5)
    target = _official_flip_test(teacher, batch["image"])
    torch.testing.assert_close(kd.teacher_heatmaps(batch, s), resize_heatmaps(target, s))
    torch.testing.assert_close(kd.loss(s, batch)["kd"], joints_mse(s, resize_heatmaps(target, s)))
    plain = LogitsKD(teacher, alpha=1.0).teacher_heatmaps(batch, s)
    assert (plain - kd.teacher_heatmaps(batch, s)).abs().max() > 1e-3   # the mirrored pass changes the target


def test_feature_kd_flip_test_keeps_the_unmirrored_features():
    teacher, student = nets()
    batch = make_batch()
    with FeatureKD(teacher, student, {"stem.2": "body"}, alpha_logits=0.5, input_size=(24, 32),
                   teacher_flip_test=True, flip_pairs=PAIRS5) as kd:
        out = kd.loss(kd(batch["image"]), batch)
        _, (t_feat,) = kd.features()
        with torch.no_grad():
            torch.testing.assert_close(t_feat, teacher.body(teacher.stem(batch["image"])))
        s = student(batch["image"])
        target = resize_heatmaps(_official_flip_test(teacher, batch["image"]), s)
        torch.testing.assert_close(out["kd"], joints_mse(s, target))
    with pytest.raises(ValueError, match="alpha_logits=0"):
        FeatureKD(teacher, student, {"stem.2": "body"}, alpha_logits=0.0, input_size=(24, 32), teacher_flip_test=True)


# --------------------------------------------------------------------------- hooks
def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_feature_hooks_capture_submodule_outputs_and_remove():
    _, model = nets()
    model.eval()
    x = torch.randn(2, 3, 32, 24)
    with FeatureHooks(model, ["stem", "body.0", "head"]) as hooks:
        y = model(x)
        stem = model.stem(x)
        torch.testing.assert_close(hooks["stem"], stem)
        torch.testing.assert_close(hooks["body.0"], model.body[0](stem))
        torch.testing.assert_close(hooks["head"], y)
        model(x[:1])                                           # the dict follows the latest forward
        assert hooks["stem"].shape[0] == 1
    assert _no_hooks(model) and hooks.features == {}


def test_feature_hooks_wrong_name_lists_close_names():
    _, model = nets()
    with pytest.raises(KeyError) as e:
        FeatureHooks(model, ["body.O"])
    assert "layers under 'body': ['body.0', 'body.1', 'body.2']" in str(e.value)
    with pytest.raises(KeyError) as e:
        FeatureHooks(model, ["stm.0"])
    assert "top-level layers: ['stem', 'body', 'head']" in str(e.value) and "'stem.0'" in str(e.value)
    assert _no_hooks(model)


def test_feature_hooks_detect_inplace_overwrite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
    x = torch.randn(1, 3, 8, 8)
    with FeatureHooks(model, ["0"]) as hooks:
        model(x)
        with pytest.raises(RuntimeError, match="in place"):
            hooks["0"]
    with FeatureHooks(model, ["0"], clone=True) as hooks:
        model(x)
        torch.testing.assert_close(hooks["0"], model[0](x))
        assert (hooks["0"] < 0).any()


def test_list_feature_shapes_keeps_model_state():
    teacher, _ = nets()
    teacher.train()
    stats = teacher.stem[1].running_mean.clone()
    shapes = list_feature_shapes(teacher, (3, 32, 24), max_depth=1)
    assert shapes == [("stem", (1, 12, 16, 12)), ("body", (1, 12, 16, 12)), ("head", (1, K, 16, 12))]
    assert dict(list_feature_shapes(teacher, (2, 3, 32, 24)))["body.1"] == (2, 12, 16, 12)
    assert teacher.training and teacher.stem[1].training and _no_hooks(teacher)
    torch.testing.assert_close(teacher.stem[1].running_mean, stats)


# --------------------------------------------------------------------------- feature KD
def test_feature_adapter_matches_teacher_shape():
    adapter = FeatureAdapter(6, 12)
    t = torch.randn(2, 12, 16, 12)
    out = adapter(torch.randn(2, 6, 8, 6), t)
    assert out.shape == t.shape
    assert adapter(torch.randn(2, 6, 8, 6), (12, 16)).shape == (2, 12, 16, 12)


def test_feature_loss_channel_normalisation():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6, 8, 6), torch.randn(4, 12, 16, 12) * 3 + 1
    adapter = FeatureAdapter(6, 12)
    base = feature_kd_loss(s, t, adapter)
    torch.testing.assert_close(feature_kd_loss(s, 40.0 * t, adapter), base)
    raw = feature_kd_loss(s, t, adapter, normalize="none")
    assert not torch.isclose(feature_kd_loss(s, 40.0 * t, adapter, normalize="none"), raw)
    nn.init.zeros_(adapter.proj.weight)
    nn.init.zeros_(adapter.proj.bias)
    torch.testing.assert_close(feature_kd_loss(s, t, adapter), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_feature_loss_channel_wise_distillation():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6, 8, 6), torch.randn(4, 12, 16, 12) * 3 + 1
    adapter = FeatureAdapter(6, 12)
    got = feature_kd_loss(s, t, adapter, loss="cwd", temperature=0.5)
    # CWD written out: every (sample, channel) map a softmax over its pixels, KL(T || S) times T^2
    a = adapter(s, t).flatten(2) / 0.5
    b = standardize_channels(t).flatten(2) / 0.5
    kl = (b.softmax(-1) * (b.log_softmax(-1) - a.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(got, kl.mean() * 0.25)
    torch.testing.assert_close(feature_kd_loss(s, 40.0 * t, adapter, loss="cwd", temperature=0.5), got)
    # only where a channel fires counts: a constant added to a whole student map changes nothing
    shifted = FeatureAdapter(6, 12)
    shifted.load_state_dict(adapter.state_dict())
    with torch.no_grad():
        shifted.proj.bias += torch.randn(12)
    torch.testing.assert_close(feature_kd_loss(s, t, shifted, loss="cwd", temperature=0.5), got)
    assert not torch.isclose(feature_kd_loss(s, t, shifted), feature_kd_loss(s, t, adapter))
    with pytest.raises(ValueError, match="loss"):
        feature_kd_loss(s, t, adapter, loss="kl")


def test_feature_kd_training_reduces_feature_loss():
    teacher, student = nets()
    kd = FeatureKD(teacher, student, {"stem": "stem"}, beta=1.0, input_size=(24, 32))
    assert list(kd.adapters) == ["stem"] and kd.adapters["stem"].proj.weight.shape == (12, 6, 1, 1)
    opt = torch.optim.Adam(kd.parameters(), lr=3e-2)        # the student's and the adapter's
    adapter0 = kd.adapters["stem"].proj.weight.detach().clone()
    student0 = student.stem[0].weight.detach().clone()
    batch = make_batch(n=8)
    student.train()
    feats = []
    for _ in range(20):
        out = kd.loss(kd(batch["image"]), batch)
        torch.testing.assert_close(out["loss"], out["gt"] + out["feat"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        feats.append(out["feat"].item())
    assert feats[-1] < 0.75 * feats[0]
    assert not torch.equal(kd.adapters["stem"].proj.weight, adapter0)
    assert not torch.equal(student.stem[0].weight, student0)
    assert all(p.grad is None for p in teacher.parameters())
    kd.remove()
    assert _no_hooks(teacher) and _no_hooks(student)


class TwoBranches(nn.Module):
    """An HRNet-like stage: returns [x, x at half resolution with 2x the channels]."""

    def __init__(self, width: int):
        super().__init__()
        self.low = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)

    def forward(self, x):
        return [x, self.low(x)]


def test_feature_kd_branches_first_or_concatenated():
    teacher, student = nets()
    teacher.body.append(TwoBranches(12))
    teacher.head = nn.Sequential()
    teacher.forward = lambda x: teacher.body(teacher.stem(x))[0]   # the head reads branch 0
    batch = make_batch()
    with FeatureKD(teacher, student, {"body": "body"}, input_size=(24, 32)) as kd:
        assert kd.adapters["body"].proj.out_channels == 12
        kd.loss(kd(batch["image"]), batch)
        branches = kd.teacher_hooks["body"]
        assert [tuple(b.shape) for b in branches] == [(4, 12, 16, 12), (4, 24, 8, 6)]
        torch.testing.assert_close(kd.features()[1][0], branches[0])
    with FeatureKD(teacher, student, {"body": "body"}, input_size=(24, 32), branches="concat") as kd:
        assert kd.adapters["body"].proj.out_channels == 12 + 24
        out = kd.loss(kd(batch["image"]), batch)
        b0, b1 = kd.teacher_hooks["body"]
        torch.testing.assert_close(kd.features()[1][0], torch.cat([b0, resize_heatmaps(b1, (12, 16))], 1))
        assert torch.isfinite(out["feat"])
    with pytest.raises(ValueError, match="branches"):
        FeatureKD(teacher, student, {"body": "body"}, input_size=(24, 32), branches="all")


def test_feature_kd_logits_term_and_errors():
    teacher, student = nets()
    batch = make_batch()
    with FeatureKD(teacher, student, {"stem.2": "body"}, beta=0.1, alpha_logits=0.5, input_size=(24, 32)) as kd:
        with pytest.raises(RuntimeError, match="forward"):
            kd.loss(torch.zeros(4, K, 8, 6), batch)
        out = kd.loss(kd(batch["image"]), batch)
        torch.testing.assert_close(out["loss"], 0.5 * out["gt"] + 0.5 * out["kd"] + 0.1 * out["feat"])
        with pytest.raises(RuntimeError, match="different forwards"):
            kd.loss(kd(batch["image"])[:3], {k: v[:3] for k, v in batch.items() if k != "meta"})
    with pytest.raises(KeyError, match="stem"):
        FeatureKD(teacher, student, {"stem.9": "body"}, input_size=(24, 32))
    with pytest.raises(ValueError, match="feature_loss"):
        FeatureKD(teacher, student, {"stem.2": "body"}, input_size=(24, 32), feature_loss="kl")
    with pytest.raises(ValueError, match="feature_temperature"):
        FeatureKD(teacher, student, {"stem.2": "body"}, input_size=(24, 32), feature_loss="cwd",
                  feature_temperature=0)


def test_feature_kd_channel_wise_term():
    teacher, student = nets()
    batch = make_batch()
    with FeatureKD(teacher, student, {"stem.2": "body"}, input_size=(24, 32), feature_loss="cwd",
                   feature_temperature=2.0) as kd:
        out = kd.loss(kd(batch["image"]), batch)
        s, t = kd.features()
        torch.testing.assert_close(out["feat"], feature_kd_loss(s, t, [kd.adapters["stem/2"]], loss="cwd",
                                                                temperature=2.0))
        torch.testing.assert_close(out["loss"], out["gt"] + out["feat"])


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 8):
        b = make_batch(n)
        self.samples = [{"image": b["image"][i], "target": b["target"][i], "target_weight": b["target_weight"][i],
                         "meta": {"index": i}} for i in range(n)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _fit(model, tmp_path, run_name, **kw):
    loader = torch.utils.data.DataLoader(DictDataset(), batch_size=4, shuffle=True)
    kw = {"max_steps": 4, "log_every": 1, "progress": False, "device": "cpu", "threads": 1, **kw}
    return fit(model, loader, out_dir=tmp_path, run_name=run_name, **kw)


def _hinted(seed: int = 0, **kw) -> FeatureKD:
    teacher, student = nets(seed)
    kw = {"beta": 0.5, "alpha_logits": 0.5, "input_size": (24, 32), **kw}
    return FeatureKD(teacher, student, {"body": "stem"}, **kw)


def test_distillers_train_with_fit_like_any_model(tmp_path):
    teacher, student = nets()
    kd = LogitsKD(teacher, student, alpha=0.5, schedule="linear_decay", total_steps=4)
    hist = _fit(kd, tmp_path, "logits")
    assert kd.step == 4 and {"loss", "gt", "kd"} <= set(hist.losses)

    fkd = _hinted()
    before = fkd.adapters["body"].proj.weight.detach().clone()
    hist = _fit(fkd, tmp_path, "feat", max_steps=2)
    assert {"loss", "gt", "feat", "kd"} <= set(hist.losses)
    assert not torch.equal(fkd.adapters["body"].proj.weight, before)
    saved = torch.load(tmp_path / "feat" / "latest.pt", weights_only=True)["model"]
    torch.testing.assert_close(saved["losses.feat.adapters.body.proj.weight"], fkd.adapters["body"].proj.weight,
                               rtol=0, atol=0)
    assert int(saved["step"]) == 2
    fkd.remove()


def test_teacher_is_neither_saved_nor_optimised_but_moves_with_the_distiller(tmp_path):
    kd = _hinted()
    teacher = kd.teacher.model
    t_ids = {id(p) for p in teacher.parameters()}
    t_ptrs = {t.data_ptr() for t in teacher.state_dict().values()}
    assert not t_ids & {id(p) for p in kd.parameters()}
    assert not t_ptrs & {t.data_ptr() for t in kd.state_dict().values()}
    assert set(kd.state_dict()) == ({f"student.{k}" for k in kd.student.state_dict()} | {"step"}
                                    | {f"losses.feat.adapters.body.{k}" for k in kd.adapters["body"].state_dict()})
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _fit(kd, tmp_path, "r", max_steps=2)
    ck = torch.load(tmp_path / "r" / "latest.pt", weights_only=True)
    n_trained = len(list(kd.parameters()))
    assert sum(len(g["params"]) for g in ck["optimizer"]["param_groups"]) == n_trained == len(ck["optimizer"]["state"])
    assert n_trained == len(list(kd.student.parameters())) + len(list(kd.adapters.parameters()))
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    kd.double()
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    kd.remove()


def test_grad_clip_covers_the_adapters(tmp_path):
    kd = _hinted()
    params = list(kd.parameters())
    before = [p.detach().clone() for p in params]
    clip = 1e-3
    _fit(kd, tmp_path, "clip", max_steps=1, grad_clip=clip, scheduler=None,
         optimizer=torch.optim.SGD(params, lr=1.0))        # one SGD step of lr 1: the update is the clipped gradient
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)))
    adapter_step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)
                                  if any(p is q for q in kd.adapters.parameters())))
    assert 0.5 * clip < step <= clip * (1 + 1e-5) and adapter_step > 0
    kd.remove()


class _StopAt(Exception):
    pass


def test_resume_restores_student_adapters_and_schedule_step(tmp_path):
    """Interrupted after 2 of 4 steps, then resumed by a freshly built distiller: the same weights."""
    kw = {"schedule": "linear_decay", "total_steps": 4}
    whole = _hinted(**kw)
    _fit(whole, tmp_path / "whole", "r")

    first = _hinted(**kw)
    calls = iter(range(1, 100))

    def stop_at_3(outputs, batch):
        if next(calls) == 3:
            raise _StopAt
        return first.loss(outputs, batch)

    with pytest.raises(_StopAt):
        _fit(first, tmp_path / "cut", "r", loss_fn=stop_at_3, save_every_steps=1)
    first.remove()
    resumed = _hinted(**kw)                                   # fresh adapters and step 0 until fit loads them
    assert int(resumed.step) == 0
    _fit(resumed, tmp_path / "cut", "r")
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and int(b["step"]) == 4
    for k in a:
        assert torch.equal(a[k], b[k]), k
    whole.remove()
    resumed.remove()


def test_old_student_only_checkpoints_are_refused_by_name(tmp_path):
    """A run saved the old way (fit on the bare student, the distiller as its loss_fn) is refused,
    naming the file and what to do; nothing is rewritten."""
    old = _hinted()
    opt = torch.optim.Adam(old.parameters(), lr=1e-3)      # the old recipe: student + adapters, student saved
    _fit(old.student, tmp_path, "r", loss_fn=old.loss, optimizer=opt, max_steps=2)
    latest = tmp_path / "r" / "latest.pt"
    before = latest.read_bytes()
    old.remove()

    kd = _hinted()
    with pytest.raises(RuntimeError, match=r"checkpoint .*latest\.pt does not fit FeatureKD.*delete that run folder"):
        _fit(kd, tmp_path, "r", max_steps=2)
    assert latest.read_bytes() == before
    kd.remove()


