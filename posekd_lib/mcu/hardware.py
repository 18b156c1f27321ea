"""MAX78000 / MAX78002 hardware limits: the one home of these facts.

The constants are those the ai8x-synthesis code generator ("izer") enforces and ai8x-training's
device constants for the layer arithmetic. `ai8x` (the layer emulation) and `max78000` (the layer
planner and resource report) both read them from here, so neither imports the other for them.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX78000, MAX78002 = 85, 87


@dataclass(frozen=True)
class Limits:
    """Hardware constants of one device (sizes in bytes unless named otherwise)."""

    device: int
    name: str
    processors: int = 64
    processors_per_group: int = 16          # 4 groups ("quadrants")
    processors_per_memory: int = 4          # processors sharing one data-memory instance
    data_memory_instances: int = 16
    data_memory_per_instance: int = 32768
    kernel_slots: int = 768                 # 3x3 x 8-bit kernels per processor
    kernel_slots_first_of_group: int = 768  # MAX78002: the first processor of each group has more
    kernel_slot_bytes: int = 9
    bias_groups: int = 4
    bias_bytes_per_group: int = 512
    max_biased_outputs: int = 512           # per layer: all of a layer's biases sit in one group
    max_layers: int = 32
    max_streaming_layers: int = 8
    max_passthrough_pool_passes: int = 1    # a pool-only layer pools at most 64 channels
    eltwise_in_biased_conv: bool = True     # MAX78002: an add runs in its own layer before a biased conv
    max_rows_cols: int = 1023
    max_channels: int = 1024                # 16 passes x 64 processors
    flatten_max_elements: int = 16384
    flatten_max_hw: int = 256
    depthwise: bool = False
    stream_bias: bool = False               # MAX78000 cannot bias a streamed first layer
    # layer arithmetic (ai8x-training's device constants)
    data_bits: int = 8
    activation_bits: int = 8
    full_acc_bits: int = 30
    wide_resolution_bits: int = 15
    max_pool: int = 16
    max_avg_pool: int = 16
    max_pool_stride: int = 16
    max_padding: int = 2
    weight_bits: tuple[int, ...] = (1, 2, 4, 8)
    cnn_clock_hz: float = 50e6

    def kernel_slots_of(self, proc: int) -> int:
        return self.kernel_slots_first_of_group if proc % self.processors_per_group == 0 \
            else self.kernel_slots

    @property
    def weight_memory_bytes(self) -> int:
        return sum(self.kernel_slots_of(p) for p in range(self.processors)) * self.kernel_slot_bytes

    @property
    def bias_memory_bytes(self) -> int:
        return self.bias_groups * self.bias_bytes_per_group


LIMITS: dict[int, Limits] = {
    MAX78000: Limits(MAX78000, "MAX78000"),
    MAX78002: Limits(MAX78002, "MAX78002", data_memory_per_instance=81920, kernel_slots=4096,
                     kernel_slots_first_of_group=5120, bias_bytes_per_group=2048,
                     max_layers=128, max_rows_cols=2047, max_passthrough_pool_passes=2 ** 16,
                     eltwise_in_biased_conv=False, depthwise=True, stream_bias=True),
}


def limits(device: int | str = MAX78000) -> Limits:
    """Limits of `device` (85, 87, "MAX78000", "MAX78002")."""
    if isinstance(device, str):
        by_name = {v.name.lower(): v for v in LIMITS.values()}
        if device.lower() not in by_name:
            raise ValueError(f"unknown device {device!r}; use one of {[v.name for v in LIMITS.values()]}")
        return by_name[device.lower()]
    if device not in LIMITS:
        raise ValueError(f"unknown device {device!r}; use 85 (MAX78000) or 87 (MAX78002)")
    return LIMITS[device]
