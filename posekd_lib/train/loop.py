"""The loop: set-up (devices, DDP, AMP, schedules) and ``fit``."""
from __future__ import annotations

import functools
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .. import config
from .checkpoints import RunState, atomic_save, resume_training, save_training
from .guard import DivergenceGuard
from .history import History
from .order import _epoch_loader, _to_device, epoch_batches
from .rng import seed_everything


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX on x86, as oneDNN reads it).

    Without it, bf16 autocast on the CPU is emulated and a student's training step is about 9 times
    *slower* than in float32 (measured on an AVX2-only AMD EPYC: SqueezeNet 4.7 s against 0.53 s per
    step of 32, one thread), so :func:`_resolve_amp` trains such a CPU in float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu = getattr(torch, "cpu", None)
        return bool(cpu is not None and (getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                                         or getattr(cpu, "_is_amx_tile_supported", lambda: False)()))


@functools.lru_cache(maxsize=None)
def _note_float32_cpu() -> None:
    print("training in float32: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 would be "
          "many times slower")


def _resolve_amp(amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``fit(amp=...)`` on ``device``, or None for float32.

    ``"auto"``: bf16 (or fp16) on CUDA, float32 on the CPU. ``"bf16"`` also runs on the CPU, where
    oneDNN's bf16 kernels make convolutions much faster on processors with AMX or AVX512-BF16
    (``benchmarks/bench_learning.py`` measures speed and accuracy) — and float32 on a CPU without
    them (:func:`cpu_has_native_bf16`), where bf16 would be emulated, many times slower. fp16 is
    CUDA only.
    """
    if amp in (None, False, "off", "none"):
        return None
    if amp != "auto" and amp not in _AMP_DTYPES:
        raise ValueError(f"amp={amp!r}: use 'auto', 'bf16', 'fp16' or None")
    if device.type != "cuda":
        if amp in ("bf16", "bfloat16") and device.type == "cpu":
            if cpu_has_native_bf16():
                return torch.bfloat16
            _note_float32_cpu()
            return None
        if amp != "auto":
            print(f"fit: amp={amp!r} ignored on {device.type}; only bf16 runs on the CPU")
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _AMP_DTYPES[amp]


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Per-step LR factor: linear warm-up, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(step - warmup_steps, total_steps - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _build_scheduler(scheduler, optimizer, total_steps: int):
    if scheduler is None or scheduler == "constant":
        return None
    if scheduler == "cosine":
        return cosine_schedule(optimizer, total_steps)
    if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return scheduler
    if callable(scheduler):
        return scheduler(optimizer, total_steps)
    raise ValueError(f"scheduler={scheduler!r}: use 'cosine', 'constant'/None, an LRScheduler, "
                     "or a callable (optimizer, total_steps) -> LRScheduler")


def _components(task) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and the named values to log, following the loss contract in the module docstring."""
    if isinstance(task, dict):
        if "loss" not in task:
            raise KeyError(f"loss_fn returned a dict without 'loss' (keys: {sorted(task)})")
        comps = dict(task)
    else:
        comps = {"loss": task}
    return comps["loss"], comps


@contextmanager
def _runtime(device, threads: int | None):
    """Rank, world size and device of this process; sets up (and afterwards undoes) DDP and CPU threads."""
    rank, world, local_rank = _dist_env()
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    prev_threads = torch.get_num_threads()
    config.set_torch_threads(threads or (None if world == 1 else max(1, (os.cpu_count() or 1) // world)))
    try:
        yield rank, world, device
    finally:
        torch.set_num_threads(prev_threads)
        if own_group:
            dist.destroy_process_group()


def fit(model: nn.Module, train_loader: DataLoader, *, loss_fn: Callable | None = None,
        epochs: int | None = None, max_steps: int | None = None,
        optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3, scheduler="cosine",
        device: str | torch.device = "auto", amp="auto", out_dir: Path | None = None, run_name: str = "run",
        save_every_steps: int | None = None, evaluate_fn: Callable[[nn.Module], dict] | None = None,
        best_metric: str = "AP", best_mode: str = "max", resume: bool = True, seed: int = 0,
        log_every: int = 10, grad_clip: float | None = None,
        threads: int | None = None, progress: bool = True, channels_last: bool = False,
        eval_every_steps: int | None = None) -> History:
    """Train ``model`` for ``epochs`` (or ``max_steps``, whichever ends first) and return the History.

    ``loss_fn`` defaults to ``model.loss`` when the model has one (a distiller), else JointsMSE on
    ``batch["target"]``; see the module docstring for the loss
    contract and for the files written under ``out_dir/run_name``
    (``out_dir`` defaults to ``config.run_paths().checkpoints``). ``optimizer`` defaults to Adam(lr);
    ``scheduler`` is stepped every step. ``evaluate_fn(model) -> dict`` runs after every epoch
    (every ``eval_every_steps`` steps instead when given: a learning curve) and at the end; ``best.pt`` keeps the model with the best ``best_metric``. With ``resume`` a run
    continues from ``latest.pt`` at the exact step and batch it saved; a run that already finished
    loads its final weights and returns its history at once. Under ``torchrun`` the same call
    trains with DistributedDataParallel (gloo on CPU, nccl on CUDA); only rank 0 logs and saves, and
    BatchNorm buffers end equal to rank 0's. ``threads`` sets torch's intra-op threads for the run
    (default: all cores, split between local ranks; 1 is faster for tiny models on a busy machine).
    ``channels_last`` stores the model's weights and the batch images as NHWC, which PyTorch's CPU
    convolutions run ~15-25 % faster for these small nets (same numbers up to float rounding).

    Divergence stops the run with :class:`TrainingDivergedError` (``NonFiniteLossError`` for a NaN
    or infinite loss), naming the run, step, epoch and batch and, when the batch's ``meta`` has
    ``index`` / ``image_id``, its samples: a non-finite loss, or a loss over
    ``LOSS_GROWTH_LIMIT`` (1e4) times the largest of the first ``LOSS_REFERENCE_STEPS`` steps,
    before the backward pass; non-finite gradients before the optimizer step (without fp16, whose
    scaler skips such steps itself); non-finite weights, or a weight norm over
    ``WEIGHT_GROWTH_LIMIT`` (1e3) times the run's start, after it. No checkpoint holding a
    non-finite weight, buffer or optimizer state is ever written, so the "last good checkpoint"
    the message names (one saved or resumed by this run) is good.
    """
    if epochs is None and max_steps is None:
        raise ValueError("fit: give epochs, max_steps or both")
    with _runtime(device, threads) as (rank, world, device):
        return _train(**locals())


def _train(model, train_loader, loss_fn, epochs, max_steps, optimizer, lr, scheduler, amp, out_dir, run_name,
           save_every_steps, evaluate_fn, best_metric, best_mode, resume, seed, log_every,
           grad_clip, progress, rank, world, device, channels_last=False, eval_every_steps=None, **_) -> History:
    """The body of :func:`fit`, once the process's rank, world size and device are known."""
    from ..config import progress_bar as tqdm

    seed_everything(seed + rank)
    say = print if progress and rank == 0 else (lambda *a, **k: None)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = len(epoch_batches(train_loader, 0, seed, rank, world))
    if steps_per_epoch == 0:
        raise ValueError(f"fit: train_loader yields no batches ({len(train_loader.dataset)} samples)")
    total_steps = min(x for x in (max_steps, epochs and epochs * steps_per_epoch) if x is not None)
    sched = _build_scheduler(scheduler, optimizer, total_steps)
    step_fn = _Step(model, _default_loss(model, loss_fn), optimizer, sched, _resolve_amp(amp, device), grad_clip,
                    device, channels_last, world)

    run_dir = Path(out_dir or config.run_paths().checkpoints) / run_name
    latest, best_path = run_dir / "latest.pt", run_dir / "best.pt"
    if rank == 0 and run_dir.is_dir():
        for stale in run_dir.glob(".*.tmp*"):  # left by a run killed while saving
            stale.unlink()
    state, reference, resumed = RunState(), {}, resume and latest.is_file()
    if resumed:
        state, reference = resume_training(latest, model, optimizer, sched, step_fn.scaler)
        say(f"{run_name}: resuming from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")
    if state.step >= total_steps:
        say(f"{run_name}: already trained for {state.step} steps")
        return state.history
    guard = DivergenceGuard(run_name, model, optimizer, state.position, reference, latest if resumed else None)
    clock, time_before = time.perf_counter(), state.history.train_time_s   # a resumed run adds to its time so far
    net = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    net.train()
    with tqdm(total=total_steps, initial=state.step, desc=run_name, disable=not (progress and rank == 0),
              dynamic_ncols=True) as bar:
        while state.step < total_steps:
            batches = epoch_batches(train_loader, state.epoch, seed, rank, world)
            for batch in _epoch_loader(train_loader, batches[state.batch_in_epoch:], seed, state.epoch):
                state.add(step_fn(net, batch, guard))
                bar.update(1)
                epoch_end, last = state.batch_in_epoch == len(batches), state.step == total_steps
                if state.step % log_every == 0 or epoch_end or last:
                    means = state.take_means()
                    state.history.log(state.step, state.epoch + state.batch_in_epoch / len(batches),
                                      optimizer.param_groups[0]["lr"], means)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
                if epoch_end:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if evaluate_fn is not None and (last or (state.step % eval_every_steps == 0 if eval_every_steps
                                                         else epoch_end)):
                    metrics = _evaluate(model, evaluate_fn, state, best_metric, rank, world)
                    state.history.evals.append(metrics)
                    if state.best is None or _better(metrics[best_metric], state.best["value"], best_mode):
                        state.best = {"metric": best_metric, "value": metrics[best_metric], "step": state.step,
                                      "epoch": state.epoch}
                        guard.check_savable()
                        if rank == 0:
                            atomic_save({"model": model.state_dict(), "metrics": metrics, "step": state.step},
                                        best_path)
                    say(f"{run_name} step {state.step}: " + ", ".join(
                        f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
                if epoch_end or last or (save_every_steps and state.step % save_every_steps == 0):
                    guard.check_savable()
                    if rank == 0:
                        state.history.train_time_s = round(time_before + time.perf_counter() - clock, 1)
                        save_training(latest, model, optimizer, sched, step_fn.scaler, state, guard.reference,
                                      seed, run_name)
                        guard.last_good = latest
                if state.step >= total_steps:
                    break
    if world > 1:
        for b in model.buffers():
            dist.broadcast(b, src=0)
    return state.history


def _default_loss(model: nn.Module, loss_fn):
    """``loss_fn``, else the model's own ``loss`` method (a distiller), else JointsMSE on the targets."""
    from ..distill.losses import batch_loss

    own_loss = getattr(model, "loss", None)
    return loss_fn or (own_loss if callable(own_loss) and not isinstance(own_loss, nn.Module) else batch_loss())


class _Step:
    """One training step: forward under autocast, the guard's checks, backward, clip, optimizer and
    scheduler step; returns the step's logged values (averaged over ranks)."""

    def __init__(self, model, loss_fn, optimizer, sched, amp_dtype, grad_clip, device, channels_last, world):
        self.model, self.loss_fn, self.optimizer, self.sched = model, loss_fn, optimizer, sched
        self.amp_dtype, self.grad_clip, self.device = amp_dtype, grad_clip, device
        self.channels_last, self.world = channels_last, world
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def __call__(self, net: nn.Module, batch, guard: DivergenceGuard) -> dict[str, float]:
        batch = _to_device(batch, self.device)
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            total, comps = _components(self.loss_fn(net(batch["image"]), batch))
        values = torch.stack([v.detach().float() for v in comps.values()])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        values = dict(zip(comps, values.tolist()))
        guard.check_loss(values, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
        if not self.scaler.is_enabled():  # fp16: the scaler itself skips steps with inf/nan gradients
            guard.check_grads(values, batch)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        lr_used = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.sched is not None:
            self.sched.step()
        guard.check_update(lr_used, batch)
        return values


def _evaluate(model: nn.Module, evaluate_fn, state: RunState, best_metric: str, rank: int, world: int) -> dict:
    """``evaluate_fn(model)`` on rank 0 (eval mode, no gradients), broadcast to every rank."""
    metrics = None
    if rank == 0:
        model.eval()
        with torch.no_grad():
            metrics = {"epoch": state.epoch, "step": state.step, **evaluate_fn(model)}
        model.train()
    if world > 1:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    if best_metric not in metrics:
        raise KeyError(f"evaluate_fn returned no {best_metric!r} (keys: {sorted(metrics)})")
    return metrics


def _better(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best
