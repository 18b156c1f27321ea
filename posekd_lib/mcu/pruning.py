"""Pruning for the MAX78000: structured channel pruning (frees weight memory) versus gradual
magnitude pruning (zeros weights, frees nothing on the chip).

The MAX78000 stores every kernel of a layer in its processors' kernel slots whether or not its
weights are zero, so unstructured sparsity saves no weight memory and no cycles; only removing
whole output channels (and the matching input channels of the next layer) does. `weight_memory_bytes`
reads izer's count from `max78000.resource_report` to show both side by side.

Channel pruning rule: a layer is prunable when its output feeds only plain ai8x layers (convs,
transposed convs, linears) and it is not the network's output. A layer whose output goes into an
element-wise add/sub, or to several consumers that must agree on channel order, is left alone
(an add needs equal channel sets on both operands; pruning them consistently is not done here).
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from . import ai8x
from .max78000 import resource_report


def weight_memory_bytes(model: nn.Module, input_shape: tuple[int, int, int], device: int = 85,
                        data_format: str = "HWC") -> int:
    """MAX78000 weight memory the model takes (izer's count: every kernel, zero or not)."""
    return resource_report(model, input_shape, device, data_format).totals["weight_bytes"]


# --------------------------------------------------------------------------------------------
# structured channel pruning

def _out_dim(op: nn.Module) -> int:
    return 1 if isinstance(op, nn.ConvTranspose2d) else 0


def channel_importance(layer: ai8x.QuantizationAwareModule) -> torch.Tensor:
    """Per-output-channel importance: |BN gamma| when the layer has an affine BN, else the L1
    norm of the channel's filter."""
    bn = layer.bn
    if bn is not None and bn.weight is not None:
        return bn.weight.detach().abs()
    w = layer.op.weight.detach()
    d = _out_dim(layer.op)
    return w.abs().transpose(0, d).reshape(w.shape[d], -1).sum(1)


def prunable_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, list[str]]:
    """``{layer: [consumer layers]}`` for every ai8x layer that may lose output channels: it
    has weights, is not the output and feeds only ai8x layers with weights (no element-wise
    op, no flatten, no pool-only layer)."""
    nodes = ai8x.trace_layers(model, input_shape)
    by_name = {n.name: n for n in nodes}
    consumers: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i in consumers:
                consumers[i].append(n.name)
    out = {}
    for n in nodes:
        cons = consumers[n.name]
        if n.kind != "layer" or n.module.op is None or not cons:
            continue
        if all(by_name[c].kind == "layer" and by_name[c].module.op is not None
               and not isinstance(by_name[c].module.op, nn.Linear) for c in cons):
            out[n.name] = cons
    return out


def _slice(t: torch.Tensor | None, dim: int, keep: torch.Tensor):
    return None if t is None else t.detach().index_select(dim, keep).clone()


def _new_op(op: nn.Module, c_in: int, c_out: int) -> nn.Module:
    kw = dict(kernel_size=op.kernel_size, stride=op.stride, padding=op.padding, bias=op.bias is not None)
    if isinstance(op, nn.ConvTranspose2d):
        return nn.ConvTranspose2d(c_in, c_out, output_padding=op.output_padding, **kw)
    return nn.Conv2d(c_in, c_out, **kw)


def _prune_outputs(layer, keep: torch.Tensor) -> None:
    op = layer.op
    d = _out_dim(op)
    new = _new_op(op, op.in_channels, len(keep))
    new.weight.data = _slice(op.weight, d, keep)
    if op.bias is not None:
        new.bias.data = _slice(op.bias, 0, keep)
    layer.op = new.to(op.weight.device)
    if layer.bn is not None:
        bn = layer.bn
        nb = nn.BatchNorm2d(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine).to(op.weight.device)
        if bn.affine:
            nb.weight.data, nb.bias.data = _slice(bn.weight, 0, keep), _slice(bn.bias, 0, keep)
        nb.running_mean.data = _slice(bn.running_mean, 0, keep)
        nb.running_var.data = _slice(bn.running_var, 0, keep)
        nb.num_batches_tracked.data = bn.num_batches_tracked.detach().clone()
        layer.bn = nb


def _prune_inputs(layer, keep: torch.Tensor) -> None:
    op = layer.op
    d = 1 - _out_dim(op)
    new = _new_op(op, len(keep), op.out_channels)
    new.weight.data = _slice(op.weight, d, keep)
    if op.bias is not None:
        new.bias.data = op.bias.detach().clone()
    layer.op = new.to(op.weight.device)


