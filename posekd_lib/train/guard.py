"""The divergence guard: what stops ``fit`` (non-finite loss, gradients or weights; exploding loss or
weights) and the message that names the parameters and samples involved."""
from __future__ import annotations

import math

import torch
from torch import nn


class TrainingDivergedError(FloatingPointError):
    """Training stopped because it diverged: non-finite gradients or weights, or a loss or weights
    exploding (see :func:`fit`). The step's update is not saved; no checkpoint with non-finite or
    exploded weights is ever written."""


class NonFiniteLossError(TrainingDivergedError):
    """Raised when a training loss is NaN or infinite (the step's weights are not updated or saved)."""


#: ``fit`` stops when the weight norm exceeds this multiple of its norm at the start of the run.
WEIGHT_GROWTH_LIMIT = 1e3
#: ``fit`` stops when the loss exceeds this multiple of the largest loss of the run's first steps.
LOSS_GROWTH_LIMIT = 1e4
#: How many first steps set the loss reference of ``LOSS_GROWTH_LIMIT``.
LOSS_REFERENCE_STEPS = 10


def _trained_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every floating-point parameter the optimizer updates (adapters outside
    ``model`` included; integer ones, such as ai8x's, cannot go non-finite)."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return [(names.get(id(p), f"optimizer parameter {i}"), p) for i, p in enumerate(params)
            if p.is_floating_point() or p.is_complex()]


