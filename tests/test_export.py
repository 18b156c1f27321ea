"""Export for izer against the upstream golden files: lean checkpoint, quantizer, network
YAML, sample input / expected output, resource report, izer command."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from posekd_lib.mcu import ai8x, export, max78000


@pytest.fixture
def g(golden):
    return golden / "ai8x"


@pytest.fixture(autouse=True)
def _float_device():
    ai8x.set_device(85, False, False)
    yield
    ai8x.set_device(85, False, False)


def load(g, name):
    return torch.load(g / name, map_location="cpu", weights_only=True)


def qat_model(g):
    m = ai8x.ai85poselike()
    ai8x.initiate_qat(m, load(g, "qat_io.pt")["qat_policy"])
    m.load_state_dict(load(g, "qat_state_dict.pt"))
    return m.eval()


def izer_log(g) -> dict:
    """izer's figures for the golden net, read from the README's log excerpt."""
    return export.parse_izer_log((g / "README.md").read_text())


def test_lean_checkpoint_roundtrip_and_refusals(g, tmp_path):
    ref = load(g, "qat_checkpoint_lean.pth.tar")
    ckpt = export.lean_checkpoint(qat_model(g), ref["epoch"], ref["arch"], ref["extras"])
    assert list(ckpt) == ["epoch", "state_dict", "arch", "extras"]
    path = export.save_checkpoint(ckpt, tmp_path / "qat.pth.tar")
    back = torch.load(path, weights_only=True)
    assert back["epoch"] == ref["epoch"] and back["arch"] == ref["arch"] and back["extras"] == ref["extras"]
    assert list(back["state_dict"]) == list(ref["state_dict"])
    assert all(torch.equal(back["state_dict"][k], v) for k, v in ref["state_dict"].items())
    with pytest.raises(ValueError, match="bn"):
        export.lean_checkpoint(ai8x.ai85poselike(), 0, "ai85poselike")
    with pytest.raises(TypeError, match="extras.optimizer"):
        export.lean_checkpoint(qat_model(g), 0, "x", {"optimizer": torch.optim.Adam})


def test_quantizer_equals_quantize_py(g):
    src = load(g, "qat_checkpoint_lean.pth.tar")
    before = {k: v.clone() for k, v in src["state_dict"].items()}
    q = export.quantize_checkpoint(src)
    ref = load(g, "quantized_checkpoint.pth.tar")
    assert list(q) == list(ref)
    assert q["epoch"] == ref["epoch"] and q["arch"] == ref["arch"] and q["extras"] == ref["extras"]
    assert list(q["state_dict"]) == list(ref["state_dict"])
    for k, v in ref["state_dict"].items():
        got = q["state_dict"][k]
        assert got.dtype == v.dtype and torch.equal(got, v), k
        assert torch.equal(torch.signbit(got), torch.signbit(v)), k   # conv4's -0.0 kept
    assert all(torch.equal(src["state_dict"][k], v) for k, v in before.items())


def test_quantizer_rejects_non_ai8x_weights():
    ckpt = {"epoch": 0, "state_dict": {"fc.weight": torch.ones(2, 2)}}
    with pytest.raises(ValueError, match="fc.weight"):
        export.quantize_checkpoint(ckpt)


def test_network_yaml_equals_golden(g, tmp_path):
    text = export.network_yaml(qat_model(g), (3, 64, 64), "ai85poselike", "poselike")
    ours, ref = yaml.safe_load(text), yaml.safe_load((g / "network.yaml").read_text())
    assert (ours["arch"], ours["dataset"]) == (ref["arch"], ref["dataset"])
    assert ours["layers"] == ref["layers"]


def test_sample_input_and_expected_output(g):
    x = load(g, "float_io.pt")["input"][:1]
    sample = export.sample_input(x)
    ref = np.load(g / "sample_input.npy")
    assert sample.dtype == np.int64 and np.array_equal(sample, ref)
    sim = ai8x.ai85poselike(weight_bits=8, quantize_activation=True, device=ai8x.Device(85, True))
    ai8x.fuse_bn_layers(sim)
    sim.load_state_dict(load(g, "quantized_state_dict.pt"))
    out = export.expected_output(sim, sample)
    assert out.dtype == np.int64 and np.array_equal(out, np.load(g / "izer_expected_output.npy"))
    with pytest.raises(ValueError, match="simulate"):
        export.expected_output(qat_model(g), sample)


def test_resource_report_equals_izer(g):
    ref = izer_log(g)
    rep = max78000.resource_report(qat_model(g), (3, 64, 64), device=85)
    assert rep.totals["weight_bytes"] == ref["weight_bytes"]
    assert rep.totals["bias_bytes"] == ref["bias_bytes"]
    assert rep.capacity["weight_bytes"] == ref["weight_capacity"]
    assert rep.capacity["bias_bytes"] == ref["bias_capacity"]
    assert rep.totals["cycles"] == ref["cycles"]
    assert [r["cycles"] for r in rep.layers] == list(ref["layer_cycles"].values())
    assert rep.totals["layers"] == len(ref["layer_cycles"])
    assert rep.fits and "fits MAX78000: yes" in str(rep)
    # 4-bit conv3: 32 kernels of 3x3 pack 2 per slot; the 1x1 conv4: 9 per slot
    slots = {r["layer"].split()[1]: r["kernel_slots"] for r in rep.layers}
    assert slots["conv3"] == 16 and slots["conv4"] == 4 and slots["conv2"] == 32


def test_resource_report_explains_what_does_not_fit():
    class WideHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ai8x.FusedConv2dReLU(3, 32, 3, padding=1)
            self.head = ai8x.Conv2d(32, 17, 1, wide=True)

        def forward(self, x):
            return self.head(self.conv(x))

    rep = max78000.resource_report(WideHead(), (3, 64, 64))
    assert not rep.fits and any("head" in r and "data memory" in r for r in rep.reasons)
    big = nn.Sequential()
    big.add_module("conv", ai8x.Conv2d(512, 512, 3, padding=1))
    rep = max78000.resource_report(big, (512, 4, 4))
    assert not rep.fits and any("weights need" in r for r in rep.reasons)
    assert any("kernel memory" in r for r in rep.reasons)


def test_izer_command_and_offline_run(g, tmp_path, monkeypatch, capsys):
    cmd = export.izer_command("q.pth.tar", "net.yaml", "s.npy", tmp_path, "poselike")
    assert cmd[1] == "ai8xize.py" and "--no-version-check" in cmd
    assert cmd[cmd.index("--device") + 1] == "MAX78000"
    monkeypatch.delenv("AI8X_SYNTHESIS_DIR", raising=False)
    assert export.run_izer("q.pth.tar", "net.yaml", "s.npy", tmp_path, "poselike") is None
    out = capsys.readouterr().out
    assert "ai8xize.py" in out and "make izer" in out


class _Residual(nn.Module):
    """add(direct, shared) with the shared operand produced first, then flatten -> wide Linear."""

    def __init__(self):
        super().__init__()
        self.a = ai8x.FusedConv2dReLU(3, 8, 3, padding=1)
        self.b = ai8x.FusedConv2dReLU(8, 8, 3, padding=1)
        self.add = ai8x.Add()
        self.c = ai8x.FusedMaxPoolConv2dReLU(8, 8, 3, padding=1)
        self.fc = ai8x.Linear(8 * 8 * 8, 10, wide=True)

    def forward(self, x):
        a = self.a(x)
        return self.fc(self.c(self.add(self.b(a), a)).flatten(1))


def test_network_yaml_other_topology():
    """Layout rules izer needs (this net was checked with ai8xize.py: its output equalled
    expected_output): the shared operand gets a pass-through copy placed after its producer,
    operands interleave at +4 bytes in add order, live buffers never overlap."""
    layers = yaml.safe_load(export.network_yaml(_Residual(), (3, 16, 16), "t", "d"))["layers"]
    names = [l["name"] for l in layers]
    assert names == ["a", "res_copy", "b", "c", "fc"]
    copy, b, c, fc = layers[1], layers[2], layers[3], layers[4]
    assert copy["op"] == "passthrough" and copy["write_gap"] == 1 and b["write_gap"] == 1
    assert c["in_sequences"] == ["b", "res_copy"] and c["eltwise"] == "add"
    assert c["pool_first"] is False and c["max_pool"] == 2 and c["pool_stride"] == 2
    assert copy["out_offset"] == b["out_offset"] + 4 and c["in_offset"] == b["out_offset"]
    assert b["in_sequences"] == "a" and b["in_offset"] == layers[0]["out_offset"]
    assert fc["op"] == "linear" and fc["flatten"] is True and fc["output_width"] == 32
    assert layers[0]["out_offset"] != b["out_offset"]       # a is still read by b


def test_network_yaml_refuses_registration_order_unlike_run_order():
    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = ai8x.FusedConv2dReLU(8, 8, 3, padding=1)
            self.first = ai8x.FusedConv2dReLU(3, 8, 3, padding=1)

        def forward(self, x):
            return self.second(self.first(x))

    with pytest.raises(ai8x.Ai8xRuleError, match="state-dict order"):
        export.network_yaml(Swapped(), (3, 8, 8), "t", "d")


def test_streaming_and_chw_input_processors():
    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ai8x.FusedConv2dReLU(3, 16, 3, padding=1, bias=False)
            self.b = ai8x.FusedMaxPoolConv2dReLU(16, 16, 3, padding=1, bias=False)
            self.c = ai8x.FusedMaxPoolConv2dReLU(16, 32, 3, padding=1)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    hwc = yaml.safe_load(export.network_yaml(Stem(), (3, 128, 128), "t", "d"))["layers"]
    assert [l.get("streaming", False) for l in hwc] == [True, True, False]
    chw = yaml.safe_load(export.network_yaml(Stem(), (3, 128, 128), "t", "d", data_format="CHW"))["layers"]
    assert chw[0]["data_format"] == "CHW" and chw[0]["processors"] == 0x0000000100010001
    assert max78000.resource_report(Stem(), (3, 128, 128)).fits
    cmd = export.izer_command("q", Path(__file__), "s", "t", "p")
    assert "--fifo" not in cmd                       # this file has no streaming


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("AI8X_SYNTHESIS_DIR"),
                    reason="set AI8X_SYNTHESIS_DIR to an ai8x-synthesis checkout")
def test_izer_accepts_our_export(g, tmp_path):
    m = qat_model(g)
    q = export.quantize_checkpoint(export.lean_checkpoint(m, 30, "ai85poselike"))
    export.save_checkpoint(q, tmp_path / "q.pth.tar")
    (tmp_path / "net.yaml").write_text(export.network_yaml(m, (3, 64, 64), "ai85poselike", "poselike"))
    np.save(tmp_path / "s.npy", export.sample_input(load(g, "float_io.pt")["input"][:1]))
    r = export.run_izer(tmp_path / "q.pth.tar", tmp_path / "net.yaml", tmp_path / "s.npy",
                        tmp_path / "out", "poselike")
    assert r["returncode"] == 0, r["log"][-2000:]
    assert np.array_equal(r["output"].reshape(17, 16, 16), np.load(g / "izer_expected_output.npy"))
    assert r["cycles"] == max78000.resource_report(m, (3, 64, 64)).totals["cycles"]


def test_max78002_runs_the_add_in_its_own_layer(g):
    """MAX78002 cannot fuse a multi-operand add into a biased convolution (izer refuses it);
    the generator emits a pass-through add layer instead (checked with ai8xize.py: same output)."""
    m = ai8x.ai85poselike(device=ai8x.Device(87))
    ai8x.initiate_qat(m, load(g, "qat_io.pt")["qat_policy"])
    m.load_state_dict(load(g, "qat_state_dict.pt"))
    layers = yaml.safe_load(export.network_yaml(m, (3, 64, 64), "a", "d", device=87))["layers"]
    add = next(l for l in layers if l["name"] == "add")
    conv5 = layers[layers.index(add) + 1]
    assert add["op"] == "passthrough" and add["eltwise"] == "add" and add["in_sequences"] == ["res_copy", "conv4"]
    assert conv5["name"] == "conv5" and "eltwise" not in conv5 and "pool_first" not in conv5
    rep = max78000.resource_report(m, (3, 64, 64), device=87)
    assert rep.fits and rep.capacity["bias_bytes"] == 4 * 2048 and rep.totals["layers"] == 8


def _changed_after_construction(change: str) -> nn.Module:
    """The legal golden-like net, made illegal after construction."""
    m = ai8x.ai85poselike()
    ai8x.check_model(m)
    if change == "stride 2":
        m.conv3.op.stride = (2, 2)
    elif change == "kernel 5x5":
        m.conv3.op = nn.Conv2d(32, 32, 5, padding=2)
    elif change == "groups":
        m.conv3.op = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    return m.eval()


@pytest.mark.parametrize("change", ["stride 2", "kernel 5x5", "groups"])
def test_network_yaml_rechecks_the_model(change):
    with pytest.raises(ai8x.Ai8xRuleError, match=rf"conv3: .*{change}"):
        export.network_yaml(_changed_after_construction(change), (3, 64, 64), "a", "d")


@pytest.mark.parametrize("change", ["stride 2", "kernel 5x5", "groups"])
def test_resource_report_rechecks_the_model(change):
    with pytest.raises(ai8x.Ai8xRuleError, match=rf"conv3: .*{change}"):
        max78000.resource_report(_changed_after_construction(change), (3, 64, 64))


def test_plan_checks_against_the_target_device():
    """A depthwise conv is legal on the MAX78002 it was built for, not in a MAX78000 plan."""
    m = nn.Sequential()
    m.add_module("dw", ai8x.Conv2d(8, 8, 3, padding=1, groups=8, device=ai8x.Device(87)))
    max78000.resource_report(m, (8, 16, 16), device=87)
    with pytest.raises(ai8x.Ai8xRuleError, match="dw: groups=8"):
        max78000.resource_report(m, (8, 16, 16), device=85)
    with pytest.raises(ai8x.Ai8xRuleError, match="dw: groups=8"):
        export.network_yaml(m, (8, 16, 16), "a", "d", device=85)


# --------------------------------------------------------------------------------------------
# izer's own environment: every way izer cannot run says why and what fixes it (no network)

def _fake_checkout(tmp_path, script="print('izer ran')\n", requirements="numpy==1.26.4\ntorch==2.3.1\nPyYAML==6.0.1\n"):
    d = tmp_path / "ai8x-synthesis"
    d.mkdir()
    (d / "ai8xize.py").write_text(script)
    (d / "requirements.txt").write_text(requirements)
    return d


@pytest.fixture
def izer_env(tmp_path, monkeypatch):
    """No izer configured, and a private HOME so no real izer venv is found."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("AI8X_SYNTHESIS_DIR", "AI8X_SYNTHESIS_PYTHON", "AI8X_SYNTHESIS_TORCH"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _run(tmp_path):
    return export.run_izer(tmp_path / "q", tmp_path / "n.yaml", tmp_path / "s.npy", tmp_path / "out", "p")


