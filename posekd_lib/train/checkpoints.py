"""Checkpoints written atomically (a kill never leaves half a file) and read strictly; the run state
``latest.pt`` saves and restores for an exact resume."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import config
from .history import History
from .rng import rng_state, set_rng_state


#: The layout of ``latest.pt`` this library writes and reads. A run folder written with another
#: layout is refused with a message naming the file, not upgraded (delete it to retrain).
CHECKPOINT_FORMAT = 1
_RUN_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "batch_in_epoch", "history",
                   "best", "running", "rng")


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    config.atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, model: nn.Module | None = None, strict: bool = True) -> dict:
    """Load a checkpoint written by ``fit`` (or a bare state dict) into ``model``; return the other entries."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if "model" not in ckpt:
        ckpt = {"model": ckpt}
    if model is not None:
        try:
            model.load_state_dict(ckpt["model"], strict=strict)
        except RuntimeError as e:
            raise RuntimeError(f"checkpoint {path} does not fit {type(model).__name__}: {e}") from None
    return {k: v for k, v in ckpt.items() if k != "model"}


@dataclass
class RunState:
    """Where a run stands, all of it saved in ``latest.pt``: its position in the data (``step``,
    ``epoch``, ``batch_in_epoch``), its ``history``, its ``best`` evaluation so far and the running
    sums of the losses logged next."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: History = field(default_factory=History)
    best: dict | None = None
    sums: dict = field(default_factory=lambda: defaultdict(float))
    count: int = 0

    def position(self) -> tuple[int, int, int]:
        return self.step, self.epoch, self.batch_in_epoch

    def add(self, values: dict[str, float]) -> None:
        """One step done, its logged ``values`` added to the running sums."""
        self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
        for k, v in values.items():
            self.sums[k] += v
        self.count += 1

    def take_means(self) -> dict[str, float]:
        """The running means since the last call (the sums start again)."""
        means = {k: v / self.count for k, v in self.sums.items()}
        self.sums, self.count = defaultdict(float), 0
        return means


def save_training(path: Path, model: nn.Module, optimizer, sched, scaler, state: RunState, guard: dict,
                  seed: int, run_name: str) -> None:
    """Write everything a resumed run needs (``latest.pt``) atomically, and ``history.json`` beside it."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": sched.state_dict() if sched is not None else None, "scaler": scaler.state_dict(),
                 "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                 "history": state.history.to_dict(), "best": state.best,
                 "running": {"sums": dict(state.sums), "count": state.count}, "rng": rng_state(),
                 "seed": seed, "run_name": run_name, "guard": dict(guard), "format": CHECKPOINT_FORMAT}, path)
    state.history.save(Path(path).parent / "history.json")


def resume_training(path: Path, model: nn.Module, optimizer, sched, scaler) -> tuple[RunState, dict]:
    """Load ``latest.pt`` into the model, optimizer, scheduler, scaler and RNGs; return the run's
    state and its divergence guard's references."""
    ck = torch.load(Path(path), map_location="cpu", weights_only=True)
    fmt = ck.get("format", CHECKPOINT_FORMAT) if isinstance(ck, dict) else None   # format 1 predates the field
    missing = [k for k in _RUN_STATE_KEYS if not isinstance(ck, dict) or k not in ck]
    if fmt != CHECKPOINT_FORMAT or missing:
        raise ValueError(f"{path}: a run folder this posekd cannot resume (checkpoint format {fmt}, it reads "
                         f"{CHECKPOINT_FORMAT}" + (f"; no {', '.join(missing)}" if missing else "") + "); old "
                         "folders are not upgraded: delete the folder to retrain, or resume with the version that wrote it")
    load_checkpoint(path, model)
    optimizer.load_state_dict(ck["optimizer"])
    if sched is not None and ck["scheduler"] is not None:
        sched.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    state = RunState(ck["step"], ck["epoch"], ck["batch_in_epoch"], History.from_dict(ck["history"]), ck["best"],
                     defaultdict(float, ck["running"]["sums"]), ck["running"]["count"])
    return state, dict(ck.get("guard") or {})
