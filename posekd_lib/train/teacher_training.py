"""Train an HRNet teacher on the embedded dataset: the ``hrnet`` model of a run config.

    python -m posekd_lib.run configs/teacher_w16.yaml [--set optim.steps=... model.options.init_from=...]

The config names the HRNet (``model.options.config``, an ``hrnet_pose`` config such as
``w16_128x96``), the weights it starts from (``model.options.init_from``, a path relative to the
repository; ignored once the run folder holds a checkpoint to resume), and how many times the
training images (``model.options.train_multiple``: 3 trains on the train split plus the twice as many
generated images that follow it, ``synth.ensure_extra_train``; the students' splits are not
touched). Steps, batch size, learning rate, augmentation and autocast come from ``optim`` and
``augmentation`` (null: the mode's budget, whose defaults are the teacher's: 32 crops, 2e-3, light).

The ``train`` stage trains with ``train.fit`` (a learning curve on :data:`CURVE_IMAGES` fixed
validation images every ``optim.eval_every`` steps, ``best.pt`` the best of them) and scores the best
checkpoint on the whole validation split (GT boxes, flip test). The ``export`` stage writes the fp16
weights, the card (config, data, steps, the curve, the whole-split metrics, train time) and the
curve's picture: into ``hrnet_pose/weights/`` and ``images/`` in workshop mode when it scores higher
than the demo teacher (``teachers.DEMO_WEIGHTS``) and than shipped weights of the same name (so a
shorter or worse run never lands beside the shipped teachers), otherwise into the run folder's
``export/``, saying why.
"""
from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import REPO_ROOT, shown_path
from ..models.registry import TEACHER_MODEL, TEACHER_OPTIONS
from ..models.teachers import DEMO_WEIGHTS, SHIPPED_DIR, _read_card

#: Images of the learning curve's fixed validation subset (the demo teachers' cards use 150).
CURVE_IMAGES = 150
#: Steps between curve points when ``optim.eval_every`` is null.
EVAL_EVERY = 500


def hrnet_teacher(config: str = TEACHER_OPTIONS["config"]) -> nn.Module:
    """A fresh HRNet of the ``hrnet_pose`` config ``config`` (the registry's ``hrnet`` builder)."""
    from hrnet_pose.configs import load_configs
    from hrnet_pose.hrnetpose_model import get_pose_net

    return get_pose_net(load_configs(config), is_train=True)


@dataclass
class TeacherRun:
    """A trained teacher: its folder, model (best checkpoint, eval mode), whole-split metrics and card."""

    name: str
    run_dir: Path
    model: nn.Module
    metrics: dict
    steps: int
    batch_size: int
    lr: float
    input_size: tuple[int, int]
    train_time_s: float | None
    card: dict = field(default_factory=dict, repr=False)
    exported: Path | None = None


