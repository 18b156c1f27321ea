"""The MAX78000 / MAX78002 layer planner and resource report.

The limits live in `posekd_lib.mcu.hardware` (re-exported here); `resource_report`
maps a model onto hardware layers with izer's rules (processors, kernel slots, bias bytes,
data memory, an estimated cycle count) so a student network can be checked before synthesis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import ai8x
from .hardware import LIMITS, MAX78000, MAX78002, Limits, limits  # noqa: F401 (re-exported)

# --------------------------------------------------------------------------------------------
# Mapping a model onto hardware layers (shared by the resource report and the network YAML)

@dataclass
class HwLayer:
    """One izer hardware layer: what the YAML describes and what the report counts."""

    name: str
    op: str                                   # conv2d | convtranspose2d | linear | passthrough
    module: str | None                        # PyTorch module name (None for inserted copies)
    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    pooled_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kernel: int = 1
    pad: int = 0
    pooling: str | None = None                # "Max" | "Avg"
    pool_size: int = 1
    pool_stride: int = 1
    pool_first: bool = True
    activation: str | None = None
    wide: bool = False
    weight_bits: int = 8
    biased: bool = False
    n_weights: int = 0
    inputs: list[str] = field(default_factory=list)   # producing hw layers ("input" = network input)
    eltwise: str | None = None
    write_gap: int = 0
    out_delta: int = 0                        # byte offset inside an interleaved operand buffer
    flatten: bool = False
    streaming: bool = False
    processors: int = 0
    output_processors: int = 0
    in_offset: int = 0
    out_offset: int = 0
    in_bytes: int = 0                         # per data-memory instance, all operands
    out_bytes: int = 0                        # per instance, including write gaps
    memory_note: str = ""                     # why the output could not be placed
    rolling: bool = False                     # streamed into a streaming layer (FIFO-like buffer)

    @property
    def operands(self) -> int:
        return max(1, len(self.inputs)) if self.eltwise else 1


def _expand(channels: int, lim: Limits) -> tuple[int, int]:
    """(passes, channels per pass) as izer computes them: >64 channels run in multiple passes,
    with a per-pass count rounded up to a multiple of 4."""
    passes = -(-channels // lim.processors)
    per_pass = -(-channels // passes)
    if channels > lim.processors:
        per_pass = min(-(-per_pass // lim.processors_per_memory) * lim.processors_per_memory,
                       lim.processors)
    return passes, per_pass


def processor_mask(channels: int, device: int = MAX78000) -> int:
    """The packed, 0-aligned processor mask izer expects for `channels` input channels."""
    return (1 << _expand(channels, limits(device))[1]) - 1


def plan_hardware_layers(model, input_shape: tuple[int, int, int], device: int = MAX78000,
                         data_format: str = "HWC") -> list[HwLayer]:
    """Trace `model` (ai8x layers and Add/Sub as leaves) and map it onto izer hardware layers:
    one layer per ai8x layer; an element-wise op is fused into its single consumer
    (``pool_first: false`` when that consumer pools); an operand whose producer feeds anything
    else gets an interleaving pass-through copy. Offsets are assigned by a first-fit ping-pong
    allocator in 8 KiB steps. The model's hardware rules are re-checked for `device` first
    (`ai8x.check_model`): a layer changed after construction raises `ai8x.Ai8xRuleError`
    naming it, rather than getting a plan."""
    lim = limits(device)
    ai8x.check_model(model, lim.device)
    graph = ai8x.trace_layers(model, input_shape)
    return _assign_memory(_build_layers(graph, lim, data_format, input_shape), lim, data_format)


def _build_layers(graph, lim: Limits, data_format: str, input_shape) -> list[HwLayer]:
    nodes = {n.name: n for n in graph}
    consumers: dict[str, list[str]] = {n.name: [] for n in graph}
    consumers["input"] = []
    for n in graph:
        for i in n.inputs:
            consumers[i].append(n.name)

    layers: list[HwLayer] = []
    made: dict[str, str] = {"input": "input"}       # graph node -> hw layer producing its value
    for n in graph:
        if n.kind == "eltwise":
            users = consumers[n.name]
            if len(users) != 1 or nodes[users[0]].kind != "layer":
                raise ai8x.Ai8xRuleError(
                    f"{n.name}: an element-wise {n.op} must feed exactly one ai8x layer, which "
                    f"runs it in hardware (it feeds {users or 'nothing'})")
            continue
        if n.kind == "flatten":
            made[n.name] = made[n.inputs[0]]
            continue
        m = n.module
        src = nodes.get(n.inputs[0])
        eltwise_inputs = src.inputs if src is not None and src.kind == "eltwise" else None
        in_shape, flatten = tuple(n.in_shape), False
        if src is not None and src.kind == "flatten":
            pre = nodes[src.inputs[0]].out_shape if src.inputs[0] in nodes else input_shape
            in_shape, flatten = tuple(pre), len(pre) > 1 and tuple(pre[1:]) != (1, 1)
        hw = tuple(in_shape[1:]) or (1, 1)
        layer = HwLayer(
            name=n.name, module=n.name, op=m.hw_op, in_channels=in_shape[0],
            out_channels=n.out_shape[0], in_hw=hw,
            pooled_hw=tuple(n.pooled_shape[1:]) or hw, out_hw=tuple(n.out_shape[1:]) or (1, 1),
            kernel=m.kernel_size_int or 1, pad=m.padding_int, pooling=m.pooling,
            pool_size=m.pool_size_int if m.pooling else 1,
            pool_stride=m.pool_stride_int if m.pooling else 1,
            activation=m.activation, wide=m.wide, weight_bits=m.bits_for_export(),
            biased=m.has_bias(), n_weights=m.op.weight.numel() if m.op is not None else 0,
            flatten=flatten)
        if eltwise_inputs is not None:
            host = layer
            if not lim.eltwise_in_biased_conv and layer.biased and layer.op != "passthrough":
                hw = layer.in_hw
                host = HwLayer(name=src.name, op="passthrough", module=None,
                               in_channels=layer.in_channels, out_channels=layer.in_channels,
                               in_hw=hw, pooled_hw=hw, out_hw=hw)
            host.eltwise = src.op
            host.pool_first = not host.pooling
            ops = []
            for k, operand in enumerate(eltwise_inputs):
                producer = made[operand]
                direct = (producer != "input" and len(consumers[operand]) == 1
                          and operand not in eltwise_inputs[:k])
                ops.append((producer, direct))
            position = {l.name: i for i, l in enumerate(layers)}
            direct_at = [position[p] for p, d in ops if d]
            insert_at = max(direct_at) if direct_at else len(layers)
            insert_at = max([insert_at] + [position[p] + 1 for p, d in ops if not d and p in position])
            inputs = []
            copies = []
            for k, (producer, direct) in enumerate(ops):
                if direct:
                    inputs.append(producer)
                    continue
                src_layer = next((l for l in layers if l.name == producer), None)
                shape = (src_layer.out_channels, *src_layer.out_hw) if src_layer else \
                    nodes[eltwise_inputs[k]].out_shape
                taken = {m.name for m in layers} | {c.name for c in copies} | set(nodes)
                copy_name = next(f"res_copy{'' if i == 0 else f'_{i}'}" for i in range(len(taken) + 1)
                                 if f"res_copy{'' if i == 0 else f'_{i}'}" not in taken)
                copy = HwLayer(name=copy_name,
                               op="passthrough", module=None, in_channels=shape[0],
                               out_channels=shape[0], in_hw=tuple(shape[1:]),
                               pooled_hw=tuple(shape[1:]), out_hw=tuple(shape[1:]),
                               inputs=[producer])
                copies.append(copy)
                inputs.append(copy.name)
            layers[insert_at:insert_at] = copies
            by_name = {l.name: l for l in layers}
            for k, name in enumerate(inputs):
                by_name[name].write_gap = len(inputs) - 1
                by_name[name].out_delta = 4 * k
            host.inputs = inputs
            if host is not layer:
                layers.append(host)
                layer.inputs = [host.name]
        else:
            layer.inputs = [made[n.inputs[0]]]
        layers.append(layer)
        made[n.name] = layer.name
    if not layers:
        raise ai8x.Ai8xRuleError("the model has no ai8x layers to map onto the device")
    late = [l.name for l in layers[1:] if "input" in l.inputs]
    if late:
        raise ai8x.Ai8xRuleError(f"{late[0]}: only the first hardware layer can read the network "
                                 f"input; start the network with one layer that all branches share")

    # streaming: the leading layers whose input or output does not fit one data-memory instance
    cap = lim.data_memory_per_instance
    for k, l in enumerate(layers):
        if _in_bytes(l, lim, data_format if k == 0 else "HWC") <= cap and _out_bytes(l, lim) <= cap:
            break
        l.streaming = True
    for l in layers:
        l.processors = processor_mask(l.in_channels, lim.device)
    first, chw = layers[0], data_format.upper() == "CHW"
    if chw or first.streaming:
        # CHW: one channel per data-memory instance; streamed input: the FIFOs feed processors
        # 0, 16, 32, 48 (CHW) or 0-3, 16-19, ... (HWC)
        per = 1 if chw else lim.processors_per_memory
        step = lim.processors_per_group if first.streaming else lim.processors_per_memory
        most = per * (lim.processors // step)
        if first.in_channels > most:
            raise ai8x.Ai8xRuleError(
                f"{first.name}: {data_format.upper()}{' streamed' if first.streaming else ''} input "
                f"allows at most {most} channels")
        first.processors = sum(1 << (c // per * step + c % per) for c in range(first.in_channels))
    for k, l in enumerate(layers):
        nxt = next((m for m in layers[k + 1:] if l.name in m.inputs), None)
        l.output_processors = nxt.processors if nxt is not None else processor_mask(l.out_channels, lim.device)
        if l.op == "passthrough":
            l.output_processors = l.processors
    return layers


def _in_bytes(l: HwLayer, lim: Limits, data_format: str) -> int:
    passes = _expand(l.in_channels, lim)[0]
    per_word = 1 if data_format.upper() == "CHW" else 4
    return l.in_hw[0] * l.in_hw[1] * passes * l.operands * per_word


def _out_bytes(l: HwLayer, lim: Limits) -> int:
    passes = _expand(l.out_channels, lim)[0]
    return l.out_hw[0] * l.out_hw[1] * passes * 4 * (4 if l.wide else 1) * (l.write_gap + 1)


def _assign_memory(layers: list[HwLayer], lim: Limits, data_format: str) -> list[HwLayer]:
    """First-fit ping-pong allocation of every layer's output inside one instance's address
    space (8 KiB steps first, then tight): a buffer lives from its producer to its last
    consumer; the operands of one element-wise op share one interleaved buffer (+4 bytes each)."""
    cap = lim.data_memory_per_instance
    index = {l.name: k for k, l in enumerate(layers)}
    last_use = {name: k for name, k in index.items()}
    last_use["input"] = 0
    for k, l in enumerate(layers):
        for i in l.inputs:
            last_use[i] = max(last_use[i], k)
    last_use[layers[-1].name] = len(layers)
    groups = {name: l.inputs for l in layers if l.eltwise and len(l.inputs) > 1 for name in l.inputs}
    for k, l in enumerate(layers):
        l.in_bytes = _in_bytes(l, lim, data_format if k == 0 else "HWC")
        l.out_bytes = _out_bytes(l, lim)
    live: dict[str, tuple[int, int, int]] = {   # name -> (offset, size, last use)
        "input": (0, min(layers[0].in_bytes, 0x2000) if layers[0].streaming else layers[0].in_bytes,
                  last_use["input"])}
    for k, l in enumerate(layers):
        l.in_offset = live[l.inputs[0]][0]
        if l.name in live:                       # an operand buffer opened by a partner
            l.out_offset = live[l.name][0] + l.out_delta
            continue
        members = groups.get(l.name, [l.name])
        end = max(last_use[m] for m in members)
        busy = [(o, o + s) for o, s, e in live.values() if e >= k and s]
        users = [c for c in layers if l.name in c.inputs]
        l.rolling = l.streaming and bool(users) and all(c.streaming for c in users)
        size = min(l.out_bytes, 0x2000) if l.rolling else l.out_bytes
        offset = _first_fit(busy, size, cap)
        if offset is None:
            l.memory_note = (f"no free {l.out_bytes:,}-byte block for its output next to the "
                             f"{len(busy)} buffers still in use")
            offset = 0
        for m in members:
            live[m] = (offset, size, end)
        l.out_offset = offset + l.out_delta
    return layers


def _first_fit(busy: list[tuple[int, int]], size: int, cap: int) -> int | None:
    for step in (0x2000, 4):
        candidates = sorted({0, *[-(-hi // step) * step for _, hi in busy]})
        for c in candidates:
            if c + size <= cap and all(c + size <= lo or c >= hi for lo, hi in busy):
                return c
    return None


# --------------------------------------------------------------------------------------------
# Resource report

def _kernel_slots(l: HwLayer, lim: Limits) -> int:
    """Kernel-memory words (9 bytes each) a layer takes on every processor it uses: one
    kernel per output processor column and pass, packed 72 bits at a time (so 1x1 8-bit
    kernels pack 9 per slot, 3x3 4-bit kernels 2 per slot)."""
    if l.op == "passthrough":
        return 0
    in_passes = _expand(l.in_channels, lim)[0]
    out_passes = _expand(l.out_channels, lim)[0]
    span = l.output_processors.bit_length()
    count = span * out_passes * in_passes
    ksize = l.kernel * l.kernel if l.op != "linear" else 1
    if l.flatten:
        count = l.out_channels * l.in_hw[0] * l.in_hw[1]
    per = 8 // l.weight_bits
    pad_bits = (count % per) * ksize * (per - 1)
    return (count * ksize * l.weight_bits + pad_bits + 71) // 72


def _allocate_kernels(layers: list[HwLayer], lim: Limits) -> tuple[list[int], list[int], str | None]:
    """Place each layer's kernel block like izer's greedy allocator: the lowest column (moving
    in steps of 4) free on every processor the layer uses; layers using all 64 processors go
    first. Returns (column offset per layer, slots used per processor, error or None)."""
    width = max(lim.kernel_slots, lim.kernel_slots_first_of_group)
    used = [[False] * width for _ in range(lim.processors)]
    offsets = [0] * len(layers)
    full = (1 << lim.processors) - 1
    order = [k for k, l in enumerate(layers) if l.processors == full] + \
            [k for k, l in enumerate(layers) if l.processors != full]
    for k in order:
        l = layers[k]
        length = _kernel_slots(l, lim)
        if not length:
            continue
        procs = [p for p in range(lim.processors) if l.processors >> p & 1]
        offs = 0
        while offs < width and used[procs[0]][offs]:
            offs += lim.processors_per_memory
        while True:
            if any(offs + length > lim.kernel_slots_of(p) for p in procs):
                return offsets, _slots_used(used), (
                    f"L{k} ({l.name}): kernel memory exhausted ({length} slots needed on each of "
                    f"{len(procs)} processors); remove channels (zeroed weights still take slots)")
            clash = next((i for p in procs for i in range(offs, offs + length) if used[p][i]), None)
            if clash is None:
                break
            offs = -(-(clash + 1) // lim.processors_per_memory) * lim.processors_per_memory
        offsets[k] = offs
        for p in procs:
            for i in range(offs, offs + length):
                used[p][i] = True
    return offsets, _slots_used(used), None


def _slots_used(used: list[list[bool]]) -> list[int]:
    return [sum(row) for row in used]


def _latency(l: HwLayer, lim: Limits, kern_offs: int = 0) -> int:
    """izer's per-layer cycle estimate: its frame equation (reads of padded/data rows through
    the TRAM, output writes), 1.5x for streamed layers."""
    passes = _expand(l.in_channels, lim)[0]
    rows, cols = l.pooled_hw
    if l.op == "convtranspose2d":
        rows, cols = 2 * rows, 2 * cols
    pool_area = l.pool_size * l.pool_size if l.pooling else 1
    k = l.kernel if l.op != "passthrough" else 1
    pad, out_cols, n = l.pad, l.out_hw[1], l.operands
    if l.flatten:
        out_cols = cols
    if l.pool_first:
        read_pad, read_dat, mult = passes * n * 2, passes * n * (pool_area + 1), 1
        pre_read = 0
    else:
        read_pad, read_dat, mult = passes * 2, passes * (n * pool_area + 1), passes
        pre_read = 0
        if passes > 1 or n > 1:
            pre_read = ((rows + 2 * pad - k + 1) * pad + (cols + 2 * pad - k + 1) * pad - pad * pad) * kern_offs
    if l.op == "passthrough":
        per_group = [bin(l.processors >> (g * lim.processors_per_group)
                         & ((1 << lim.processors_per_group) - 1)).count("1")
                     for g in range(lim.processors // lim.processors_per_group)]
        slots = max((c * (32 if l.wide else 8) // 8 - 1) // 4 for c in per_group if c) + 1
        return rows * cols * (read_dat + passes * slots)
    side = 2 * pad * (read_pad + 1)
    first_pad_row = side + mult * cols * (read_pad + 1)
    row_no_conv = side + mult * cols * (read_dat + 1)
    left, right = pad * (read_pad + 1), read_pad * pad
    row_conv = left + mult * (k - 1 - pad) * (read_dat + 1) + mult * (out_cols - pad) * read_dat + right
    bottom = left + mult * (k - 1 - pad) * (read_pad + 1) + mult * (out_cols - pad) * read_pad + right
    out_ch = l.output_processors.bit_length() * _expand(l.out_channels, lim)[0]
    if l.flatten:
        out_ch = l.out_channels
    out_dat = passes * out_cols * out_ch + (out_ch if out_ch == 1 and passes == 1 else 0)
    total = (int(l.flatten) + pre_read + pad * first_pad_row + (k - 1 - pad) * row_no_conv
             + (row_conv + out_dat) * (rows - (k - 1 - pad)) + pad * (bottom + out_dat))
    return (15 * total + 9) // 10 if l.streaming else total


@dataclass
class ResourceReport:
    """Per-layer and total MAX7800x resource use; `fits` with human-readable `reasons`."""

    device: str
    layers: list[dict[str, Any]]
    totals: dict[str, int]
    capacity: dict[str, int]
    reasons: list[str]

    @property
    def fits(self) -> bool:
        return not self.reasons

    def to_markdown(self) -> str:
        cols = ["layer", "op", "in", "out", "processors", "kernel_slots", "weight_bytes",
                "bias_bytes", "out_mem", "cycles"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.layers:
            lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
        t, c = self.totals, self.capacity
        lines += [
            "",
            f"- weight memory: {t['weight_bytes']:,} of {c['weight_bytes']:,} bytes "
            f"({100 * t['weight_bytes'] / c['weight_bytes']:.1f}%); busiest processor "
            f"{t['max_kernel_slots']} of {c['kernel_slots']} kernel slots",
            f"- bias memory: {t['bias_bytes']:,} of {c['bias_bytes']:,} bytes",
            f"- layers: {t['layers']} of {c['layers']}",
            f"- data memory per instance: {t['max_data_bytes']:,} of {c['data_bytes']:,} bytes",
            f"- estimated latency: {t['cycles']:,} cycles ({t['cycles'] / c['clock_hz'] * 1e3:.2f} ms "
            f"at {c['clock_hz'] / 1e6:.0f} MHz)",
            f"- fits {self.device}: {'yes' if self.fits else 'NO'}",
        ]
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)

    __str__ = to_markdown


def resource_report(model, input_shape: tuple[int, int, int] = (3, 64, 64),
                    device: int = MAX78000, data_format: str = "HWC") -> ResourceReport:
    """Count what `model` needs on `device` with izer's rules and say whether it fits.

    Weight bytes are izer's figure (each weight takes `weight_bits`/8 bytes); kernel slots per
    processor follow izer's 72-bit packing; bias bytes one per biased output; data memory is
    the bytes one 32 KiB instance holds (HWC: 4 channels per 32-bit word, CHW: 1 per byte,
    32-bit wide outputs x4, interleaved element-wise operands x operands). The cycle count is
    izer's estimate (it is not exact for pool-after-add layers, whose estimate depends on where
    izer places the kernels). The hardware rules are re-checked first (see
    `plan_hardware_layers`): a model that breaks one raises `ai8x.Ai8xRuleError` naming the
    layer instead of getting a report."""
    lim = limits(device)
    layers = plan_hardware_layers(model, input_shape, device, data_format)
    reasons: list[str] = []
    rows = []
    kern_offs, slots_per_proc, kernel_error = _allocate_kernels(layers, lim)
    if kernel_error:
        reasons.append(kernel_error)
    bias_sizes = []
    total_cycles = 1
    for k, l in enumerate(layers):
        slots = _kernel_slots(l, lim)
        weight_bytes = l.n_weights * l.weight_bits // 8
        bias_bytes = l.out_channels + (1 if l.biased and k == 0 and l.streaming and not lim.stream_bias else 0) \
            if l.biased else 0
        if bias_bytes:
            bias_sizes.append((l.name, bias_bytes))
        cycles = _latency(l, lim, kern_offs[k])
        total_cycles += cycles
        data = max(l.in_offset + (0 if l.streaming else l.in_bytes),
                   0 if l.rolling else l.out_offset - l.out_delta + l.out_bytes)
        rows.append(dict(layer=f"L{k} {l.name}", op=l.op,
                         **{"in": f"{l.in_channels}x{l.in_hw[0]}x{l.in_hw[1]}",
                            "out": f"{l.out_channels}x{l.out_hw[0]}x{l.out_hw[1]}"},
                         processors=bin(l.processors).count("1"), kernel_slots=slots,
                         weight_bytes=weight_bytes, bias_bytes=bias_bytes, out_mem=l.out_bytes,
                         data_bytes=data, cycles=cycles, streaming=l.streaming))
        where = f"L{k} ({l.name})"
        if l.biased and l.out_channels > lim.max_biased_outputs:
            reasons.append(f"{where}: {l.out_channels} biased outputs exceed {lim.max_biased_outputs}")
        if l.in_channels > lim.max_channels or l.out_channels > lim.max_channels:
            reasons.append(f"{where}: more than {lim.max_channels} channels")
        if max(*l.in_hw, *l.out_hw) > lim.max_rows_cols:
            reasons.append(f"{where}: rows/columns exceed {lim.max_rows_cols}")
        if l.op == "passthrough" and l.pooling and \
                _expand(l.in_channels, lim)[0] > lim.max_passthrough_pool_passes:
            reasons.append(f"{where}: a pool-only layer can pool at most "
                           f"{lim.max_passthrough_pool_passes * lim.processors} channels on {lim.name} "
                           f"(fuse the pool into the next convolution)")
        if l.memory_note:
            reasons.append(f"{where}: data memory: {l.memory_note}")
        elif data > lim.data_memory_per_instance:
            reasons.append(f"{where}: needs {data:,} bytes in one data-memory instance "
                           f"(limit {lim.data_memory_per_instance:,}); use a smaller map, CHW input "
                           f"or streaming")
        if l.flatten and (l.in_channels * l.in_hw[0] * l.in_hw[1] > lim.flatten_max_elements
                          or l.in_hw[0] * l.in_hw[1] > lim.flatten_max_hw):
            reasons.append(f"{where}: flatten input too large (C*H*W <= {lim.flatten_max_elements}, "
                           f"H*W <= {lim.flatten_max_hw})")
        if l.streaming and l.biased and not lim.stream_bias:
            reasons.append(f"{where}: streamed layer with a bias; {lim.name} needs bias=False on "
                           f"streamed layers")
    n_stream = sum(l.streaming for l in layers)
    if n_stream > lim.max_streaming_layers:
        reasons.append(f"{n_stream} streaming layers exceed {lim.max_streaming_layers}")
    if len(layers) > lim.max_layers:
        reasons.append(f"{len(layers)} hardware layers exceed {lim.max_layers}")
    groups = [0] * lim.bias_groups
    for name, size in sorted(bias_sizes, key=lambda t: -t[1]):   # first-fit decreasing, as izer
        g = min(range(lim.bias_groups), key=lambda i: groups[i])
        if groups[g] + size > lim.bias_bytes_per_group:
            reasons.append(f"{name}: bias memory exhausted ({size} bytes needed, "
                           f"{lim.bias_bytes_per_group - groups[g]} free in the emptiest group)")
        groups[g] += size
    totals = dict(weight_bytes=sum(r["weight_bytes"] for r in rows),
                  bias_bytes=sum(r["bias_bytes"] for r in rows), layers=len(layers),
                  max_kernel_slots=max(slots_per_proc),
                  max_data_bytes=max(r["data_bytes"] for r in rows), cycles=total_cycles)
    if totals["weight_bytes"] > lim.weight_memory_bytes:
        reasons.insert(0, f"weights need {totals['weight_bytes']:,} bytes "
                          f"(limit {lim.weight_memory_bytes:,})")
    capacity = dict(weight_bytes=lim.weight_memory_bytes, bias_bytes=lim.bias_memory_bytes,
                    layers=lim.max_layers, kernel_slots=lim.kernel_slots,
                    data_bytes=lim.data_memory_per_instance, clock_hz=int(lim.cnn_clock_hz))
    return ResourceReport(lim.name, rows, totals, capacity, reasons)
