"""Reference runs: long-budget runs of the notebooks' configs, trained offline and shipped small.

A notebook's live run is what a laptop trains in minutes; a reference run is the same config
trained for longer by the same code (``scripts/train_reference.py``: on the CPU, one thread per
run, two side by side; resumable from its run folder), so a notebook can show what the recipe does
at a budget the room cannot afford, beside its live run. A run travels as its folder's small files
(``config.yaml``, ``run_info.json``, ``history.json`` with its learning curve, ``val_metrics.json``,
the MAX78000 runs' ``eval_*/val_metrics.json``), ``card.json`` (command, teacher, CPU, training
time) and the trained weights: ``model_fp16.pt`` in float16, or for a MAX78000 QAT folder
``model.pt`` in float32 (its integer model must be exactly the trained one)::

    ship([run_paths("workshop").checkpoints / "ref_ai8x_tiny_fpd_s0_float", ...])  # into reference/
    reference_table()                    # one row per run: name, config, seed, steps, metrics
    seed_table({"baseline": "ref_baseline_squeezenet_s{seed}", "kl": "ref_kl_squeezenet_s{seed}"})
    model = load_reference_student("ref_fpd_squeezenet_s0")
    save_chunk(run_folder) / restore_chunk(run_folder)  # a run cut at a session's end, kept in reference/chunks/
    nets = load_reference_ai8x("ref_ai8x_tiny_fpd_s0_qat")         # {"float": ..., "qat": ...}

``pack_runs`` / ``install`` move the same files through one archive (a run made on another
machine). ``reference/`` is where shipped runs live in the repository (:data:`REFERENCE_DIR`).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from torch import nn

from ..config import REPO_ROOT

REFERENCE_DIR = REPO_ROOT / "reference"
#: The files of a run folder that travel (besides ``model_fp16.pt`` and ``eval_*/val_metrics.json``).
RUN_FILES = ("config.yaml", "run_info.json", "history.json", "val_metrics.json")
WEIGHTS_FILE = "model_fp16.pt"
QAT_WEIGHTS_FILE = "model.pt"
CARD_FILE = "card.json"


def _run_members(run: Path):
    """``(name inside the run folder, bytes)`` of what travels of one trained run folder: the small
    files, the evaluations' metrics and the trained weights — float16 (``model_fp16.pt``; a tensor out
    of float16's range stays float32), except a MAX78000 QAT folder's, kept float32 (``model.pt``) so
    that its 8-bit weights, and so the integer model izer builds, are exactly the trained ones."""
    for f in (*RUN_FILES, CARD_FILE):
        if (run / f).is_file():
            yield f, (run / f).read_bytes()
    for sub in sorted(run.glob("eval_*/val_metrics.json")):
        yield f"{sub.parent.name}/{sub.name}", sub.read_bytes()
    if (run / "latest.pt").is_file():
        state = torch.load(run / "latest.pt", map_location="cpu", weights_only=False)
        if "model" not in state:
            raise KeyError(f"{run / 'latest.pt'}: no 'model' entry (keys: {sorted(state)}); expected a fit checkpoint")
        exact = run.name.endswith("_qat")
        weights = {k: (v.half() if v.is_floating_point() and not exact and _fits_fp16(v) else v)
                   for k, v in state["model"].items()}
        buf = io.BytesIO()
        torch.save(weights, buf)
        yield (QAT_WEIGHTS_FILE if exact else WEIGHTS_FILE), buf.getvalue()


def _fits_fp16(t: torch.Tensor) -> bool:
    """Whether float16 holds ``t``: BatchNorm running statistics behind an unnormalised ReLU trunk
    can pass float16's largest value (65,504; the SqueezeNet's reach 4e11), and stay float32."""
    return bool(t.numel() == 0 or t.detach().abs().max() <= torch.finfo(torch.float16).max)


def pack_runs(checkpoints: Path, tar_path: Path, prefix: str = "ref_") -> list[str]:
    """Write the run folders ``checkpoints/<prefix>*`` into ``tar_path`` (gzip); returns their names."""
    names = []
    with tarfile.open(tar_path, "w:gz") as tar:
        for run in sorted(Path(checkpoints).glob(f"{prefix}*")):
            if not run.is_dir():
                continue
            for name, data in _run_members(run):
                info = tarfile.TarInfo(f"{run.name}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            names.append(run.name)
    return names


def ship(runs, dest: Path = REFERENCE_DIR, card: dict | None = None) -> list[Path]:
    """Copy finished run folders (paths) into ``dest`` as :func:`pack_runs` packs them, each with
    ``card.json``: where it was shipped (CPU, cores, torch, date), its training time and teacher
    (:func:`run_facts`), and ``card`` (the command...). Returns the shipped folders. A run without ``latest.pt`` is refused by name."""
    out = []
    for run in map(Path, runs):
        if not (run / "latest.pt").is_file():
            raise FileNotFoundError(f"{run}: no latest.pt, so no trained weights to ship")
        folder = Path(dest) / run.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in _run_members(run):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        (folder / CARD_FILE).write_text(json.dumps({**machine_card(), **run_facts(run), **(card or {}),
                                                    **chunk_facts(run)}, indent=1) + "\n")
        out.append(folder)
    return out


#: Where unfinished long runs wait between sessions (``save_chunk``), and the files that resume one.
CHUNKS_DIR = REFERENCE_DIR / "chunks"
CHUNK_FILES = ("config.yaml", "run_info.json", "history.json", "latest.pt")
CHUNK_FILE = "chunk.json"
#: In a run folder: the ``chunk.json`` of every chunk it was resumed from (:func:`restore_chunk`).
RESUMED_FILE = "resumed_from.json"
_INDEX_HEAD = "| run folder | step | training time | command |"


def _history(run: Path) -> dict:
    f = Path(run) / "history.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _steps_done(run: Path, history: dict | None = None) -> int:
    steps = (history if history is not None else _history(run)).get("step", [])
    return int(steps[-1]) if steps else 0


def save_chunk(run, chunks: Path = CHUNKS_DIR, command: str | None = None) -> Path:
    """Keep an unfinished run folder (cut at a session's end) in ``chunks``: the files an exact
    resume needs (:data:`CHUNK_FILES`; ``latest.pt`` holds weights, optimizer, schedule, data
    position and RNG) and ``chunk.json`` (step, training time, machine, ``command``), then rewrite
    the chunks' index (:func:`chunk_index`). Commit it; :func:`restore_chunk` puts it back."""
    run = Path(run)
    if not (run / "latest.pt").is_file():
        raise FileNotFoundError(f"{run}: no latest.pt, so nothing to resume from")
    folder = Path(chunks) / run.name
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHUNK_FILES:
        if (run / name).is_file():
            (folder / name).write_bytes((run / name).read_bytes())
    history = _history(run)
    facts = {"step": _steps_done(run, history), **run_facts(run), **machine_card(), "command": command}
    if facts.get("train_time_s") is None:       # run_info.json has it only once the run has finished
        facts["train_time_s"] = history.get("train_time_s")
    (folder / CHUNK_FILE).write_text(json.dumps(facts, indent=1) + "\n")
    chunk_index(chunks)
    return folder


def restore_chunk(run, chunks: Path = CHUNKS_DIR) -> bool:
    """Before a run (re)starts: copy its chunk back into the run folder ``run`` when the chunk is
    further along than what the folder holds (nothing, on a fresh clone). Returns whether it did."""
    run, folder = Path(run), Path(chunks) / Path(run).name
    if not (folder / "latest.pt").is_file() or _steps_done(folder) <= _steps_done(run):
        return False
    run.mkdir(parents=True, exist_ok=True)
    for name in CHUNK_FILES:
        if (folder / name).is_file():
            (run / name).write_bytes((folder / name).read_bytes())
    if (folder / CHUNK_FILE).is_file():
        _record_resume(run, json.loads((folder / CHUNK_FILE).read_text()))
    return True


def _resumes(run: Path) -> list[dict]:
    f = Path(run) / RESUMED_FILE
    return json.loads(f.read_text()) if f.is_file() else []


def _record_resume(run: Path, chunk: dict) -> None:
    """Add ``chunk`` (a ``chunk.json``) to the run folder's :data:`RESUMED_FILE`, once per step."""
    done = _resumes(run)
    if all(c.get("step") != chunk.get("step") for c in done):
        (Path(run) / RESUMED_FILE).write_text(json.dumps([*done, chunk], indent=1) + "\n")


def chunk_facts(run: Path) -> dict:
    """For a run's card: the chunks it was resumed from (step, training time so far, the machine
    that trained it up to there, and when it was saved: chunk.json's ``shipped_utc``), or nothing
    for a run trained in one go."""
    keep = ("step", "train_time_s", "cpu", "cores", "torch")
    chunks = [{**{k: c.get(k) for k in keep}, "saved_utc": c.get("shipped_utc")} for c in _resumes(run)]
    return {"resumed_from_chunks": chunks} if chunks else {}


def drop_chunk(name: str, chunks: Path = CHUNKS_DIR) -> bool:
    """Delete the chunk of run ``name`` (it finished and was shipped) and rewrite the index."""
    import shutil

    folder = Path(chunks) / name
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    chunk_index(chunks)
    return True


def chunk_index(chunks: Path = CHUNKS_DIR) -> str:
    """The table of the chunks in ``chunks`` (run folder, step, training time, command), written
    into ``chunks/README.md`` in place of the table there (when the file has one)."""
    rows = [_INDEX_HEAD, "| --- | ---: | ---: | --- |"]
    for f in sorted(Path(chunks).glob(f"*/{CHUNK_FILE}")):
        c = json.loads(f.read_text())
        t = c.get("train_time_s")
        rows.append(f"| `{f.parent.name}` | {c.get('step', 0):,} | {f'{t / 60:.0f} min' if t else '?'} | "
                    f"`{c.get('command') or '(see docs/experiments.md)'}` |")
    if len(rows) == 2:
        rows.append("| (none at present) | | | |")
    table = "\n".join(rows)
    readme = Path(chunks) / "README.md"
    if readme.is_file():
        lines = readme.read_text().splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.startswith("| run folder |")), None)
        if start is not None:
            end = start
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            readme.write_text("\n".join([*lines[:start], table, *lines[end:]]) + "\n")
    return table


