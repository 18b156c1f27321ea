"""Export a QAT-trained ai8x model for the MAX78000 code generator (ai8x-synthesis, "izer").

Pipeline: `lean_checkpoint` (weights-only loadable, no BN keys) -> `quantize_checkpoint`
(the integer weights, biases and output shifts izer consumes, as upstream ``quantize.py``
computes them) -> `network_yaml` (izer's network description, generated from the model) ->
`sample_input` / `expected_output` (a known-answer test) -> `izer_command` / `run_izer`.

izer runs in its own virtual environment (`build_izer_venv`, ``make izer``): ai8x-synthesis pins
numpy 1.26.4 and fails under numpy 2 (this project's), so `run_izer` uses that venv's python.
"""
from __future__ import annotations

import copy
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from posekd_lib import ai8x
from posekd_lib.config import shown_path
from posekd_lib.hardware import MAX78000, limits
from posekd_lib.max78000 import plan_hardware_layers

_PLAIN = (int, float, str, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a plain value "
                    f"(int, float, str, bool, None, list, dict) and would need pickle to load")


def lean_checkpoint(model: nn.Module | Mapping[str, torch.Tensor], epoch: int, arch: str,
                    extras: Mapping[str, Any] | None = None) -> dict:
    """``{'epoch', 'state_dict', 'arch', 'extras'}`` with CPU tensors and plain values only, so
    ``torch.load(weights_only=True)`` opens it. Refuses a state dict that still holds batch-norm
    keys (izer would read ``*.bn.weight`` as a layer): fuse first."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    bn = [k for k in sd if ".bn." in f".{k}"]
    if bn:
        raise ValueError(f"state dict still has batch-norm entries ({bn[:3]}{'...' if len(bn) > 3 else ''}); "
                         f"call ai8x.fuse_bn_layers(model) (or initiate_qat) first")
    extras = dict(extras or {})
    _check_plain(extras, "extras")
    return {"epoch": int(epoch),
            "state_dict": OrderedDict((k, v.detach().cpu().clone()) for k, v in sd.items()),
            "arch": str(arch), "extras": extras}


def save_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """Save a lean or quantized checkpoint (``.pth.tar``) and check it loads weights-only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(ckpt), path)
    torch.load(path, map_location="cpu", weights_only=True)
    return path


def _layer_prefix(key: str) -> str:
    if not key.endswith(".op.weight"):
        raise ValueError(f"state dict key {key!r}: every '*.weight' must belong to an ai8x layer "
                         f"('<layer>.op.weight'); izer maps each one onto a hardware layer")
    return key[: -len(".op.weight")]


def _scalar(t) -> float:
    return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