def _weight_norm(params) -> float:
    """L2 norm of all ``params`` together (inf or nan when one is non-finite or overflows)."""
    norms = [torch.linalg.vector_norm(p.detach()).double() for _, p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _non_finite(named_tensors) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity (one device sync when none does)."""
    named = [(n, t) for n, t in named_tensors if torch.is_tensor(t) and t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    if bool(finite.all()):
        return []
    return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]


def _optimizer_tensors(optimizer: torch.optim.Optimizer):
    for i, state in enumerate(optimizer.state.values()):
        for k, v in state.items():
            if torch.is_tensor(v):
                yield f"state[{i}].{k}", v


def _names(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _batch_samples(batch) -> str:
    """Which samples a batch holds, from its ``meta`` (``index``, ``image_id``), and which of them
    carry non-finite inputs; "" when the batch carries no ids."""
    meta = batch.get("meta") if isinstance(batch, dict) else None
    parts = []

    def ids(key):
        v = meta.get(key) if isinstance(meta, dict) else None
        if torch.is_tensor(v):
            v = v.reshape(-1).tolist()
        return [int(x) for x in v] if isinstance(v, (list, tuple)) else None

    index, image_id = ids("index"), ids("image_id")
    if index is not None:
        parts.append(f"the batch holds samples {index[:16]}{' ...' if len(index) > 16 else ''}"
                     + (f" (image ids {image_id[:16]}{' ...' if len(image_id) > 16 else ''})" if image_id else ""))
    if isinstance(batch, dict):
        bad = set()
        for v in batch.values():
            if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0 and v.numel():
                rows = ~torch.isfinite(v.reshape(len(v), -1)).all(dim=1)
                bad |= set(torch.nonzero(rows).reshape(-1).tolist())
        if bad:
            rows = sorted(bad)
            if index is not None and rows[-1] < len(index):
                parts.append(f"non-finite inputs in samples {[index[r] for r in rows]}")
            else:
                parts.append(f"non-finite inputs in batch rows {rows}")
    return "; ".join(parts)


class DivergenceGuard:
    """The checks ``fit`` runs around each step, and the error that stops a diverged run.

    ``reference`` holds what the growth limits compare with: ``weight_norm`` (the trained
    parameters' norm at the run's start) and ``loss`` (the largest loss of the first
    ``LOSS_REFERENCE_STEPS`` steps); a resumed run passes its checkpoint's. ``position()`` returns
    the run's (step, epoch, batch in epoch) when a check fails; ``last_good`` is the checkpoint the
    message calls good (one this run saved or resumed from)."""

    def __init__(self, run_name: str, model: nn.Module, optimizer: torch.optim.Optimizer, position,
                 reference: dict | None = None, last_good=None):
        self.run_name, self.model, self.optimizer, self.position = run_name, model, optimizer, position
        self.params = _trained_params(model, optimizer)
        self.reference = dict(reference or {})
        self.reference.setdefault("weight_norm", _weight_norm(self.params))
        self.reference.setdefault("loss", 0.0)
        self.last_good = last_good

    def _good(self) -> str:
        return (f"the last good checkpoint is {self.last_good}" if self.last_good is not None
                else "no checkpoint of this run was saved")

    def fail(self, what: str, detail: str, batch=None, cls=TrainingDivergedError, updated: bool = False):
        step, epoch, batch_in_epoch = self.position()
        samples = _batch_samples(batch) if batch is not None else ""
        done = ("the update was not saved (the model in memory holds it)" if updated
                else "weights were not updated")
        raise cls(f"{self.run_name}: {what} at step {step + 1} (epoch {epoch}, batch {batch_in_epoch}): {detail}; "
                  + (f"{samples}; " if samples else "") + f"{done} and {self._good()}")

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def check_loss(self, values: dict[str, float], batch) -> None:
        """Before the backward pass: a finite loss, not over ``LOSS_GROWTH_LIMIT`` x the reference."""
        if not all(math.isfinite(v) for v in values.values()):
            self.fail("non-finite loss", str(values), batch, NonFiniteLossError)
        step, ref = self.position()[0], self.reference
        if step < LOSS_REFERENCE_STEPS:
            ref["loss"] = max(ref["loss"], values["loss"])
        elif ref["loss"] > 0 and values["loss"] > LOSS_GROWTH_LIMIT * ref["loss"]:
            self.fail("the loss exploded", f"{values['loss']:.4g}, over {LOSS_GROWTH_LIMIT:g}x the largest of the "
                      f"first {LOSS_REFERENCE_STEPS} steps ({ref['loss']:.4g}); lower the learning rate "
                      f"(lr {self._lr():.3g})", batch)

    def check_grads(self, values: dict[str, float], batch) -> None:
        """Before the optimizer step: finite gradients (not under fp16, whose scaler skips such steps)."""
        bad = _non_finite((n, p.grad) for n, p in self.params)
        if bad:
            self.fail("non-finite gradients", f"in {_names(bad)}, although the loss was finite ({values})", batch)

    def check_update(self, lr_used: float, batch) -> None:
        """After the optimizer step: finite weights under ``WEIGHT_GROWTH_LIMIT`` x their start norm
        (a start norm of 0, an all-zero init, only gets the finiteness check), and finite buffers."""
        norm, start = _weight_norm(self.params), self.reference["weight_norm"]
        if not math.isfinite(norm) or 0 < WEIGHT_GROWTH_LIMIT * start < norm:
            bad = _non_finite(self.params)
            what, detail = (("the update made weights non-finite", f"in {_names(bad)}") if bad else
                            ("the weights exploded", f"their norm grew from {start:.4g} to {norm:.4g}, over "
                             f"{WEIGHT_GROWTH_LIMIT:g}x its start"))
            self.fail(what, f"{detail}; lower the learning rate (lr {lr_used:.3g})", batch, updated=True)
        bad = _non_finite(self.model.named_buffers())   # BatchNorm statistics, updated by the forward pass
        if bad:
            self.fail("the forward pass made buffers non-finite",
                      f"in {_names(bad)} (BatchNorm running statistics follow the activations); lower the "
                      f"learning rate (lr {lr_used:.3g})", batch, updated=True)

    def check_savable(self) -> None:
        """Refuse to write a checkpoint holding non-finite weights, buffers or optimizer state (run on
        every rank, whose state equals rank 0's, so all of them stop together under DDP)."""
        bad = _non_finite(self.model.state_dict().items()) + _non_finite(_optimizer_tensors(self.optimizer))
        if bad:
            raise TrainingDivergedError(f"{self.run_name}: not saving step {self.position()[0]}: non-finite values "
                                        f"in {_names(bad)}; {self._good()}")