def run_facts(run: Path) -> dict:
    """From a run folder's ``run_info.json``: its training time and the teacher it learned from (the
    teacher's weights fingerprint; None for ground truth only)."""
    f = Path(run) / "run_info.json"
    if not f.is_file():
        return {}
    info = json.loads(f.read_text())
    teacher = info.get("teacher") or (info.get("recipe", {}).get("kd") or {}).get("teacher")
    return {"train_time_s": info.get("train_time_s"), "teacher": teacher}


def machine_card() -> dict:
    """Where and when a run was shipped: CPU model, cores, torch version, date (UTC)."""
    import os
    import platform
    import time

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "shipped_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


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


def seed_table(runs: dict[str, str], seeds=(0, 1, 2), metric: str = "AP", dest: Path = REFERENCE_DIR):
    """Paired reference runs over seeds: ``runs`` maps a tag to a run name with ``{seed}`` in it
    (``{"baseline": "ref_baseline_squeezenet_s{seed}"}``). Returns ``(table, missing)``: a pandas
    DataFrame indexed by seed with one ``metric`` column per tag, holding only the seeds whose runs
    are all installed (a pair is compared on the same seed or not at all), and the names of the runs
    not installed, for the seeds left out."""
    import pandas as pd

    shipped = reference_table(dest)
    shipped = shipped.set_index("run")[metric] if len(shipped) else {}
    rows, missing = {}, []
    for seed in seeds:
        names = {tag: template.format(seed=seed) for tag, template in runs.items()}
        absent = [n for n in names.values() if n not in shipped]
        if absent:
            missing += absent
            continue
        rows[seed] = {tag: float(shipped[n]) for tag, n in names.items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(runs)).rename_axis("seed")
    return table, missing


