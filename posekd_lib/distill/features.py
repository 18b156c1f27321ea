"""Feature (hint) KD: forward hooks on named layers, adapters, the hint losses."""
from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .logits import _resample, spatial_kl_loss
from .teacher import _check_choice, _device_of

FEATURE_NORMS = ("channel", "none")
#: How an adapted student feature is compared with the teacher's: FitNets' MSE, or channel-wise
#: distillation (CWD, Shu et al., ICCV 2021): each channel's map a softmax over its pixels, then
#: :func:`spatial_kl_loss`, so the student learns *where* each teacher channel fires.
FEATURE_LOSSES = ("mse", "cwd")
#: What a layer returning a list of branches (an HRNet stage) contributes to feature KD: its first,
#: highest-resolution branch, or every branch resized to the first's size and concatenated along
#: channels (HRNetV2's representation, Wang et al. 2019).
FEATURE_BRANCHES = ("first", "concat")

# --------------------------------------------------------------------------- feature hooks
def _unknown_layer(model: nn.Module, name: str, valid: Sequence[str]) -> KeyError:
    """KeyError naming the children of the deepest existing parent of ``name`` and the closest names."""
    parts = name.split(".")
    parent = next(p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)) if p in valid)
    children = [n for n in valid if n and n.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    where = f"layers under {parent!r}" if parent else "top-level layers"
    return KeyError(f"{type(model).__name__} has no layer {name!r}; {where}: {children}; close names: "
                    f"{close or 'none'}. list_feature_shapes(model, input_shape) lists every layer.")


class FeatureHooks:
    """Forward hooks that capture named submodules' outputs into ``self.features`` (name -> output).

    ``FeatureHooks(model, ["backbone.7", "neck.2"])``, then after ``model(x)``: ``hooks["neck.2"]``.
    The dict is cleared at the start of every forward of ``model``, so it always holds the latest
    forward's features. Captured outputs keep their autograd graph (the student's feature loss
    trains the student through them). ``remove()`` (or leaving a ``with`` block) detaches all hooks.

    An output that a later in-place op overwrites (a conv followed by ``ReLU(inplace=True)``) would
    silently become the activation's output; reading it then raises, naming the layer. Hook the
    activation instead, or pass ``clone=True`` to keep a copy.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], clone: bool = False):
        if isinstance(names, str):
            names = [names]
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules:
                raise _unknown_layer(model, name, list(modules))
        self.names, self.clone = list(names), clone
        self.features: dict[str, object] = {}
        self._versions: dict[str, int | None] = {}
        self._handles = [model.register_forward_pre_hook(self._reset)]
        self._handles += [modules[n].register_forward_hook(self._saver(n)) for n in self.names]

    def _reset(self, module, args) -> None:
        self.features.clear()
        self._versions.clear()

    def _saver(self, name: str):
        def save(module, args, output):
            if self.clone:
                output = _map_tensors(output, torch.clone)
            self.features[name] = output
            self._versions[name] = _version(output)
        return save

    def __getitem__(self, name: str):
        if name not in self.features:
            state = "was not called in the last forward" if name in self.names else "is not hooked"
            raise KeyError(f"layer {name!r} {state} (hooked: {self.names}; captured: {list(self.features)})")
        out = self.features[name]
        if _version(out) != self._versions[name]:
            raise RuntimeError(f"the output of layer {name!r} was modified in place after it was captured "
                               "(e.g. by a following ReLU(inplace=True)); hook that activation instead "
                               "or use FeatureHooks(..., clone=True)")
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features.clear()

    def __enter__(self) -> "FeatureHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _map_tensors(out, fn):
    if torch.is_tensor(out):
        return fn(out)
    if isinstance(out, (list, tuple)):
        return type(out)(_map_tensors(o, fn) for o in out)
    return out


def _version(out):
    """In-place modification counters of a captured output's tensors (None where untracked)."""
    def v(t):
        try:
            return t._version
        except RuntimeError:    # inference-mode tensors track no version
            return None
    if torch.is_tensor(out):
        return v(out)
    if isinstance(out, (list, tuple)):
        return tuple(_version(o) for o in out)
    return None


def _branches_used(items: list, branches: str) -> list:
    """The branches of an HRNet-stage output (maps or their shapes) that feature KD uses."""
    return items if branches == "concat" else items[:1]


def _feature_tensor(out, name: str, branches: str = "first") -> torch.Tensor:
    """A captured output as one (N, C, H, W) tensor; lists (HRNet stages) as ``branches`` says.

    ``"first"``: the first, highest-resolution branch. ``"concat"``: every branch resized to the
    first's size (:func:`resize_heatmaps`' grid) and concatenated along channels.
    """
    is_list = isinstance(out, (list, tuple)) and len(out) > 0
    maps = _branches_used(list(out), branches) if is_list else [out]
    for i, m in enumerate(maps):
        if not torch.is_tensor(m) or m.ndim != 4:
            got = tuple(m.shape) if torch.is_tensor(m) else type(m).__name__
            where = f" branch {i}" if is_list else ""
            raise TypeError(f"layer {name!r}{where} outputs {got}; feature KD needs an (N, C, H, W) map")
    return torch.cat([maps[0], *(_resample(m, maps[0]) for m in maps[1:])], 1) if len(maps) > 1 else maps[0]


def _shapes(out):
    if torch.is_tensor(out):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return [_shapes(o) for o in out]
    return None


def list_feature_shapes(model: nn.Module, input_shape: Sequence[int], names: Sequence[str] | None = None,
                        max_depth: int | None = None) -> list[tuple[str, object]]:
    """``[(layer name, output shape), ...]`` from one dummy forward, to pick layers for feature KD.

    ``input_shape`` is ``(N, C, H, W)`` or ``(C, H, W)``. Layers come in ``named_modules`` order;
    ``max_depth`` keeps names of at most that many dotted parts (1: the top-level children only).
    A layer returning a list (HRNet stages) gets a list of shapes; layers not run are left out. The
    forward runs in eval mode without gradients (BatchNorm statistics untouched); modes are restored.
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if names is None:
        names = [n for n in dict(model.named_modules()) if n
                 and (max_depth is None or n.count(".") < max_depth)]
    modes = {m: m.training for m in model.modules()}
    try:
        with FeatureHooks(model, names) as hooks, torch.no_grad():
            model.eval()
            model(torch.zeros(shape, device=_device_of(model)))
            found = dict(hooks.features)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return [(n, _shapes(found[n])) for n in names if n in found]


# --------------------------------------------------------------------------- feature KD
class FeatureAdapter(nn.Module):
    """Student feature -> teacher feature space: a 1x1 conv (C_s -> C_t), then a bilinear resize.

    Trained together with the student and thrown away after distillation. The resize samples at
    the same grid convention as :func:`resize_heatmaps`.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        """``x`` (N, C_s, h, w) -> (N, C_t, H, W); ``size`` = (W, H) or the teacher tensor itself."""
        return _resample(self.proj(x), size)


def standardize_channels(feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each channel to zero mean, unit variance over (N, H, W) of the batch."""
    mean = feat.mean(dim=(0, 2, 3), keepdim=True)
    std = feat.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (feat - mean) / (std + eps)


def feature_kd_loss(student_feats, teacher_feats, adapters, normalize: str = "channel", loss: str = "mse",
                    temperature: float = 1.0) -> torch.Tensor:


    """Mean over layer pairs of ``MSE(adapter(S), norm(T))`` (or CWD); adapters may be ``None`` (resize only).

    ``normalize="channel"`` standardises every teacher channel over the batch before the MSE.
    Teacher features of different layers and nets differ in scale by orders of magnitude (post-ReLU
    stages, BatchNorm'd branches); after standardising, the loss starts near 1 for any layer
    choice, does not change when the teacher's features are multiplied by a constant, and no
    channel dominates just by being large, so one β carries over between layer choices. The
    adapter absorbs the scale on the student side. ``"none"`` is the plain FitNets / DWPose MSE.
    ``loss="cwd"`` replaces the MSE by channel-wise distillation: :func:`spatial_kl_loss` at
    ``temperature`` between the two maps of every (sample, channel), after the same normalisation.
    Inputs are tensors or equal-length sequences of tensors and adapters.
    """
    _check_choice("normalize", normalize, FEATURE_NORMS)
    _check_choice("loss", loss, FEATURE_LOSSES)
    if torch.is_tensor(student_feats):
        student_feats, teacher_feats, adapters = [student_feats], [teacher_feats], [adapters]
    if not (len(student_feats) == len(teacher_feats) == len(adapters)) or not student_feats:
        raise ValueError(f"feature_kd_loss: {len(student_feats)} student features, {len(teacher_feats)} "
                         f"teacher features and {len(adapters)} adapters; give one of each per pair")
    losses = []
    for s, t, adapter in zip(student_feats, teacher_feats, adapters):
        t = t.detach().float()
        s = adapter(s, t) if adapter is not None else _resample(s, t)
        if s.shape != t.shape:
            raise ValueError(f"adapted student feature {tuple(s.shape)} does not match teacher feature "
                             f"{tuple(t.shape)}; check the adapter's channels")
        if normalize == "channel":
            t = standardize_channels(t)
        losses.append(F.mse_loss(s.float(), t) if loss == "mse" else spatial_kl_loss(s, t, temperature))
    return torch.stack(losses).mean()


def _channels(shape, name: str, branches: str = "first") -> int:
    shapes = _branches_used(shape, branches) if isinstance(shape, list) and shape else [shape]
    for sh in shapes:
        if not isinstance(sh, tuple) or len(sh) != 4:
            raise ValueError(f"layer {name!r} outputs shape {shape}; feature KD needs an (N, C, H, W) map")
    return sum(sh[1] for sh in shapes)