def test_izer_requirements_keep_numpy_and_swap_torch(tmp_path, izer_env):
    d = _fake_checkout(tmp_path, requirements="# pins\nnumpy==1.26.4  # izer needs 1.x\ntorch==2.3.1\n"
                                               "torchvision==0.18.1\n")
    assert export.izer_requirements(d) == ["numpy==1.26.4", export.IZER_TORCH, "torchvision==0.18.1"]
    assert export.izer_requirements(d, "torch==9.9") [1] == "torch==9.9"
    izer_env.setenv("AI8X_SYNTHESIS_TORCH", "torch==2.14.1")
    assert export.izer_requirements(d)[1] == "torch==2.14.1"
    venv = export.izer_venv_dir(d)
    assert venv.parent == tmp_path / "home" / ".cache" / "posekd" and venv.name.startswith("izer-venv-")
    assert export.izer_venv_dir(d, "torch==2.13.0") != venv          # keyed by what it installs


def test_run_izer_errors_when_the_folder_is_no_checkout(tmp_path, izer_env):
    izer_env.setenv("AI8X_SYNTHESIS_DIR", str(tmp_path / "empty"))
    with pytest.raises(export.IzerUnavailableError) as e:
        _run(tmp_path)
    msg = str(e.value)
    assert "empty" in msg and "no ai8xize.py" in msg and "git clone" in msg and "make izer" in msg


