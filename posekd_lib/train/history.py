"""A run's history: the logged values of every step and evaluation (``history.json``)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import config


@dataclass
class History:
    """Training log: one row per ``log_every`` steps (interval means) and one eval dict per epoch."""

    step: list[int] = field(default_factory=list)
    epoch: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0       # seconds inside fit's loop, summed over every resumed part

    def log(self, step: int, epoch: float, lr: float, values: dict[str, float]) -> None:
        for k in values.keys() - self.losses.keys():
            self.losses[k] = [math.nan] * len(self.step)
        for k, v in self.losses.items():
            v.append(float(values.get(k, math.nan)))
        self.step.append(step)
        self.epoch.append(epoch)
        self.lr.append(lr)

    def best(self, metric: str, mode: str = "max") -> dict | None:
        """The eval dict with the best ``metric`` (``None`` when nothing was evaluated)."""
        rows = [e for e in self.evals if metric in e]
        if not rows:
            return None
        pick = max if mode == "max" else min
        return pick(rows, key=lambda e: e[metric])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: d[k] for k in ("step", "epoch", "lr", "losses", "evals")},
                   train_time_s=float(d.get("train_time_s", 0.0)))

    def save(self, path: Path) -> None:
        config.atomic_write(path, lambda f: json.dump(self.to_dict(), f), mode="w")

    @classmethod
    def load(cls, path: Path) -> "History":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def last_step(self) -> int:
        """The last step logged (0 before the first log)."""
        return self.step[-1] if self.step else 0

    @classmethod
    def steps_done(cls, run_dir: Path) -> int:
        """The last step logged in ``run_dir/history.json`` (0 when the run has not started)."""
        f = Path(run_dir) / "history.json"
        return cls.load(f).last_step if f.is_file() else 0

    def plot(self, keys: list[str] | None = None):
        """Loss components against the step and, when present, eval metrics against the step."""
        import matplotlib.pyplot as plt

        metrics = sorted({k for e in self.evals for k, v in e.items()
                          if k not in ("step", "epoch") and isinstance(v, (int, float))})
        fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(11 if metrics else 6, 3.5), squeeze=False)
        ax = axes[0, 0]
        for k in keys or list(self.losses):
            ax.plot(self.step, self.losses[k], label=k)
        ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
        ax.legend()
        if metrics:
            ax = axes[0, 1]
            for m in metrics:
                rows = [e for e in self.evals if m in e]
                ax.plot([e["step"] for e in rows], [e[m] for e in rows], marker="o", label=m)
            ax.set(xlabel="step", title="evaluation")
            ax.legend()
        fig.tight_layout()
        return fig
