"""Reference runs: long-budget runs of the notebooks' configs, trained offline and shipped small.

A notebook's live run is what a laptop trains in minutes; a reference run is the same config
trained for longer by the same code (``scripts/train_reference.py``, on a GPU), so a comparison
table can show what the recipe does at a budget the room cannot afford. A run travels as its
folder's small files (``config.yaml``, ``run_info.json``, ``history.json``, ``val_metrics.json``,
the MAX78000 runs' ``eval_*/val_metrics.json``) plus ``model_fp16.pt``, the trained weights in
float16::

    pack_runs(run_paths("workshop").checkpoints, "reference_runs.tar.gz")   # where it was trained
    install("reference_runs.tar.gz")                                        # into reference/
    reference_table()                    # one row per run: name, config, seed, steps, metrics
    model = load_reference_student("ref_fpd_squeezenet_s0")

``reference/`` is where shipped runs live in the repository (:data:`REFERENCE_DIR`).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from torch import nn

from .config import REPO_ROOT

REFERENCE_DIR = REPO_ROOT / "reference"
#: The files of a run folder that travel (besides ``model_fp16.pt`` and ``eval_*/val_metrics.json``).
RUN_FILES = ("config.yaml", "run_info.json", "history.json", "val_metrics.json")
WEIGHTS_FILE = "model_fp16.pt"


def fp16_state(checkpoint: Path) -> dict:
    """The ``model`` state of a ``fit`` checkpoint with its floating-point tensors in float16."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "model" not in state:
        raise KeyError(f"{checkpoint}: no 'model' entry (keys: {sorted(state)}); expected a fit checkpoint")
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()}


def pack_runs(checkpoints: Path, tar_path: Path, prefix: str = "ref_") -> list[str]:
    """Write the run folders ``checkpoints/<prefix>*`` into ``tar_path`` (gzip); returns their names."""
    names = []
    with tarfile.open(tar_path, "w:gz") as tar:
        for run in sorted(Path(checkpoints).glob(f"{prefix}*")):
            if not run.is_dir():
                continue
            for f in RUN_FILES:
                if (run / f).is_file():
                    tar.add(run / f, arcname=f"{run.name}/{f}")
            for sub in sorted(run.glob("eval_*/val_metrics.json")):
                tar.add(sub, arcname=f"{run.name}/{sub.parent.name}/{sub.name}")
            if (run / "latest.pt").is_file():
                buf = io.BytesIO()
                torch.save(fp16_state(run / "latest.pt"), buf)
                info = tarfile.TarInfo(f"{run.name}/{WEIGHTS_FILE}")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
            names.append(run.name)
    return names


def install(tar_path, dest: Path = REFERENCE_DIR) -> list[Path]:
    """Extract a :func:`pack_runs` archive into ``dest`` (one folder per run); returns the folders.

    Only plain files under a run folder are taken: a member with an absolute path, ``..``, a link
    or a device is refused with its name, before anything is written."""
    dest = Path(dest)
    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith("/") or ".." in parts or len(parts) < 2 or not (m.isfile() or m.isdir()):
                raise ValueError(f"{tar_path}: refusing member {m.name!r} (only files inside run folders)")
        tar.extractall(dest, members=[m for m in members if m.isfile()], filter="data")
    return sorted({dest / Path(m.name).parts[0] for m in members if m.isfile()})


def _metrics(folder: Path) -> dict:
    out = {}
    top = folder / "val_metrics.json"
    if top.is_file():
        out.update(json.loads(top.read_text()).get("metrics", {}))
    for sub in sorted(folder.glob("eval_*/val_metrics.json")):
        kind = sub.parent.name.removeprefix("eval_")
        out.update({f"{kind}.{k}": v for k, v in json.loads(sub.read_text()).get("metrics", {}).items()})
    return out


def reference_table(dest: Path = REFERENCE_DIR):
    """One row per installed run (a pandas DataFrame): ``run``, ``config`` (its name), ``seed``,
    ``steps``, ``train_time_s`` and the validation metrics (``float.AP``, ``int8.AP``... for the
    MAX78000 runs)."""
    import pandas as pd

    from . import runconfig as rc

    rows = []
    for folder in sorted(Path(dest).glob("*/config.yaml")):
        folder = folder.parent
        cfg = rc.from_yaml(folder / "config.yaml")
        info = json.loads((folder / "run_info.json").read_text()) if (folder / "run_info.json").is_file() else {}
        recipe = info.get("recipe", {})
        rows.append({"run": folder.name, "config": cfg.name, "student": cfg.model.student, "seed": cfg.seed,
                     "steps": recipe.get("steps", info.get("steps")), "batch_size": recipe.get("batch_size"),
                     "train_time_s": info.get("train_time_s"), **_metrics(folder)})
    return pd.DataFrame(rows)


def _student_state(state: dict) -> dict:
    """The student's own keys of a trained module's state (a distiller's ``student.``, a view's ``model.``)."""
    for prefix in ("student.", "model."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_reference_student(run: str, dest: Path = REFERENCE_DIR) -> nn.Module:
    """The trained student of an installed top-down run (float32, eval mode), built from its config."""
    from . import runconfig as rc
    from .experiments import build_student_model

    folder = Path(dest) / run
    if not (folder / "config.yaml").is_file():
        have = sorted(p.parent.name for p in Path(dest).glob("*/config.yaml"))
        raise FileNotFoundError(f"no reference run {run!r} in {dest} (installed: {have})")
    cfg = rc.from_yaml(folder / "config.yaml")
    if cfg.model.student == rc.AI8X_STUDENT:
        raise ValueError(f"{run}: a MAX78000 run; its weights are QAT-mode ai8x layers (load them with "
                         "ai8x_models.ai85posenet + ai8x.initiate_qat)")
    model = build_student_model(rc.student_key(cfg.model))
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in _student_state(state).items()})
    return model.eval()