def reference_curve(run: str, dest: Path = REFERENCE_DIR):
    """The learning curve of an installed run (a pandas DataFrame: ``phase``, ``step`` counted over
    the whole run, ``AP``, ``AP75``, ``mean_OKS`` on the fixed validation images). A MAX78000 run
    (its ``_qat`` folder) gives its float points, then its QAT points after the float steps."""
    import pandas as pd

    folder = _installed(run, dest)
    phases = [("float", Path(dest) / f"{folder.name.removesuffix('_qat')}_float"), ("qat", folder)] \
        if folder.name.endswith("_qat") else [("train", folder)]
    rows, offset = [], 0
    for phase, path in phases:
        history = json.loads((path / "history.json").read_text())
        rows += [{"phase": phase, "step": offset + e["step"], **{k: e.get(k) for k in ("AP", "AP75", "mean_OKS")}}
                 for e in history.get("evals", [])]
        offset += history["step"][-1] if history.get("step") else 0
    return pd.DataFrame(rows, columns=["phase", "step", "AP", "AP75", "mean_OKS"])


def _student_state(state: dict) -> dict:
    """The student's own keys of a trained module's state (a distiller's ``student.``, a view's ``model.``)."""
    for prefix in ("student.", "model."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _installed(run: str, dest: Path) -> Path:
    folder = Path(dest) / run
    if not (folder / "config.yaml").is_file():
        have = sorted(p.parent.name for p in Path(dest).glob("*/config.yaml"))
        raise FileNotFoundError(f"no reference run {run!r} in {dest} (installed: {have})")
    return folder


def _load_weights(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run's weights are missing (ship the run again)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in _student_state(state).items()}


def load_reference_ai8x(run: str, dest: Path = REFERENCE_DIR) -> dict:
    """The trained networks of an installed MAX78000 run, top-down or bottom-up (its ``<name>_qat`` folder,
    e.g. ``"ref_ai8x_tiny_fpd_s0_qat"``, and the ``<name>_float`` folder beside it), in eval mode:
    ``{"float": the float phase's network, "qat": the network in QAT mode}``. The QAT weights are
    stored float32, so ``ai8x_models.simulate_copy(out["qat"])`` is the integer model izer builds."""
    from ..mcu import ai8x
    from . import runconfig as rc
    from ..models.registry import model_entry

    folder = _installed(run, dest)
    cfg = rc.from_yaml(folder / "config.yaml")
    if cfg.model.student not in rc.MCU_STUDENTS:
        raise ValueError(f"{run}: a {cfg.model.student} run, not a MAX78000 one; load it with load_reference_student")
    info = json.loads((folder / "run_info.json").read_text())
    entry = model_entry(cfg.model.student)
    size = {"input_size": tuple(info["input_size"])} if "input_size" in info else {}

    def build(variant):
        return entry.build(variant=variant, **size)
    float_model = build(info["variant"])
    float_model.load_state_dict(_load_weights(Path(dest) / f"{folder.name.removesuffix('_qat')}_float" / WEIGHTS_FILE))
    qat_model = ai8x.initiate_qat(build(info["variant"]), info["policy"])
    qat_model.load_state_dict(_load_weights(folder / QAT_WEIGHTS_FILE))
    return {"float": float_model.eval(), "qat": qat_model.eval()}


def load_reference_student(run: str, dest: Path = REFERENCE_DIR) -> nn.Module:
    """The trained student of an installed top-down run (float32, eval mode), built from its config."""
    from . import runconfig as rc
    from ..train.experiments import build_student_model

    folder = _installed(run, dest)
    cfg = rc.from_yaml(folder / "config.yaml")
    if cfg.model.student in rc.MCU_STUDENTS:
        raise ValueError(f"{run}: a MAX78000 run; load it with load_reference_ai8x")
    model = build_student_model(rc.student_key(cfg.model))
    model.load_state_dict(_load_weights(folder / WEIGHTS_FILE))
    return model.eval()
