"""The dataflow between a model's ai8x layers (torch.fx), for the network YAML and the resource report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .device import Ai8xRuleError
from .layers import Eltwise, QuantizationAwareModule


@dataclass
class TracedNode:
    """One leaf of the traced dataflow: an ai8x layer, an element-wise op or a flatten."""

    name: str
    kind: str                 # layer | eltwise | flatten
    inputs: list[str]         # node names, "input" for the network input
    in_shape: tuple[int, ...]
    pooled_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    module: Any = None
    op: str | None = None


def trace_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[TracedNode]:
    """The model's dataflow between ai8x layers and element-wise ops (torch.fx, with those as
    leaves), with the per-sample shapes of one float forward. Raises `Ai8xRuleError` for any
    other operation than flatten/view before a Linear."""
    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (QuantizationAwareModule, Eltwise)) or super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    shapes: dict[str, tuple] = {}
    pooled: dict[str, tuple] = {}
    hooks = []
    for name, m in modules.items():
        if isinstance(m, (QuantizationAwareModule, Eltwise)):
            def hook(mod, args, out, name=name):
                shapes[name] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))
                if isinstance(mod, QuantizationAwareModule) and mod.pool is not None:
                    pooled[name] = tuple(mod.pool(args[0][:1]).shape[1:])
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(torch.zeros(1, *input_shape, device=p.device if p is not None else "cpu"))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    nodes: list[TracedNode] = []
    alias: dict[str, str] = {}
    for n in graph.nodes:
        if n.op == "placeholder":
            alias[n.name] = "input"
            continue
        if n.op == "output":
            continue
        ins = [alias[a.name] for a in n.all_input_nodes]
        if n.op == "call_module" and isinstance(modules[n.target], (QuantizationAwareModule, Eltwise)):
            m = modules[n.target]
            i_shape, o_shape = shapes[n.target]
            if isinstance(m, Eltwise):
                nodes.append(TracedNode(n.target, "eltwise", ins, i_shape, i_shape, o_shape, m, m.hw_name))
            else:
                nodes.append(TracedNode(n.target, "layer", ins, i_shape, pooled.get(n.target, i_shape),
                                        o_shape, m))
            alias[n.name] = n.target
        elif (n.op == "call_function" and n.target in (torch.flatten,)) or \
                (n.op == "call_method" and n.target in ("flatten", "view", "reshape")) or \
                (n.op == "call_module" and isinstance(modules[n.target], nn.Flatten)):
            nodes.append(TracedNode(n.name, "flatten", ins, (), (), ()))
            alias[n.name] = n.name
        else:
            raise Ai8xRuleError(f"{n.name}: {n.op} {getattr(n.target, '__name__', n.target)} is not an "
                                f"ai8x layer or element-wise op; the device cannot run it")
    return nodes
