import dataclasses
import importlib.util
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from posekd_lib.distill.losses import joints_mse
from posekd_lib.models.students import PoseNet
from posekd_lib.train import (History, NonFiniteLossError, TrainingDivergedError, atomic_save, epoch_batches, fit,
                              load_checkpoint, rng_state, seed_everything, set_rng_state)

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "scripts" / "train_ddp_smoke.py"
_spec = importlib.util.spec_from_file_location("train_ddp_smoke", SMOKE)
smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke)


class Interrupted(Exception):
    pass


def mse(outputs, batch):
    return joints_mse(outputs, batch["target"], batch["target_weight"])


def interrupt_at(call: int, loss=None):
    calls = itertools.count(1)

    def loss_fn(outputs, batch):
        if next(calls) == call:
            raise Interrupted
        return (loss or mse)(outputs, batch)

    return loss_fn


def run(out_dir, epochs=2, **kw):
    torch.manual_seed(0)
    model = smoke.tiny_posenet()
    loader = DataLoader(smoke.BlobPoseDataset(n=16, noise=0.1), batch_size=4, shuffle=True)
    kw = {"loss_fn": mse, "lr": 1e-2, "log_every": 1, "progress": False, "threads": 1, **kw}
    history = fit(model, loader, epochs=epochs, out_dir=out_dir, run_name="r", **kw)
    return model, history


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_fit_lowers_the_loss_and_writes_the_run_folder(tmp_path):
    model, hist = run(tmp_path, epochs=3)
    losses = hist.losses["loss"]
    assert hist.step == list(range(1, 13)) and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.5 * losses[0]
    assert hist.lr[-1] == pytest.approx(0.0, abs=1e-12)  # cosine decay to 0 at the last step

    run_dir = tmp_path / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.json", "latest.pt"]
    assert History.load(run_dir / "history.json") == hist
    fresh = smoke.tiny_posenet()
    extras = load_checkpoint(run_dir / "latest.pt", fresh)
    assert (extras["step"], extras["epoch"], extras["batch_in_epoch"]) == (12, 3, 0)
    assert_same_state(fresh, model)
    with pytest.raises(RuntimeError, match="latest.pt does not fit"):
        load_checkpoint(run_dir / "latest.pt", smoke.tiny_posenet(num_joints=5))


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    reference, ref_hist = run(tmp_path / "a", save_every_steps=3)

    with pytest.raises(Interrupted):
        run(tmp_path / "b", save_every_steps=3, loss_fn=interrupt_at(7))
    saved = load_checkpoint(tmp_path / "b" / "r" / "latest.pt")
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (6, 1, 2)

    resumed, hist = run(tmp_path / "b", save_every_steps=3)
    assert_same_state(resumed, reference)
    assert untimed(hist) == untimed(ref_hist)

    again, hist_again = run(tmp_path / "a", save_every_steps=3, loss_fn=interrupt_at(1))
    assert hist_again == ref_hist
    assert_same_state(again, reference)


def test_a_run_folder_of_another_checkpoint_format_is_refused_not_upgraded(tmp_path):
    with pytest.raises(Interrupted):
        run(tmp_path / "b", save_every_steps=3, loss_fn=interrupt_at(7))
    latest = tmp_path / "b" / "r" / "latest.pt"
    ck = torch.load(latest, weights_only=True)
    assert ck["format"] == 1
    for old in ({**ck, "format": 0}, {k: v for k, v in ck.items() if k not in ("format", "running")}):
        torch.save(old, latest)
        with pytest.raises(ValueError, match=re.escape(str(latest)) + r": a run folder this posekd cannot resume"):
            run(tmp_path / "b", save_every_steps=3)
    torch.save({k: v for k, v in ck.items() if k != "format"}, latest)    # written before the field: format 1
    run(tmp_path / "b", save_every_steps=3)


def untimed(history):
    return dataclasses.replace(history, train_time_s=0.0)


