"""The divergence guard: what stops ``fit`` (non-finite loss, gradients or weights; exploding loss or
weights) and the message that names the parameters and samples involved."""
from __future__ import annotations

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