def quantize_checkpoint(ckpt: Mapping[str, Any], device: int = MAX78000,
                        clip: str = "MAX_BIT_SHIFT", weight_bits: int | None = None) -> dict:
    """The quantized checkpoint izer consumes, computed from a QAT checkpoint with upstream
    ``quantize.py``'s MAX_BIT_SHIFT rules, per layer with ``b`` = its ``weight_bits`` (else
    `weight_bits`, else 8) and ``s = clamp(floor(log2(1 / quantile|[w; bias]|)), -7-b, 23-b)``:

    - weight ``clamp(floor(w * 2**s * 2**(b-1) + 0.5), -2**(b-1), 2**(b-1)-1)`` (float32);
    - bias quantized the same way, then times ``2**(b-8) * 128``;
    - ``output_shift = -s`` (a float; 0 comes out as -0.0, as upstream writes it),
      ``bias_bits = b`` (float32), ``adjust_output_shift = 0.``, ``quantize_activation = 1.``.

    The quantile uses the layer's ``shift_quantile`` with the same midpoint interpolation as
    the QAT forward (upstream quantize.py interpolates linearly; both give the max at 1.0).
    The input is not modified; ``extras['clipping_method']`` is recorded."""
    if clip != "MAX_BIT_SHIFT":
        raise ValueError(f"clip={clip!r}: only 'MAX_BIT_SHIFT' (the QAT method) is implemented")
    if "state_dict" not in ckpt:
        raise ValueError("checkpoint has no 'state_dict'")
    lim = limits(device)
    out = copy.deepcopy(dict(ckpt))
    src = ckpt["state_dict"]
    sd = OrderedDict((k, v.clone()) for k, v in src.items())
    for key in list(src):
        if not key.endswith(".weight"):
            continue
        layer = _layer_prefix(key)
        bits = None
        if f"{layer}.weight_bits" in src and int(_scalar(src[f"{layer}.weight_bits"])) != 0:
            bits = int(_scalar(src[f"{layer}.weight_bits"]))
        bits = bits or weight_bits or 8
        if bits not in lim.weight_bits:
            raise ValueError(f"{layer}: weight_bits {bits} is not one of {lim.weight_bits}")
        w = src[key].float()
        bias_key = f"{layer}.op.bias"
        params = torch.cat((w.flatten(), src[bias_key].float().flatten())) if bias_key in src else w.flatten()
        q = _scalar(src[f"{layer}.shift_quantile"]) if f"{layer}.shift_quantile" in src else 1.0
        limit = ai8x.abs_quantile(params, q)
        if not limit > 0:
            raise ValueError(f"{layer}: all weights and biases are zero; cannot pick an output shift")
        shift = torch.floor(torch.log2(1.0 / limit)).clamp(min=-7.0 - bits, max=23.0 - bits)
        scale = torch.pow(2.0, shift)
        hi, lo = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        sd[key] = (2 ** (bits - 1) * scale * w).add(0.5).floor().clamp(min=lo, max=hi)
        wb_key = f"{layer}.weight_bits"
        if wb_key not in sd or int(_scalar(sd[wb_key])) == 0:
            sd[wb_key] = torch.tensor([float(bits)])
        if bias_key in src:
            b = (2 ** (bits - 1) * (src[bias_key].float() * scale)).add(0.5).floor().clamp(min=lo, max=hi)
            sd[bias_key] = b * 2 ** (bits - 8) * 2 ** (lim.activation_bits - 1)
            sd[f"{layer}.bias_bits"] = torch.tensor([float(bits)])
        hw_shift = -float(shift) + (8 - bits)
        if not -15 <= hw_shift <= 15:
            raise ValueError(f"{layer}: hardware output shift {hw_shift:g} (output_shift + 8 - bits) "
                             f"is outside [-15, 15]; the layer's weights are too small or too large")
        sd[f"{layer}.output_shift"] = (-shift).reshape(1).float()
    for key in list(sd):
        if key.endswith(".adjust_output_shift"):
            sd[key] = torch.tensor([0.0])
        elif key.endswith(".quantize_activation"):
            sd[key] = torch.tensor([1.0])
    out["state_dict"] = sd
    out.setdefault("extras", {})
    out["extras"] = dict(out["extras"] or {}, clipping_method=clip)
    return out


# --------------------------------------------------------------------------------------------
# network YAML