def test_run_izer_errors_when_the_venv_is_not_built(tmp_path, izer_env):
    d = _fake_checkout(tmp_path)
    izer_env.setenv("AI8X_SYNTHESIS_DIR", str(d))
    with pytest.raises(export.IzerUnavailableError) as e:
        _run(tmp_path)
    msg = str(e.value)
    assert "not built" in msg and str(export.izer_venv_dir(d)) in msg and "numpy 1.26.4" in msg
    assert f"AI8X_SYNTHESIS_DIR={d} make izer" in msg


def test_izer_python_refuses_a_missing_or_numpy2_interpreter(tmp_path, izer_env):
    d = _fake_checkout(tmp_path)
    izer_env.setenv("AI8X_SYNTHESIS_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(export.IzerUnavailableError, match=r"nope/python does not exist.*make izer"):
        export.izer_python(d)
    izer_env.setenv("AI8X_SYNTHESIS_PYTHON", sys.executable)             # this venv: numpy 2
    with pytest.raises(export.IzerUnavailableError) as e:
        export.izer_python(d)
    assert f"numpy {np.__version__}" in str(e.value) and "pins numpy 1.26.4" in str(e.value)
    assert "unset AI8X_SYNTHESIS_PYTHON" in str(e.value) and "make izer" in str(e.value)


def test_run_izer_uses_the_built_venv_and_reports_a_broken_one(tmp_path, izer_env):
    """A 'built' venv (its stamp, python linked to this interpreter) is used without being
    named; izer failing to import a module in it raises, saying to rebuild it."""
    d = _fake_checkout(tmp_path, script="import sys; print('izer ran with', sys.executable)\n",
                       requirements="PyYAML==6.0.1\n")
    izer_env.setenv("AI8X_SYNTHESIS_DIR", str(d))
    venv = export.izer_venv_dir(d)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".posekd-izer-installed").write_text("PyYAML==6.0.1\n")
    assert export.izer_python() == str(venv / "bin" / "python")
    r = _run(tmp_path)
    assert r["returncode"] == 0 and "izer ran with" in r["log"]
    (d / "ai8xize.py").write_text("import izer_module_that_is_not_installed\n")
    with pytest.raises(export.IzerUnavailableError) as e:
        _run(tmp_path)
    msg = str(e.value)
    assert "ModuleNotFoundError" in msg and "make izer FORCE=1" in msg and str(venv) in msg


def test_build_izer_venv_failure_says_what_to_do(tmp_path, izer_env, capsys):
    d = _fake_checkout(tmp_path)
    with pytest.raises(export.IzerUnavailableError) as e:
        export.build_izer_venv(d, python=str(tmp_path / "no-such-python"))
    msg = str(e.value)
    assert "create the venv" in msg and "AI8X_SYNTHESIS_TORCH" in msg and "make izer" in msg
    with pytest.raises(export.IzerUnavailableError, match="AI8X_SYNTHESIS_DIR is not set"):
        export.build_izer_venv()


def test_build_izer_venv_script_exits_2_with_the_reason(tmp_path, izer_env):
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("AI8X_SYNTHESIS")}
    env["HOME"] = str(tmp_path / "home")
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "build_izer_venv.py"),
                        "--synthesis-dir", str(tmp_path / "empty")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "no ai8xize.py" in r.stderr
