"""izer (ai8x-synthesis) in its own virtual environment: the checkout, the venv it needs (its numpy
pin), the command, a run and its log parsed into bytes and cycles."""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...config import shown_path
from ..hardware import MAX78000, limits


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