def network_yaml(model: nn.Module, input_shape: tuple[int, int, int], arch: str, dataset: str,
                 device: int = MAX78000, data_format: str = "HWC", comments: bool = True) -> str:
    """izer's network description generated from `model`: one hardware layer per ai8x layer,
    element-wise adds fused into the next layer (with an interleaving pass-through copy of an
    operand that feeds other layers too), ping-pong memory offsets, explicit ``pool_stride``,
    ``output_width: 32`` for wide layers, ``streaming`` on leading layers whose input does
    not fit one data-memory instance. The model's hardware rules are re-checked for `device`
    first (`ai8x.check_model`): a layer changed after construction raises `ai8x.Ai8xRuleError`
    naming it."""
    if data_format.upper() not in ("HWC", "CHW"):
        raise ValueError(f"data_format must be HWC or CHW, got {data_format!r}")
    layers = plan_hardware_layers(model, input_shape, device, data_format)
    run_order = [l.module for l in layers if l.n_weights]
    key_order = [n for n, m in ai8x.ai8x_layers(model) if m.op is not None]
    if run_order != key_order:
        raise ai8x.Ai8xRuleError(
            f"layers run in the order {run_order} but are registered (state-dict order) as "
            f"{key_order}; izer assigns the checkpoint's weights to layers in state-dict order, so "
            f"create the modules in the order the forward uses them")
    lines = [f"# izer network description generated by posekd_lib.export.network_yaml",
             f"# device {limits(device).name}, input {'x'.join(map(str, input_shape))} "
             f"{data_format.upper()}, {len(layers)} hardware layers",
             f"arch: {arch}", f"dataset: {dataset}", "", "layers:"]
    prev = None
    for k, l in enumerate(layers):
        entry: list[tuple[str, Any]] = []
        default_input = prev is not None and l.inputs == [prev.name]
        if not default_input and k > 0:
            entry.append(("in_sequences", l.inputs[0] if len(l.inputs) == 1 else f"[{', '.join(l.inputs)}]"))
        entry.append(("processors", f"0x{l.processors:016x}"))
        if l.op == "passthrough" and l.module is None:
            entry.append(("output_processors", f"0x{l.output_processors:016x}"))
        if k == 0 or not default_input:
            entry.append(("in_offset", f"0x{l.in_offset:04x}"))
        entry.append(("out_offset", f"0x{l.out_offset:04x}"))
        if k == 0:
            entry.append(("data_format", data_format.upper()))
        if l.streaming:
            entry.append(("streaming", "true"))
        if l.flatten:
            entry.append(("flatten", "true"))
        if l.eltwise:
            entry.append(("eltwise", l.eltwise))
            if l.pooling:
                entry.append(("pool_first", "false"))
        if l.pooling:
            entry.append(("max_pool" if l.pooling == "Max" else "avg_pool", l.pool_size))
            entry.append(("pool_stride", l.pool_stride))
        entry.append(("op", l.op))
        if l.op in ("conv2d", "convtranspose2d"):
            entry.append(("kernel_size", f"{l.kernel}x{l.kernel}"))
            entry.append(("pad", l.pad))
        if l.activation:
            entry.append(("activate", l.activation))
        if l.wide:
            entry.append(("output_width", 32))
        if l.write_gap:
            entry.append(("write_gap", l.write_gap))
        entry.append(("name", l.name))
        if comments:
            what = l.op if l.module is None else type(_module(model, l.module)).__name__
            lines.append(f"  # L{k} = {l.name} ({what}, {l.in_channels}x{l.in_hw[0]}x{l.in_hw[1]} -> "
                         f"{l.out_channels}x{l.out_hw[0]}x{l.out_hw[1]})")
        for i, (key, val) in enumerate(entry):
            lines.append(f"  {'- ' if i == 0 else '  '}{key}: {val}")
        lines.append("")
        prev = l
    return "\n".join(lines)


def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


# --------------------------------------------------------------------------------------------
# known-answer test data