def _weights_file(init_from) -> Path | None:
    if init_from is None:
        return None
    path = Path(init_from).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def train_teacher(name: str, folder: Path, mode: str, seed: int = 0, config: str = TEACHER_OPTIONS["config"],
                  init_from: str | None = None, train_multiple: int = 1, steps: int | None = None,
                  eval_every: int | None = None, progress: bool = True, record: dict | None = None) -> TeacherRun:
    """Train (or resume, or load) an HRNet teacher in ``folder`` and score it (module docstring).

    ``steps``, batch size, learning rate, augmentation, autocast, device and threads are the mode's
    budget (``budgets.budget``; the runner sets a config's values on it); ``record`` (the run's
    resolved config) is stored in the card."""
    from hrnet_pose.checkpoint import load_pose_checkpoint
    from hrnet_pose.configs import load_configs

    from .budgets import budget, student_amp
    from ..data.datasets import TopDownDataset, dataset_splits
    from ..data.device_data import shuffled_loader
    from ..evaluation.coco import curve_evaluator, first_images
    from .experiments import _device, evaluate_cached
    from . import History, fit, load_checkpoint

    if mode == "full":
        raise ValueError(f"data.mode: full; the {name} teacher trains on the embedded dataset (quick or "
                         "workshop); full mode's teacher is the official HRNet-W48 checkpoint")
    b = budget(mode)
    hcfg = load_configs(config)
    size, hm_size, sigma = tuple(hcfg.MODEL.IMAGE_SIZE), tuple(hcfg.MODEL.HEATMAP_SIZE), float(hcfg.MODEL.SIGMA)
    splits = dataset_splits(mode)
    train_ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, size, hm_size, sigma, train=True, aug=b.aug)
    dataset_text = f"posekd embedded ({mode}) train split"
    if train_multiple > 1:
        from torch.utils.data import ConcatDataset

        from ..data.synth import ensure_extra_train
        from ..data.synth.splits import sizes_for_mode

        n_extra = (train_multiple - 1) * sizes_for_mode(mode)["train"]
        extra = ensure_extra_train(mode, n_extra, progress=progress)
        train_ds = ConcatDataset([train_ds, TopDownDataset(extra.ann_file, extra.img_dir, size, hm_size, sigma,
                                                           train=True, aug=b.aug)])
        dataset_text += f" + the {n_extra} images that follow it (synth.ensure_extra_train)"
    steps = steps or b.steps
    device = _device(b.device)
    loader = shuffled_loader(train_ds, b.batch_size, b.loader, device, b.num_workers)
    torch.manual_seed(seed)
    model = hrnet_teacher(config)
    init = _weights_file(init_from)
    if init is not None and History.steps_done(folder) == 0:
        load_pose_checkpoint(model, init)          # strict: names the file and the keys that differ
    curve_ids = first_images(splits.val.ann_file, CURVE_IMAGES)
    evaluate = curve_evaluator(splits.val, curve_ids, size, hm_size, sigma)
    amp = None if b.amp == "off" else student_amp(TEACHER_MODEL, b)   # float32 where bf16 would be emulated
    t0 = time.perf_counter()
    history = fit(model, loader, max_steps=steps, lr=b.lr, out_dir=folder.parent, run_name=folder.name,
                  save_every_steps=100 if steps > 200 else None, evaluate_fn=evaluate, best_metric="AP",
                  seed=seed, device=device, threads=b.threads, log_every=max(1, min(20, steps // 4)), amp=amp,
                  eval_every_steps=eval_every or min(EVAL_EVERY, steps), channels_last=True,
                  progress=progress)
    wall = time.perf_counter() - t0
    best = folder / "best.pt"
    extras = load_checkpoint(best if best.is_file() else folder / "latest.pt", model)
    model.to(device).eval()
    best_step = extras.get("step") if isinstance(extras, dict) else None
    metrics, _ = evaluate_cached(model, splits.val, size, hm_size, sigma, folder, key={"step": best_step},
                                 batch_size=b.eval_batch_size, progress=progress)
    metrics = {k: v for k, v in metrics.items() if k != "eval_time_s"}
    card = {
        "name": name, "config": config, "input_size_wh": list(size), "heatmap_size_wh": list(hm_size),
        "sigma": sigma, "dataset": dataset_text, "train_persons": len(train_ds), "steps": steps,
        "batch_size": b.batch_size, "lr": b.lr, "seed": seed, "aug": b.aug, "amp": amp,
        "init_from": init_from,
        "best_step": best_step,
        "best_step_val_subset_AP": round(float(extras["metrics"]["AP"]), 4)
        if isinstance(extras, dict) and "metrics" in extras else None,
        "curve": {"val_images": len(curve_ids), "points": [
            {"step": e["step"], "samples": e["step"] * b.batch_size,
             **{k: round(float(e[k]), 4) for k in ("AP", "AP50", "AP75", "mean_OKS")}} for e in history.evals]},
        "command": "python -m posekd_lib.run " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("run.py") else None,
        **({"run_config": record} if record is not None else {}),
        "val_metrics_flip_gt_boxes": {k: round(float(v), 4) for k, v in metrics.items()},
        "train_time_s": history.train_time_s or round(wall, 1), "device": str(device),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
    }
    return TeacherRun(name, folder, model.cpu(), metrics, steps, b.batch_size, b.lr, size,
                      card["train_time_s"], card)


def _card_ap(weights: Path) -> float | None:
    return (_read_card(weights).get("val_metrics_flip_gt_boxes") or {}).get("AP")


def export_teacher(run: TeacherRun, mode: str) -> Path:
    """The ``export`` stage: fp16 weights, ``.json`` card and curve picture (module docstring).
    Returns the weights file written."""
    from hrnet_pose.checkpoint import load_pose_checkpoint, save_fp16_state_dict

    from ..evaluation.plotting import learning_curves

    shipped = SHIPPED_DIR / f"{run.name}.pt"
    new_ap = run.card["val_metrics_flip_gt_boxes"]["AP"]
    rivals = {p: _card_ap(p) for p in (shipped, DEMO_WEIGHTS) if p.is_file()}
    beaten = [f"{shown_path(p)} (AP {ap})" for p, ap in rivals.items() if ap is not None and ap >= new_ap]
    ship = mode == "workshop" and not beaten
    out = shipped if ship else run.run_dir / "export" / f"{run.name}.pt"
    pictures = REPO_ROOT / "images" if ship else out.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    if beaten:
        print(f"{run.name}: AP {new_ap:.4f} does not beat {', '.join(beaten)}; exported to {shown_path(out)}",
              flush=True)
    save_fp16_state_dict(run.model, out)
    load_pose_checkpoint(hrnet_teacher(run.card["config"]), out)         # the file loads strictly
    card = {**run.card, "file_bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    fig = learning_curves([{"name": run.name, "points": card["curve"]["points"]}],
                          f"{run.name}: learning curve on {card['curve']['val_images']} validation images")
    fig.savefig(pictures / f"{run.name}_curve.png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
