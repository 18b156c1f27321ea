"""The frozen teacher inside a distiller, and the checks the distillers share."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..data.codecs import flip_test_average
from .losses import joints_mse
from .logits import _spatial_size, resize_heatmaps, resize_input, spatial_kl_loss

# --------------------------------------------------------------------------- the frozen teacher
def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter: a teacher that never changes."""
    return model.eval().requires_grad_(False)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _student_heatmaps(outputs) -> torch.Tensor:
    if not torch.is_tensor(outputs) or outputs.ndim != 4:
        got = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
        raise TypeError(f"distillation expects the student to return heatmaps (N, K, h, w), got {got}")
    return outputs


class _Teacher:
    """Runs a frozen teacher on a batch: eval mode every call, no autograd, follows the batch's device.

    On the CPU the teacher runs in channels-last (NHWC) memory format: PyTorch's CPU convolutions
    are ~25 % faster that way for HRNet, and the teacher's forward is a third of a KD step.
    With ``flip_pairs`` the heatmaps are the official flip test's (the teacher as it is evaluated):
    the mirrored input's output, flipped back, shifted one cell and averaged in. The mirrored pass
    runs first, so hooks on the teacher keep the features of the images themselves.
    """

    def __init__(self, model: nn.Module, input_size=None, output_fn: Callable | None = None,
                 flip_pairs: Sequence[tuple[int, int]] | None = None):


        self.model = freeze(model)
        self.nhwc = False
        self.input_size = None if input_size is None else _spatial_size(input_size)
        self.output_fn = output_fn
        self.flip_pairs = None if flip_pairs is None else tuple(tuple(p) for p in flip_pairs)

    def __call__(self, images: torch.Tensor):
        self.model.eval()   # cheap, and survives a caller's .train() on a module that holds the teacher
        if _device_of(self.model) != images.device:
            self.model.to(images.device)
            self.nhwc = False
        if self.input_size is not None:
            images = resize_input(images, self.input_size)
        if images.device.type == "cpu" and images.ndim == 4:
            if not self.nhwc:
                self.model.to(memory_format=torch.channels_last)
                self.nhwc = True
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            mirrored = self._output(self.model(images.flip(-1))) if self.flip_pairs is not None else None
            out = self._output(self.model(images))
        if mirrored is None:
            return out
        _check_heatmaps(out)
        return flip_test_average(out, mirrored, self.flip_pairs)

    def _output(self, out):
        return self.output_fn(out) if self.output_fn is not None else out

    @staticmethod
    def heatmaps_from(hm, like: torch.Tensor) -> torch.Tensor:
        """Check the teacher's output ``hm`` against the student heatmaps ``like`` and resize it."""
        _check_heatmaps(hm)
        if hm.shape[:2] != like.shape[:2]:
            raise ValueError(f"teacher heatmaps {tuple(hm.shape)} and student heatmaps {tuple(like.shape)} "
                             "differ in batch or joint count; map the joints first (teacher_output=)")
        return resize_heatmaps(hm, like).to(like.dtype)


def _check_heatmaps(hm) -> None:
    if not torch.is_tensor(hm) or hm.ndim != 4:
        got = tuple(hm.shape) if torch.is_tensor(hm) else type(hm).__name__
        raise TypeError(f"teacher returned {got}, not heatmaps (N, K, h, w); pass teacher_output= "
                        "to pick them from its output (e.g. lambda out: out[-1])")


def _logit_kd_term(kind: str, student_hm, teacher_hm, target_weight, temperature, teacher_weight):
    """The unweighted KD term between student and (resized) teacher heatmaps."""
    w = target_weight if teacher_weight == "target" else None
    if kind == "mse":
        return joints_mse(student_hm, teacher_hm, w)
    return spatial_kl_loss(student_hm, teacher_hm, temperature, w)


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {choices}")


def _sample_keys(batch: dict) -> list:
    meta = batch.get("meta")
    ids = meta.get("index") if isinstance(meta, Mapping) else None
    ids = batch.get("index") if ids is None else ids
    if ids is None:
        raise KeyError("LogitsKD(cache=True) needs a per-sample key: batch['meta']['index'] or batch['index']")
    return [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]