def sample_input(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """izer's sample input: int64 (C, H, W) in [-128, 127] from a float image in ai8x's
    [-1, 127/128] range (x * 128, rounded, clamped). Takes (C,H,W) or a batch of one."""
    t = torch.as_tensor(x).detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"sample_input takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"sample_input expects (C, H, W), got shape {tuple(t.shape)}")
    return t.mul(128).round().clamp(-128, 127).numpy().astype(np.int64)


def expected_output(model_sim: nn.Module, sample: np.ndarray) -> np.ndarray:
    """What the chip should output for `sample` (int64 (C,H,W)): the simulate-mode model's
    integer output (32-bit values for a wide last layer), int64."""
    sim = [m for _, m in ai8x.ai8x_layers(model_sim) if not m.device.simulate]
    if sim:
        raise ValueError("expected_output needs a simulate-mode model "
                         "(ai8x.apply_device(model, ai8x.Device(85, simulate=True)) after loading "
                         "the quantized state dict)")
    model_sim.eval()
    p = next(model_sim.parameters())
    with torch.no_grad():
        y = model_sim(torch.as_tensor(np.asarray(sample), dtype=torch.float32, device=p.device)[None])
    return y[0].cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------------
# izer's own environment

IZER_TORCH = "torch==2.13.0"
"""The torch requirement izer's venv gets in place of ai8x-synthesis' pin (``torch==2.3.1``,
a CUDA build of several GB on PyPI): the CPU build the golden files' izer run used, with
numpy 1.26.4 as izer pins it. ``$AI8X_SYNTHESIS_TORCH`` overrides it."""

IZER_FIX = "make izer"
_STAMP = ".posekd-izer-installed"


class IzerUnavailableError(RuntimeError):
    """izer (ai8x-synthesis' ``ai8xize.py``) cannot run here; the message says why and which
    command fixes it."""


def _fix_hint(synthesis_dir: str | Path | None = None, force: bool = False) -> str:
    where = f"AI8X_SYNTHESIS_DIR={shlex.quote(str(synthesis_dir))} " if synthesis_dir else ""
    return (f"`{where}{IZER_FIX}{' FORCE=1' if force else ''}` in the posekd clone (or "
            f"`python scripts/build_izer_venv.py{' --force' if force else ''}`)")


def synthesis_checkout(synthesis_dir: str | Path | None = None) -> Path:
    """The ai8x-synthesis checkout: `synthesis_dir`, else ``$AI8X_SYNTHESIS_DIR``. Raises
    `IzerUnavailableError` when neither is set or the folder holds no ``ai8xize.py``."""
    d = synthesis_dir or os.environ.get("AI8X_SYNTHESIS_DIR")
    clone = "git clone https://github.com/analogdevicesinc/ai8x-synthesis"
    if not d:
        raise IzerUnavailableError(
            f"AI8X_SYNTHESIS_DIR is not set, so izer cannot run: `{clone}`, "
            f"`export AI8X_SYNTHESIS_DIR=$PWD/ai8x-synthesis`, then {_fix_hint()}")
    d = Path(d).expanduser()
    if not (d / "ai8xize.py").is_file():
        raise IzerUnavailableError(
            f"{d} (AI8X_SYNTHESIS_DIR) is not an ai8x-synthesis checkout: it has no ai8xize.py; "
            f"point AI8X_SYNTHESIS_DIR at one (`{clone}`), then {_fix_hint()}")
    return d


def izer_requirements(synthesis_dir: str | Path | None = None,
                      torch_spec: str | None = None) -> list[str]:
    """ai8x-synthesis' ``requirements.txt`` lines (comments dropped) with its torch pin
    replaced by `torch_spec` (default ``$AI8X_SYNTHESIS_TORCH`` or `IZER_TORCH`)."""
    d = synthesis_checkout(synthesis_dir)
    path = d / "requirements.txt"
    if not path.is_file():
        raise IzerUnavailableError(f"{path} is missing: izer's environment is built from it "
                                   f"(is {d} a complete ai8x-synthesis checkout?)")
    torch_spec = torch_spec or os.environ.get("AI8X_SYNTHESIS_TORCH") or IZER_TORCH
    out, has_torch = [], False
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if re.split(r"[\s=<>!~;\[]", line, maxsplit=1)[0].lower() == "torch":
            line, has_torch = torch_spec, True
        out.append(line)
    if not has_torch:
        out.append(torch_spec)
    return out


def izer_venv_dir(synthesis_dir: str | Path | None = None, torch_spec: str | None = None) -> Path:
    """Where `build_izer_venv` puts izer's venv: ``~/.cache/posekd/izer-venv-<hash>``, keyed
    by the requirements it installs (so a new ai8x-synthesis pin gets a new venv)."""
    reqs = "\n".join(izer_requirements(synthesis_dir, torch_spec))
    digest = hashlib.sha256(reqs.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "posekd" / f"izer-venv-{digest}"


def build_izer_venv(synthesis_dir: str | Path | None = None, *, torch_spec: str | None = None,
                    python: str | None = None, force: bool = False) -> Path:
    """Build izer's own virtual environment (once; ``force`` rebuilds it) from the checkout's
    ``requirements.txt`` (`izer_requirements`: its numpy 1.26.4 pin kept, torch taken as
    `torch_spec`) with the base interpreter `python` (default: the one under this venv), and
    return its python. pip prints its progress; a failure raises `IzerUnavailableError`."""
    reqs = izer_requirements(synthesis_dir, torch_spec)
    venv = izer_venv_dir(synthesis_dir, torch_spec)
    py = venv / "bin" / "python"
    if (venv / _STAMP).exists() and py.exists() and not force:
        print(f"izer venv up to date: {venv}")
        return py
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    print(f">> building izer's venv {venv} with {base}: {' '.join(reqs)}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [("create the venv", [base, "-m", "venv", "--clear", str(venv)])]
    req_file = venv / "requirements-izer.txt"
    steps.append(("install izer's requirements", [str(py), "-m", "pip", "install", "--no-input",
                                                 "-r", str(req_file)]))
    steps.append(("import numpy and torch", [str(py), "-c", "import numpy, torch, yaml; print("
                                             "'izer venv ok: numpy', numpy.__version__, 'torch', "
                                             "torch.__version__)"]))
    for i, (what, cmd) in enumerate(steps):
        try:
            rc = subprocess.run(cmd).returncode
        except OSError as e:
            rc, what = -1, f"{what} ({e})"
        if rc != 0:
            raise IzerUnavailableError(
                f"building izer's venv {venv} failed: could not {what} (`{shlex.join(cmd)}` "
                f"exited {rc}; its output is above). Fix the cause (PyPI not reachable, or a torch "
                f"build this machine cannot install: set AI8X_SYNTHESIS_TORCH to one it can) and "
                f"rerun {_fix_hint(synthesis_dir)}")
        if i == 0:
            req_file.write_text("\n".join(reqs) + "\n")
    (venv / _STAMP).write_text("\n".join(reqs) + "\n")
    return py


def _numpy_pin(synthesis_dir: Path) -> tuple[str, int] | None:
    """(version, major) of the checkout's exact numpy pin, e.g. ('1.26.4', 1)."""
    for line in izer_requirements(synthesis_dir):
        m = re.fullmatch(r"numpy\s*==\s*((\d+)\.[\d.*]+)", line, flags=re.I)
        if m:
            return m.group(1), int(m.group(2))
    return None


def izer_python(synthesis_dir: str | Path | None = None) -> str:
    """The interpreter `run_izer` runs ai8xize.py with: ``$AI8X_SYNTHESIS_PYTHON`` when set,
    else the venv `build_izer_venv` (``make izer``) made for this checkout. Raises
    `IzerUnavailableError`, saying what to run, when that venv is not built, the named
    interpreter does not exist, or its numpy major version is not the one izer pins (izer
    fails under numpy 2: ``np.save(fix_imports=...)``, a uint8 overflow)."""
    d = synthesis_checkout(synthesis_dir)
    chosen = os.environ.get("AI8X_SYNTHESIS_PYTHON")
    pin = _numpy_pin(d)
    if not chosen:
        venv = izer_venv_dir(d)
        py = venv / "bin" / "python"
        if not ((venv / _STAMP).exists() and py.exists()):
            why = (f"ai8x-synthesis pins numpy {pin[0]}, so it cannot run in this project's "
                   f"numpy {np.__version__} venv" if pin and pin[1] != int(np.__version__.split(".")[0])
                   else "its requirements differ from this project's")
            raise IzerUnavailableError(
                f"izer's own environment is not built ({venv} is missing; {why}): "
                f"run {_fix_hint(d)}")
        return str(py)
    if not Path(chosen).exists() and not shutil.which(chosen):
        raise IzerUnavailableError(
            f"AI8X_SYNTHESIS_PYTHON={chosen} does not exist: unset it to use the venv "
            f"{_fix_hint(d)} builds, or point it at an interpreter with izer's requirements")
    if pin is not None:
        want = pin[1]
        r = subprocess.run([chosen, "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True)
        have = r.stdout.strip()
        if r.returncode != 0 or not have.split(".")[0].isdigit():
            raise IzerUnavailableError(
                f"AI8X_SYNTHESIS_PYTHON={chosen} cannot import numpy ({(r.stderr or '').strip()[-300:]}): "
                f"unset it and run {_fix_hint(d)}")
        if int(have.split(".")[0]) != want:
            raise IzerUnavailableError(
                f"AI8X_SYNTHESIS_PYTHON={chosen} has numpy {have}, but ai8x-synthesis pins numpy "
                f"{pin[0]} (izer fails under numpy 2: np.save(fix_imports=...), a uint8 overflow): "
                f"unset AI8X_SYNTHESIS_PYTHON and run {_fix_hint(d)}")
    return chosen


# --------------------------------------------------------------------------------------------
# running izer

def izer_command(checkpoint: str | Path, config: str | Path, sample: str | Path,
                 test_dir: str | Path, prefix: str, device: int = MAX78000,
                 synthesis_dir: str | Path | None = None, extra: list[str] | tuple = (),
                 python: str | None = None) -> list[str]:
    """The ai8xize.py command line (offline: ``--no-version-check``; ``--fifo`` when the
    network streams); also printed. `python` defaults to ``$AI8X_SYNTHESIS_PYTHON``, else
    izer's venv when built (``make izer``), else ``python``."""
    script = str(Path(synthesis_dir) / "ai8xize.py") if synthesis_dir else "ai8xize.py"
    if "--fifo" not in extra and Path(config).exists() and \
            re.search(r"^\s*-?\s*streaming:\s*true", Path(config).read_text(), flags=re.M):
        extra = [*extra, "--fifo"]                  # streamed layers read through the FIFOs
    if python is None:
        python = os.environ.get("AI8X_SYNTHESIS_PYTHON")
    if python is None and synthesis_dir:
        try:
            venv = izer_venv_dir(synthesis_dir)
            if (venv / _STAMP).exists():
                python = str(venv / "bin" / "python")
        except IzerUnavailableError:
            pass
    python = python or "python"
    cmd = [python, script, "--test-dir", str(test_dir), "--prefix", prefix,
           "--checkpoint-file", str(checkpoint), "--config-file", str(config),
           "--sample-input", str(sample), "--device", limits(device).name, "--timer", "0",
           "--display-checkpoint", "--verbose", "--no-version-check", *extra]
    shown = [shown_path(c) if Path(c).is_absolute() else c for c in cmd]   # no machine's folders
    print("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1", " ".join(c if c.startswith(("$", "~")) else shlex.quote(c)
                                                     for c in shown))
    return cmd


def parse_izer_log(text: str) -> dict:
    """Weight/bias memory, per-layer and total estimated cycles from izer's output."""
    out: dict[str, Any] = {}
    m = re.search(r"Weight memory:\s*([\d,]+) bytes out of ([\d,]+)", text)
    if m:
        out["weight_bytes"], out["weight_capacity"] = (int(g.replace(",", "")) for g in m.groups())
    m = re.search(r"Bias memory:\s*([\d,]+) bytes out of ([\d,]+)", text)
    if m:
        out["bias_bytes"], out["bias_capacity"] = (int(g.replace(",", "")) for g in m.groups())
    m = re.search(r"Total\s+([\d,]+) cycles", text)
    if m:
        out["cycles"] = int(m.group(1).replace(",", ""))
        out["latency_ms"] = out["cycles"] / limits(MAX78000).cnn_clock_hz * 1e3
    layer_cycles = re.findall(r"^Layer (\d+)(?: \(([^)]*)\))?\s+([\d,]+)(?: \(est\))?\s*$", text,
                              flags=re.M)
    if layer_cycles:
        out["layer_cycles"] = {(name or f"L{i}"): int(c.replace(",", "")) for i, name, c in layer_cycles}
    return out


_BROKEN_ENV = re.compile(r"^(ModuleNotFoundError|ImportError)\b.*$|"
                         r"unexpected keyword argument 'fix_imports'.*$|"
                         r"^OverflowError: Python integer .* out of bounds for uint8.*$", re.M)


def run_izer(checkpoint: str | Path, config: str | Path, sample: str | Path, test_dir: str | Path,
             prefix: str, device: int = MAX78000, synthesis_dir: str | Path | None = None,
             extra: list[str] | tuple = (), timeout: float = 900) -> dict | None:
    """Run izer when ``synthesis_dir`` or ``$AI8X_SYNTHESIS_DIR`` points to an ai8x-synthesis
    checkout, with izer's own venv (``make izer``; `izer_python`). Returns ``{'log',
    'returncode', 'out_dir', 'output', 'weight_bytes', 'bias_bytes', 'cycles', 'layer_cycles',
    ...}`` where ``output`` is izer's own computed output for the sample (int64) and ``log`` its
    console and ``log.txt`` text (a non-zero ``returncode`` is izer rejecting the network).
    With neither set, prints the command to run and returns None. Raises
    `IzerUnavailableError`, saying why and what command fixes it, when izer cannot run: the
    folder is no checkout, its venv is not built, or izer fails to start (missing modules,
    numpy 2)."""
    synthesis_dir = synthesis_dir or os.environ.get("AI8X_SYNTHESIS_DIR")
    paths = [Path(p).resolve() for p in (checkpoint, config, sample, test_dir)]
    extra = [*extra, "--sample-numpy-filename", "izer_output.npy", "--overwrite"]
    if not synthesis_dir:
        izer_command(*paths, prefix, device, None, extra)
        print(f"(set AI8X_SYNTHESIS_DIR to an ai8x-synthesis checkout and run `{IZER_FIX}` "
              f"once to run it from here)")
        return None
    synthesis_dir = synthesis_checkout(synthesis_dir)
    python = izer_python(synthesis_dir)
    cmd = izer_command(*paths, prefix, device, synthesis_dir, extra, python=python)
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    try:
        proc = subprocess.run(cmd, cwd=synthesis_dir, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except OSError as e:
        raise IzerUnavailableError(f"izer could not start with {python}: {e}; run "
                                   f"{_fix_hint(synthesis_dir)}") from e
    out_dir = paths[3] / prefix
    log = proc.stdout + proc.stderr
    broken = _BROKEN_ENV.search(proc.stderr) if proc.returncode else None
    if broken:
        raise IzerUnavailableError(
            f"izer failed in its environment ({python}): {broken.group(0).strip()}. Its "
            f"requirements are not what ai8x-synthesis pins; rebuild its venv: "
            f"{_fix_hint(synthesis_dir, force=True)}\n--- izer's output ---\n"
            f"{log[-2000:]}")
    if (out_dir / "log.txt").exists():
        log += "\n" + (out_dir / "log.txt").read_text()
    output = np.load(out_dir / "izer_output.npy").astype(np.int64) \
        if (out_dir / "izer_output.npy").exists() else None
    return {"log": log, "returncode": proc.returncode, "out_dir": out_dir, "output": output,
            **parse_izer_log(log)}