def prune_channels(model: nn.Module, input_shape: tuple[int, int, int], ratio: float = 0.25,
                   layers: Iterable[str] | None = None, multiple: int = 4) -> nn.Module:
    """A copy of `model` with the least important ``ratio`` of output channels removed from each
    prunable layer (all of `prunable_layers`, or the named ``layers``), and the matching input
    channels removed from its consumers. Kept channel counts are rounded up to a ``multiple``
    (4 processors share a data-memory instance). Importance: `channel_importance`. The copy keeps
    the model's class and module names, so it trains, checks and exports like the original; a
    model with a ``spec`` (`ai8x_models.AI85PoseNet`) gets its spec updated."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must lie in [0, 1), got {ratio}")
    out = copy.deepcopy(model)
    allowed = prunable_layers(out, input_shape)
    names = list(allowed) if layers is None else list(layers)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"layers {bad} cannot be channel-pruned (they feed an element-wise op, a "
                         f"flatten or nothing); prunable: {sorted(allowed)}")
    mods = dict(out.named_modules())
    widths = {}
    for name in names:
        layer = mods[name]
        c = layer.op.weight.shape[_out_dim(layer.op)]
        n_keep = min(c, max(multiple, -(-round(c * (1.0 - ratio)) // multiple) * multiple))
        if n_keep == c:
            continue
        keep = torch.sort(torch.topk(channel_importance(layer), n_keep).indices).values
        _prune_outputs(layer, keep.to(layer.op.weight.device))
        for consumer in allowed[name]:
            _prune_inputs(mods[consumer], keep.to(layer.op.weight.device))
        widths[name] = n_keep
    if hasattr(out, "spec"):
        out.spec = tuple((n, k, widths.get(n, c)) for n, k, c in out.spec)
    ai8x.check_model(out)
    return out


# --------------------------------------------------------------------------------------------
# gradual magnitude pruning (Zhu & Gupta 2017)

def gmp_sparsity(step: int, total_steps: int, final_sparsity: float = 0.5,
                 initial_sparsity: float = 0.0, start_step: int = 0) -> float:
    """Sparsity at `step`: ``s_f + (s_i - s_f) * (1 - t/n)**3`` with ``t = step - start_step``
    clipped to [0, n], ``n = total_steps - start_step``."""
    n = max(1, total_steps - start_step)
    t = min(max(step - start_step, 0), n)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t / n) ** 3


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The ai8x layers' ``op.weight`` tensors (the head included)."""
    return {f"{n}.op.weight": m.op.weight for n, m in ai8x.ai8x_layers(model) if m.op is not None}


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Per-layer masks zeroing the `sparsity` fraction of smallest-|w| weights of each layer."""
    masks = {}
    for key, w in prunable_weights(model).items():
        a = w.detach().abs().flatten()
        k = int(round(sparsity * a.numel()))
        mask = torch.ones_like(a, dtype=torch.bool)
        if k > 0:
            mask[torch.topk(a, k, largest=False).indices] = False
        masks[key] = mask.reshape(w.shape)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked weights in place."""
    weights = prunable_weights(model)
    with torch.no_grad():
        for key, mask in masks.items():
            weights[key].mul_(mask.to(weights[key].dtype))


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zero weights over all ai8x layer weights."""
    ws = list(prunable_weights(model).values())
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


class GradualMagnitudePruner:
    """Gradual magnitude pruning during fine-tuning: call `step(i)` after every optimizer step;
    every ``every`` steps the masks are recomputed at `gmp_sparsity(i)`, and the current masks
    are re-applied each step (so pruned weights stay zero). Call it from a training loop, or
    hook it onto an optimizer with `masked_optimizer_step`."""

    def __init__(self, model: nn.Module, total_steps: int, final_sparsity: float = 0.5,
                 initial_sparsity: float = 0.0, start_step: int = 0, every: int = 1):
        self.model, self.total_steps, self.every = model, total_steps, max(1, every)
        self.final, self.initial, self.start = final_sparsity, initial_sparsity, start_step
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0

    def step(self, i: int) -> float:
        if (i - self.start) % self.every == 0 or i >= self.total_steps:
            self.sparsity = gmp_sparsity(i, self.total_steps, self.final, self.initial, self.start)
            self.masks = magnitude_masks(self.model, self.sparsity)
        if self.masks:
            apply_masks(self.model, self.masks)
        return self.sparsity


def masked_optimizer_step(optimizer: torch.optim.Optimizer, pruner: GradualMagnitudePruner):
    """Run `pruner.step` after every ``optimizer.step()`` (a step post-hook, so it works with
    `train.fit`, which steps the optimizer it is given). Returns the hook handle."""
    counter = {"i": 0}

    def hook(opt, args, kwargs):
        counter["i"] += 1
        pruner.step(counter["i"])

    return optimizer.register_step_post_hook(hook)