def test_a_resumed_run_counts_the_training_time_before_the_interruption(tmp_path):
    def slow(outputs, batch):
        time.sleep(0.05)
        return mse(outputs, batch)

    with pytest.raises(Interrupted):
        run(tmp_path, save_every_steps=3, loss_fn=interrupt_at(7, slow))
    before = load_checkpoint(tmp_path / "r" / "latest.pt")["history"]["train_time_s"]
    assert before >= 0.3                                    # 6 steps of >= 0.05 s were saved
    _, hist = run(tmp_path, save_every_steps=3)
    assert hist.train_time_s >= before
    assert History.load(tmp_path / "r" / "history.json").train_time_s == hist.train_time_s


def test_channels_last_trains_the_same_run_in_nhwc(tmp_path):
    reference, ref_hist = run(tmp_path / "a")
    nhwc, hist = run(tmp_path / "b", channels_last=True)
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(hist.losses["loss"], ref_hist.losses["loss"], rtol=1e-3)
    for (k, a), b in zip(reference.state_dict().items(), nhwc.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5, msg=k)
    resumed, hist_again = run(tmp_path / "b", channels_last=True)     # a finished NHWC run reloads
    assert hist_again == hist


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    calls = itertools.count(1)

    def loss_fn(outputs, batch):
        base = mse(outputs, batch)
        bad = base * float("nan") if next(calls) == 3 else base
        return {"loss": bad, "mse": base}

    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 0, batch 2\).*'loss': nan.*'mse': 0\.\d+"):
        run(tmp_path, save_every_steps=2, loss_fn=loss_fn)
    run_dir = tmp_path / "r"
    assert sorted(p.name for p in run_dir.iterdir()) == ["history.json", "latest.pt"]
    model = smoke.tiny_posenet()
    assert load_checkpoint(run_dir / "latest.pt", model)["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _all_finite(path) -> list[str]:
    """Names of the non-finite tensors of a checkpoint (model and optimizer state)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    tensors = list(ck["model"].items())
    for i, st in ck.get("optimizer", {}).get("state", {}).items():
        tensors += [(f"optimizer {i} {k}", v) for k, v in st.items() if torch.is_tensor(v)]
    return [k for k, v in tensors if v.is_floating_point() and not torch.isfinite(v).all()]


def test_non_finite_gradients_at_a_save_step_are_never_saved(tmp_path):
    """Finite loss, NaN gradients (sqrt'(0) x 0) at step 4, a save step: the NaN update used to be
    saved (and the next step's error called that file the last good checkpoint)."""
    calls = itertools.count(1)

    def loss_fn(outputs, batch):
        base = mse(outputs, batch)
        if next(calls) == 4:
            return base + (outputs.sum() * 0).sqrt()  # value: base (finite); gradient: inf * 0 = nan
        return base

    with pytest.raises(TrainingDivergedError) as err:
        run(tmp_path, save_every_steps=2, loss_fn=loss_fn)
    msg = str(err.value)
    assert re.search(r"^r: non-finite gradients at step 4 \(epoch 0, batch 3\): in .*, although the loss was finite", msg)
    assert re.search(r"the batch holds samples \[\d+, \d+, \d+, \d+\]", msg)
    latest = tmp_path / "r" / "latest.pt"
    assert f"weights were not updated and the last good checkpoint is {latest}" in msg
    assert load_checkpoint(latest)["step"] == 2 and _all_finite(latest) == []


def test_exploding_learning_rate_stops_with_a_clear_error(tmp_path):
    """lr=1e6 moved every weight by ~1e6 at step 1 and saved it as a checkpoint like any other."""
    with pytest.raises(TrainingDivergedError) as err:
        run(tmp_path, lr=1e6, save_every_steps=1)
    msg = str(err.value)
    assert re.search(r"^r: the weights exploded at step 1 \(epoch 0, batch 0\): their norm grew from [\d.]+ to "
                     r"[\d.e+]+, over 1000x its start; lower the learning rate \(lr 1e\+06\)", msg), msg
    assert msg.endswith("the update was not saved (the model in memory holds it) and no checkpoint of this run was saved")
    assert not (tmp_path / "r" / "latest.pt").exists()

    _, hist = run(tmp_path / "ok", lr=1e-2, save_every_steps=1)  # a sane rate is not stopped
    assert hist.step[-1] == 8


def test_an_exploding_loss_stops_before_the_update(tmp_path):
    calls = itertools.count(1)

    def loss_fn(outputs, batch):
        return mse(outputs, batch) * (1e6 if next(calls) == 12 else 1.0)

    with pytest.raises(TrainingDivergedError, match=r"the loss exploded at step 12 \(epoch 2, batch 3\): [\d.e+]+, "
                                                    r"over 10000x the largest of the first 10 steps"):
        run(tmp_path, epochs=3, save_every_steps=1, loss_fn=loss_fn)
    assert load_checkpoint(tmp_path / "r" / "latest.pt")["step"] == 11


def test_non_finite_batchnorm_statistics_stop_the_run_at_the_step_they_appear(tmp_path):
    """Running statistics follow the activations: an overflowing forward pass makes them infinite
    while loss and weights may still be finite; the run stops at that step with a learning-rate hint."""
    torch.manual_seed(0)
    model = smoke.tiny_posenet()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    calls = itertools.count(1)

    def poison(module, inputs, output):
        if next(calls) == 3:
            module.running_var.data.fill_(float("inf"))

    bn.register_forward_hook(poison)
    loader = DataLoader(smoke.BlobPoseDataset(n=16, noise=0.1), batch_size=4, shuffle=True)
    with pytest.raises(TrainingDivergedError, match=r"buffers non-finite at step 3 .*running_var.*lower the learning"):
        fit(model, loader, loss_fn=mse, max_steps=8, lr=1e-2, out_dir=tmp_path, run_name="r", progress=False,
            threads=1, save_every_steps=1)
    assert load_checkpoint(tmp_path / "r" / "latest.pt")["step"] == 2


def test_a_checkpoint_with_non_finite_state_is_refused(tmp_path, monkeypatch):
    """Whatever slipped past the step checks, save_latest itself refuses non-finite optimizer state."""
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        if self.state and next(iter(self.state.values()))["step"] == 2:
            next(iter(self.state.values()))["exp_avg_sq"].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainingDivergedError, match=r"not saving step 2: non-finite values in state\[0\]\.exp_avg_sq"):
        run(tmp_path, save_every_steps=2)
    assert not (tmp_path / "r" / "latest.pt").exists()


def test_integer_parameters_pass_the_divergence_checks(tmp_path):
    """ai8x models hand the optimizer integer parameters (bit widths, shifts): they are not normed."""
    torch.manual_seed(0)
    model = smoke.tiny_posenet()
    model.register_parameter("shift", torch.nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))
    loader = DataLoader(smoke.BlobPoseDataset(n=8), batch_size=4)
    hist = fit(model, loader, loss_fn=mse, epochs=1, out_dir=tmp_path, run_name="r", log_every=1, progress=False,
               threads=1)
    assert hist.step == [1, 2]


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    atomic_save({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    assert os.listdir(tmp_path) == ["latest.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_evaluation_per_epoch_and_best_checkpoint(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    scores = iter([0.2, 0.6, 0.4])
    modes = []

    def evaluate_fn(model):
        modes.append(model.training)
        return {"AP": next(scores), "AR": 0.5}

    _, hist = run(tmp_path, epochs=3, evaluate_fn=evaluate_fn)
    assert modes == [False] * 3
    assert [(e["epoch"], e["step"], e["AP"]) for e in hist.evals] == [(1, 4, 0.2), (2, 8, 0.6), (3, 12, 0.4)]
    best = load_checkpoint(tmp_path / "r" / "best.pt", smoke.tiny_posenet())
    assert best["step"] == 8 and best["metrics"]["AP"] == 0.6 == hist.best("AP")["AP"]
    assert len(hist.plot().axes) == 2

    with pytest.raises(KeyError, match="no 'AP'.*'AR'"):
        run(tmp_path / "x", evaluate_fn=lambda m: {"AR": 0.1})


def test_eval_every_steps_replaces_the_per_epoch_evaluation(tmp_path):
    """A learning curve: every 3 steps and at the end, not at the epochs' ends (4 steps each)."""
    steps = []

    def evaluate_fn(model):
        steps.append(None)
        return {"AP": 0.1 * len(steps)}

    _, hist = run(tmp_path, epochs=3, evaluate_fn=evaluate_fn, eval_every_steps=3)
    assert [e["step"] for e in hist.evals] == [3, 6, 9, 12]


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(3)
    atomic_save({"rng": rng_state()}, tmp_path / "s.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_epoch_batches_depend_on_seed_and_epoch_only():
    loader = DataLoader(range(10), batch_size=3, shuffle=True)
    e0 = epoch_batches(loader, 0, seed=1)
    torch.rand(5)
    assert epoch_batches(loader, 0, seed=1) == e0 != epoch_batches(loader, 1, seed=1)
    assert sorted(sum(e0, [])) == list(range(10)) and [len(b) for b in e0] == [3, 3, 3, 1]
    shards = [sum(epoch_batches(loader, 0, seed=1, rank=r, world=2), []) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10))


ADAPTER = "losses.feat.adapters.neck.proj.weight"   # the smoke script's hint adapter (--hint)


@pytest.mark.slow
@pytest.mark.parametrize("hint", [False, True], ids=["student", "hinted"])
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, hint):
    """Both ranks end equal; with --hint that includes the adapters, whose gradients DDP averages too."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SMOKE), "--out", str(tmp_path)] + (["--hint"] if hint else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert (ADAPTER in ranks[0]) == hint and ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    if hint:                                       # the checkpoint holds the adapters and the KD schedule's step
        saved = torch.load(tmp_path / "smoke" / "latest.pt", weights_only=True)["model"]
        assert torch.equal(saved[ADAPTER], ranks[0][ADAPTER]) and int(saved["step"]) == 4
    hist = History.load(tmp_path / "smoke" / "history.json")
    assert hist.step == [2, 4]  # 16 samples / (2 ranks x batch 4) = 2 steps per epoch
    assert hist.losses["loss"][1] < hist.losses["loss"][0]
    assert load_checkpoint(tmp_path / "smoke" / "latest.pt")["step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("hint", [False, True], ids=["student", "hinted"])
def test_sigkill_then_restart_resumes_from_the_last_checkpoint(tmp_path, hint):
    """kill -9 midway, restart: the final weights (with --hint: student, adapters, KD step) equal a clean run's."""
    cmd = [sys.executable, str(SMOKE), "--epochs", "3", "--save-every", "1", "--threads", "1"]
    cmd += ["--hint"] if hint else []
    latest = tmp_path / "killed" / "smoke" / "latest.pt"
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed"), "--sleep", "0.5"])
    try:
        deadline = time.time() + 120
        while not (latest.exists() and load_checkpoint(latest)["step"] >= 3):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = load_checkpoint(latest)["step"]
    assert 3 <= killed_at < 12

    subprocess.run(cmd + ["--out", str(tmp_path / "killed")], check=True, timeout=120)
    assert sorted(p.name for p in latest.parent.iterdir()) == ["history.json", "latest.pt"]
    smoke.main(cmd[2:] + ["--out", str(tmp_path / "clean")])
    a = torch.load(tmp_path / "killed" / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "clean" / "rank0.pt", weights_only=True)
    assert a.keys() == b.keys() and (ADAPTER in a) == hint
    for k in a:
        assert (a[k] - b[k]).abs().max() == 0, k
    hist = History.load(tmp_path / "killed" / "smoke" / "history.json")
    clean = History.load(tmp_path / "clean" / "smoke" / "history.json")
    assert untimed(hist) == untimed(clean)
    assert hist.train_time_s > clean.train_time_s        # the killed part's time (0.5 s sleeps) is kept


def test_bf16_on_a_cpu_without_native_bf16_trains_in_float32(monkeypatch, capsys):
    """bf16 autocast is emulated (many times slower) on a CPU without AVX512-BF16/AMX: fit and the
    students' recipes fall back to float32 there and say so once; with native bf16 nothing changes."""
    from posekd_lib.train import budgets, loop

    b = budgets.budget("quick")
    assert b.amp == "bf16" and isinstance(loop.cpu_has_native_bf16(), bool)   # the probe runs on this machine
    for native, dtype, recorded in ((True, torch.bfloat16, "bf16"), (False, None, None)):
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda native=native: native)
        loop._note_float32_cpu.cache_clear()
        assert loop._resolve_amp("bf16", torch.device("cpu")) is dtype
        assert budgets.student_amp("squeezenet", b) == recorded
        assert loop._resolve_amp(None, torch.device("cpu")) is None and loop._resolve_amp("auto", torch.device("cpu")) is None
        assert ("no native bf16" in capsys.readouterr().out) is (not native)
