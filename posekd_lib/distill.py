"""Knowledge distillation for heatmap pose models: logits (response) KD and feature (hint) KD.

The library side of notebooks 03 (logits KD) and 04 (feature KD). A :class:`Distiller` is one
``nn.Module`` holding the student, the frozen teacher (outside its module tree: never saved or
optimised) and a ``ModuleDict`` of weighted loss terms with their adapters, so
:func:`posekd_lib.train.fit` trains, checkpoints, resumes, clips and DDP-wraps it like any model:
``fit(LogitsKD(teacher, student), loader, ...)``. Its ``forward(images)`` is the student's; its
``loss(outputs, batch)`` runs the teacher on the same (augmented) ``batch["image"]`` the student
just saw and returns a dict with the total under ``"loss"`` and the parts to log.

Logits KD: the student's heatmaps imitate the teacher's, either by MSE (FPD, Zhang et al.,
CVPR 2019: ``(1-α)·MSE(S, GT) + α·MSE(S, T)``) or by a KL divergence between per-joint spatial
softmax distributions (Hinton's KD applied to heatmaps; DWPose does the same on SimCC vectors).

Feature KD: FitNets-style hints. Forward hooks capture named intermediate outputs of both nets;
a 1x1 conv "adapter" on the student side maps its channels to the teacher's, a resize matches the
spatial size, and an MSE on channel-standardised teacher features pulls them together (or a
per-channel spatial KL, channel-wise distillation, which matches where each channel fires).

Sizes follow the project convention: ``size`` / ``input_size`` arguments are ``(w, h)`` like
:class:`posekd_lib.codecs.HeatmapCodec`; tensor shapes are ``(N, C, H, W)``.

Resizing convention: the heatmap codec puts cell ``i`` of a stride-``s`` map at input pixel
``i·s`` (and a padded stride-``s`` conv centres its output cell ``i`` there too), so a resize from
width ``W`` to ``w`` must read output cell ``j`` from input cell ``j·W/w``. ``F.interpolate``
does not: ``align_corners=False`` reads ``(j+0.5)·W/w - 0.5`` (half a cell off when halving) and
``align_corners=True`` stretches the grid. :func:`resize_heatmaps`, :func:`resize_input` and
:class:`FeatureAdapter` sample at exactly ``j·W/w`` with ``F.grid_sample``.
"""
from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .codecs import flip_test_average
from .keypoints import COCO_FLIP_PAIRS
from .losses import joints_mse
from .teacher_cache import CacheMissError

SCHEDULES = ("constant", "linear_decay")
LOGIT_KINDS = ("mse", "kl")
FEATURE_NORMS = ("channel", "none")
#: How an adapted student feature is compared with the teacher's: FitNets' MSE, or channel-wise
#: distillation (CWD, Shu et al., ICCV 2021): each channel's map a softmax over its pixels, then
#: :func:`spatial_kl_loss`, so the student learns *where* each teacher channel fires.
FEATURE_LOSSES = ("mse", "cwd")
#: What a layer returning a list of branches (an HRNet stage) contributes to feature KD: its first,
#: highest-resolution branch, or every branch resized to the first's size and concatenated along
#: channels (HRNetV2's representation, Wang et al. 2019).
FEATURE_BRANCHES = ("first", "concat")


# --------------------------------------------------------------------------- logits (response) KD
def fpd_loss(student_hm: torch.Tensor, teacher_hm: torch.Tensor, target: torch.Tensor,
             target_weight: torch.Tensor | None, alpha: float, teacher_weight: str = "ones") -> torch.Tensor:
    """FPD's loss: ``(1-α)·joints_mse(S, GT, w) + α·joints_mse(S, T, w_T)``.

    ``teacher_weight="ones"`` (default) weights every joint's teacher term by 1: the teacher also
    "labels" joints the ground truth marks unlabelled or outside the crop, one of the things KD adds
    (and the per-joint importance factors in ``target_weight`` then apply to the GT term only).
    ``"target"`` reuses ``target_weight`` for both terms, as FPD's official training code does.
    """
    if teacher_weight not in ("ones", "target"):
        raise ValueError(f"teacher_weight must be 'ones' or 'target', got {teacher_weight!r}")
    gt = joints_mse(student_hm, target, target_weight)
    kd = joints_mse(student_hm, teacher_hm.detach(), target_weight if teacher_weight == "target" else None)
    return (1 - alpha) * gt + alpha * kd


def spatial_kl_loss(student_hm: torch.Tensor, teacher_hm: torch.Tensor, temperature: float = 1.0,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(softmax(T_hm/T) ‖ softmax(S_hm/T))`` over the H·W pixels of each joint map.

    Each (sample, joint) map becomes a distribution over pixels; the KL is summed over pixels and
    averaged over joints and batch (weighted by ``weight`` (N, K) when given, e.g. a visibility
    mask: ``Σ w·KL / Σ w``). The ``T²`` factor (Hinton et al., 2015) keeps gradient sizes comparable
    across temperatures. Gaussian heatmaps peak at 1, so at ``T = 1`` the softmax over thousands of
    pixels is almost flat; a temperature below 1 (e.g. 0.1) sharpens it around the peak, which is
    what DWPose does to its SimCC vectors.
    """
    if student_hm.shape != teacher_hm.shape:
        raise ValueError(f"student heatmaps {tuple(student_hm.shape)} and teacher heatmaps "
                         f"{tuple(teacher_hm.shape)} differ; resize the teacher's with resize_heatmaps")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_s = F.log_softmax(student_hm.float().flatten(2) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_hm.detach().float().flatten(2) / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)                                   # (N, K)
    if weight is None:
        kl = kl.mean()
    else:
        w = weight.reshape(kl.shape).to(kl.dtype)
        kl = (w * kl).sum() / w.sum().clamp_min(1e-12)
    return kl * temperature ** 2


def _spatial_size(size) -> tuple[int, int]:
    """``(w, h)`` from a ``(w, h)`` pair or from a tensor's last two dims (H, W)."""
    if torch.is_tensor(size):
        return int(size.shape[-1]), int(size.shape[-2])
    w, h = size
    return int(w), int(h)


def _resample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size`` = (w, h), output cell j reading input cell j·W/w."""
    w, h = _spatial_size(size)
    H, W = x.shape[-2:]
    if (H, W) == (h, w):
        return x
    dtype = x.dtype if x.is_floating_point() else torch.float32
    # grid_sample's align_corners=True maps -1/+1 to the centres of the first/last input cells
    gx = torch.arange(w, device=x.device, dtype=dtype) * (W / w) * (2 / max(W - 1, 1)) - 1
    gy = torch.arange(h, device=x.device, dtype=dtype) * (H / h) * (2 / max(H - 1, 1)) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).expand(x.shape[0], h, w, 2)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)


def resize_heatmaps(hm: torch.Tensor, size) -> torch.Tensor:
    """Teacher heatmaps (N, K, H, W) resampled to ``size`` = (w, h) (or a tensor's spatial size).

    Needed when teacher and student heatmaps differ (e.g. a stride-4 teacher, a stride-8 student).
    Halving a σ=2 map gives exactly the σ=1 map the codec draws at the smaller size (for a peak on
    an even cell), on the same input pixel. Returns ``hm`` itself when the size already matches.
    """
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got shape {tuple(hm.shape)}")
    return _resample(hm, size)


def resize_input(images: torch.Tensor, size) -> torch.Tensor:
    """Images (N, 3, H, W) resampled to the teacher's input ``size`` = (w, h).

    For a teacher trained at another input size (HRNet 192x256 vs a 128x128 MCU student). Pixel
    ``j`` of the output reads pixel ``j·W/w``, the same mapping as re-cropping the same box at the
    new size, so teacher heatmaps resized back line up with the student's. A different aspect ratio
    stretches the person: the geometry still lines up, but the teacher sees bodies shaped unlike
    its training data and its heatmaps get worse (crop at the teacher's ratio when you can).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    return _resample(images, size)


def kd_weight_schedule(step: int, total_steps: int | None = None, kind: str = "constant") -> float:
    """Multiplier of the KD terms at ``step`` (0-based): ``constant`` = 1, ``linear_decay`` = 1 - step/total.

    ``linear_decay`` is DWPose's schedule (per epoch there): distillation dominates early and hands
    over to the ground truth by the end of training.
    """
    if kind == "constant":
        return 1.0
    if kind == "linear_decay":
        if not total_steps or total_steps <= 0:
            raise ValueError(f"kd_weight_schedule('linear_decay') needs total_steps > 0, got {total_steps}")
        return min(max(1.0 - step / total_steps, 0.0), 1.0)
    raise ValueError(f"unknown KD schedule {kind!r}; choose one of {SCHEDULES}")


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


# --------------------------------------------------------------------------- the distiller
def _adapter_key(student_layer: str) -> str:
    return student_layer.replace(".", "/")   # nn.ModuleDict keys cannot contain dots


class LogitTerm(nn.Module):
    """Response KD with weight α: the student's heatmaps against the teacher's, resized to them.

    ``kind="mse"`` is FPD's ``joints_mse(S, T)``, ``kind="kl"`` :func:`spatial_kl_loss` at
    ``temperature``; ``teacher_weight`` as in :func:`fpd_loss`. Its weight comes out of the ground
    truth's (``takes_from_gt``): FPD's ``(1-α)·GT + α·KD``.
    """

    takes_from_gt = True

    def __init__(self, weight: float, kind: str = "mse", temperature: float = 1.0, teacher_weight: str = "ones"):
        super().__init__()
        _check_choice("kind", kind, LOGIT_KINDS)
        _check_choice("teacher_weight", teacher_weight, ("ones", "target"))
        self.weight, self.kind, self.temperature = float(weight), kind, float(temperature)
        self.teacher_weight = teacher_weight

    def forward(self, student: dict, teacher: dict, batch: dict) -> torch.Tensor:
        t_hm = _Teacher.heatmaps_from(teacher["heatmaps"], student["heatmaps"])
        return _logit_kd_term(self.kind, student["heatmaps"], t_hm, batch.get("target_weight"), self.temperature,
                              self.teacher_weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, kind={self.kind!r}, temperature={self.temperature}"


class HintTerm(nn.Module):
    """Feature KD (FitNets hints) with weight β: :func:`feature_kd_loss` over the distiller's layer pairs.

    ``adapters`` holds one :class:`FeatureAdapter` per pair, in the pairs' order, keyed by the
    student layer (dots written ``/``). They are submodules of the term, and so of the distiller.
    """

    takes_from_gt = False

    def __init__(self, weight: float, adapters: Mapping[str, nn.Module], normalize: str = "channel",
                 feature_loss: str = "mse", temperature: float = 1.0):
        super().__init__()
        _check_choice("normalize", normalize, FEATURE_NORMS)
        _check_choice("feature_loss", feature_loss, FEATURE_LOSSES)
        if temperature <= 0:
            raise ValueError(f"feature_temperature must be > 0, got {temperature}")
        self.weight, self.normalize, self.feature_loss, self.temperature = (float(weight), normalize, feature_loss,
                                                                             float(temperature))
        self.adapters = nn.ModuleDict(adapters)

    def forward(self, student: dict, teacher: dict, batch: dict) -> torch.Tensor:
        return feature_kd_loss(student["features"], teacher["features"], list(self.adapters.values()),
                               self.normalize, self.feature_loss, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, normalize={self.normalize!r}, feature_loss={self.feature_loss!r}"


class Distiller(nn.Module):
    """The student, its frozen teacher and the weighted KD terms as one module, trained by ``fit`` like any model.

    ``losses`` maps names to terms (:class:`LogitTerm`, :class:`HintTerm`, or any module with a
    ``weight``, a ``takes_from_gt`` flag and ``forward(student, teacher, batch) -> Tensor``) and is
    kept in an ``nn.ModuleDict``, as MMPose's distillers keep theirs. So the hint adapters are
    submodules: in ``parameters()`` (the optimizer, ``clip_grad_norm_``), in ``state_dict()`` (fit's
    checkpoints) and in DDP's gradient averaging, like the student's own weights. The teacher is
    not: it sits in a plain attribute (``self.teacher``, which runs the frozen net), so it is never
    saved or optimised; ``.to()`` moves it with the rest, and it follows the batch's device anyway.

    ``forward(images)`` runs the student and returns its outputs, so the distiller evaluates like
    its student; hooks keep the outputs of the student layers of ``pairs`` (``{student layer:
    teacher layer}``) for the loss. ``loss(outputs, batch)`` gets the teacher's side from
    :meth:`teacher_outputs` (the one place to plug in cached teacher outputs) and returns
    ``{"loss", "gt", <one entry per term>}`` with

        loss = (1 - Σ' w_t·weight)·GT + Σ w_t·weight·term,   w_t = kd_weight_schedule(step, total_steps, schedule)

    where GT is ``joints_mse(S, target, target_weight)`` and Σ' runs over the terms that take their
    weight from the ground truth's. ``step`` is a buffer that counts training calls (the student's
    output requires grad; evaluation does not advance it), so it is checkpointed and resumes with
    the run. ``teacher_input_size``, ``teacher_output``, ``teacher_flip_test`` and ``flip_pairs``
    are :class:`LogitsKD`'s; ``branches`` as in :class:`FeatureKD`. ``remove()`` (or leaving a
    ``with`` block) takes the hooks off both nets; ``kd.student`` is the trained student.

    Checkpoints from before the distiller owned its adapters hold the bare student; they are
    refused (``train.load_checkpoint`` names the file): delete that run folder and train again.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module | None, losses: Mapping[str, nn.Module],
                 pairs: Mapping[str, str] | None = None, branches: str = "first", schedule: str = "constant",
                 total_steps: int | None = None, teacher_input_size=None, teacher_output: Callable | None = None,
                 teacher_flip_test: bool = False, flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS):
        super().__init__()
        _check_choice("branches", branches, FEATURE_BRANCHES)
        kd_weight_schedule(0, total_steps, schedule)
        self.pairs, self.branches = dict(pairs or {}), branches
        self.schedule, self.total_steps = schedule, total_steps
        self.add_module("student", student)
        self.losses = nn.ModuleDict(losses)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.teacher = _Teacher(teacher, teacher_input_size, teacher_output, flip_pairs if teacher_flip_test else None)
        for name, term in self.losses.items():
            adapters = getattr(term, "adapters", None)
            if adapters is not None and list(adapters) != [_adapter_key(n) for n in self.pairs]:
                raise ValueError(f"loss term {name!r} has adapters {list(adapters)} for the student layers "
                                 f"{list(self.pairs)}; give one per pair, in the pairs' order")
        self.student_hooks = self.teacher_hooks = None
        if self.pairs:
            if student is None:
                raise ValueError("feature KD needs the student, to hook its layers")
            self.student_hooks = FeatureHooks(student, list(self.pairs))
            self.teacher_hooks = FeatureHooks(teacher, list(self.pairs.values()))

    # the schedule
    def set_step(self, step: int) -> None:
        """Set the schedule's step counter (``fit`` restores it from the checkpoint by itself)."""
        self.step.fill_(int(step))

    def kd_weight(self, step: int | None = None) -> float:
        """The schedule multiplier at ``step`` (default: the current step)."""
        return kd_weight_schedule(int(self.step) if step is None else step, self.total_steps, self.schedule)

    def _tick(self, outputs: torch.Tensor) -> float:
        """This call's schedule multiplier; a training call then advances the step."""
        w = self.kd_weight()
        if outputs.requires_grad:
            self.step.add_(1)
        return w

    # the two nets
    def forward(self, images: torch.Tensor, *rest):
        if rest:
            raise TypeError(f"{type(self).__name__}(images) runs the student; the loss is "
                            f"{type(self).__name__}.loss(outputs, batch), which fit calls by itself")
        if self.student is None:
            raise RuntimeError(f"this {type(self).__name__} was built without a student; pass student= to train one "
                               "(loss() works on any student's outputs)")
        return self.student(images)

    def teacher_outputs(self, batch: dict) -> dict:
        """The teacher's side of the loss for ``batch``: ``{"heatmaps", "features"}``.

        Runs the frozen teacher on ``batch["image"]``: ``heatmaps`` is its output (through
        ``teacher_output``; the flip-test average with ``teacher_flip_test``) at its own size,
        ``features`` the outputs of the teacher layers of ``pairs`` (None without pairs). Override it
        to serve stored teacher outputs instead (:class:`LogitsKD` ``cache=True`` does).
        """
        heatmaps = self.teacher(batch["image"])
        features = None
        if self.pairs:
            features = [_feature_tensor(self.teacher_hooks[n], n, self.branches) for n in self.pairs.values()]
        return {"heatmaps": heatmaps, "features": features}

    def _live_teacher_outputs(self, batch: dict, miss: CacheMissError) -> dict:
        """The live teacher for a batch a teacher cache does not hold (warned once per distiller)."""
        if not getattr(self, "_warned_cache", False):
            warnings.warn(f"{miss}; the live teacher runs for such batches", RuntimeWarning, stacklevel=3)
            self._warned_cache = True
        return Distiller.teacher_outputs(self, batch)

    def teacher_heatmaps(self, batch: dict, like: torch.Tensor) -> torch.Tensor:
        """The teacher's heatmaps for ``batch``, resized to the student heatmaps ``like``."""
        return _Teacher.heatmaps_from(self.teacher_outputs(batch)["heatmaps"], like)

    def features(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The captured (student, teacher) feature maps of the last forwards, in ``pairs`` order."""
        s = [_feature_tensor(self.student_hooks[n], n, self.branches) for n in self.pairs]
        t = [_feature_tensor(self.teacher_hooks[n], n, self.branches) for n in self.pairs.values()]
        return s, t

    def _student_features(self, heatmaps: torch.Tensor) -> list[torch.Tensor] | None:
        if not self.pairs:
            return None
        if not self.student_hooks.features:
            raise RuntimeError(f"{type(self).__name__}: no student features captured; the loss must follow a "
                               "forward of the student on batch['image'] (fit does this)")
        feats = [_feature_tensor(self.student_hooks[n], n, self.branches) for n in self.pairs]
        if feats[0].shape[0] != heatmaps.shape[0]:
            raise RuntimeError(f"{type(self).__name__}: the captured student features hold {feats[0].shape[0]} "
                               f"samples, the heatmaps {heatmaps.shape[0]}; they come from different forwards")
        return feats

    # the loss
    def loss(self, outputs, batch: dict) -> dict[str, torch.Tensor]:
        """The loss terms of the student's ``outputs`` on ``batch`` (see the class docstring)."""
        heatmaps = _student_heatmaps(outputs)
        student = {"heatmaps": heatmaps, "features": self._student_features(heatmaps)}
        teacher = self.teacher_outputs(batch)
        w = self._tick(heatmaps)
        out = {"gt": joints_mse(heatmaps, batch["target"], batch.get("target_weight"))}
        gt_weight, weighted = 1.0, []
        for name, term in self.losses.items():
            out[name] = term(student, teacher, batch)
            if term.takes_from_gt:
                gt_weight -= term.weight * w
            weighted.append(term.weight * w * out[name])
        total = gt_weight * out["gt"]
        for t in weighted:
            total = total + t
        return {"loss": total, **out}

    # housekeeping
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.student is not None and state_dict and set(state_dict) == set(self.student.state_dict()):
            raise RuntimeError(f"{type(self).__name__} got the bare student's state dict, as checkpoints of "
                               "distilled runs held before the distiller owned its adapters (an old run "
                               "folder, no longer upgraded): delete that run folder and train again")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher.model._apply(fn, *args, **kwargs)
        self.teacher.nhwc = False
        return self

    def remove(self) -> None:
        """Take the feature hooks off the student and the teacher."""
        for hooks in (self.student_hooks, self.teacher_hooks):
            if hooks is not None:
                hooks.remove()

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class LogitsKD(Distiller):
    """Logits KD: ``(1-α_t)·GT + α_t·KD`` with ``α_t = α·schedule(step)``, one :class:`LogitTerm` named ``"kd"``.

    ``kind="mse"`` is FPD (KD = joints_mse(S, T)); ``kind="kl"`` is :func:`spatial_kl_loss` at
    ``temperature`` (its scale differs from the heatmap MSE by orders of magnitude, so use a much
    smaller α). GT is ``joints_mse(S, target, target_weight)``. ``loss`` returns ``{"loss", "gt", "kd"}``::

        kd = LogitsKD(teacher, student, alpha=0.5)
        fit(kd, loader, max_steps=500)

    The teacher is frozen (eval mode, no gradients, ``torch.no_grad()``) and runs on the same
    augmented ``batch["image"]`` as the student; ``teacher_input_size`` (w, h) resizes the images
    for a teacher trained at another size, and its heatmaps are resized to the student's.
    ``teacher_output(out) -> heatmaps`` picks the heatmaps from a teacher that returns something
    else. ``teacher_weight`` as in :func:`fpd_loss`. ``teacher_flip_test=True`` makes the target
    the teacher's flip-test heatmaps (``flip_pairs``: the joints' left/right pairs), the output it
    is evaluated with, at the cost of a second teacher forward. Without a ``student`` it is a loss
    only: ``LogitsKD(teacher).loss(student_heatmaps, batch)``.

    ``cache=True`` keeps each sample's teacher heatmaps on the CPU, keyed by
    ``batch["meta"]["index"]`` (or ``batch["index"]``), and runs the teacher only on samples not
    seen before. Off by default because it is wrong with augmentation: the same index then comes
    with a different crop, flip or colour, and the cached heatmaps no longer match the image.
    Use it only on a fixed, non-augmented training set. Memory: K·h·w·4 bytes per sample, at the
    teacher's heatmap size.

    ``cache=`` a :class:`~posekd_lib.teacher_cache.TeacherCache` (built once over the training
    set's plain crops) serves augmented batches too: each sample's cached heatmaps warped by its
    crop's augmentation, so a distilled step runs no teacher forward (an approximation; see that
    module).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module | None = None, kind: str = "mse", alpha: float = 0.5,
                 temperature: float = 1.0, schedule: str = "constant", total_steps: int | None = None,
                 teacher_input_size=None, teacher_weight: str = "ones", teacher_output: Callable | None = None,
                 cache=False, teacher_flip_test: bool = False,
                 flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS):
        super().__init__(teacher, student, {"kd": LogitTerm(alpha, kind, temperature, teacher_weight)},
                         schedule=schedule, total_steps=total_steps, teacher_input_size=teacher_input_size,
                         teacher_output=teacher_output, teacher_flip_test=teacher_flip_test, flip_pairs=flip_pairs)
        self.warp_cache = cache if hasattr(cache, "for_batch") else None
        self.cache: dict | None = {} if cache is True else None

    kind = property(lambda self: self.losses["kd"].kind)
    alpha = property(lambda self: self.losses["kd"].weight)
    temperature = property(lambda self: self.losses["kd"].temperature)
    teacher_weight = property(lambda self: self.losses["kd"].teacher_weight)

    def teacher_outputs(self, batch: dict) -> dict:
        if self.warp_cache is not None:
            if "meta" not in batch:
                raise KeyError("LogitsKD(cache=TeacherCache) needs batch['meta'] (index, center, scale, rotation, "
                               "flipped) from TopDownDataset")
            try:
                return {"heatmaps": self.warp_cache.for_batch(batch).to(batch["image"].device), "features": None}
            except CacheMissError as e:     # samples the cache does not hold (a labelled subset, unlabelled persons)
                return self._live_teacher_outputs(batch, e)
        if self.cache is None:
            return super().teacher_outputs(batch)
        keys = _sample_keys(batch)
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            fresh = self.teacher(batch["image"][missing])
            _check_heatmaps(fresh)
            self.cache.update((keys[i], hm) for i, hm in zip(missing, fresh.cpu()))
        return {"heatmaps": torch.stack([self.cache[k] for k in keys]).to(batch["image"].device), "features": None}


class FeatureKD(Distiller):
    """Feature KD: ``(1-α_t)·GT + α_t·KD_logits + β_t·feature loss`` (FitNets hints on top of FPD).

    ``pairs`` maps student layer names to teacher layer names; hooks on both nets capture them
    (the student's during the distiller's forward, the teacher's when the loss runs the frozen
    teacher on ``batch["image"]``). The :class:`HintTerm` ``"feat"`` holds one
    :class:`FeatureAdapter` per pair (``kd.adapters``), sized here by one dummy forward of each net
    at ``input_size`` (w, h) (``teacher_input_size`` for the teacher), so they exist, trained and
    saved with the student, before the optimizer is built::

        kd = FeatureKD(teacher, student, {"backbone.12": "stage4"}, beta=1e-3)
        fit(kd, loader, max_steps=500)        # Adam over kd.parameters(): the student's and the adapters'

    The feature loss is :func:`feature_kd_loss` (mean over pairs); a layer returning a list (HRNet
    stages) contributes its first, highest-resolution branch, or with ``branches="concat"`` all its
    branches resized to the first's size and concatenated (HRNetV2's representation; in notebook
    04, its 120 channels as the hint for a 32-channel student layer did worse than no hint).
    α_t and β_t follow ``schedule`` like :class:`LogitsKD`; ``alpha_logits=0`` (default) leaves
    the logits term (:class:`LogitTerm` ``"kd"``) out.
    ``feature_loss="cwd"`` compares the maps by channel-wise distillation at ``feature_temperature``
    instead of the MSE (:func:`feature_kd_loss`).
    ``teacher_flip_test`` as in :class:`LogitsKD` (the logits term only: the hints always use the
    features of the unmirrored images). ``loss`` returns ``{"loss", "gt", "feat"}`` (+ ``"kd"``).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs: Mapping[str, str], beta: float = 1.0,
                 alpha_logits: float = 0.0, kind: str = "mse", temperature: float = 1.0,
                 schedule: str = "constant", total_steps: int | None = None, teacher_input_size=None,
                 normalize: str = "channel", input_size=(192, 256), teacher_weight: str = "ones",
                 teacher_output: Callable | None = None, teacher_flip_test: bool = False,
                 flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS, branches: str = "first",
                 feature_loss: str = "mse", feature_temperature: float = 1.0, cache=None,
                 feature_cache: Sequence | None = None):
        _check_choice("kind", kind, LOGIT_KINDS)
        _check_choice("normalize", normalize, FEATURE_NORMS)
        _check_choice("feature_loss", feature_loss, FEATURE_LOSSES)
        if feature_temperature <= 0:
            raise ValueError(f"feature_temperature must be > 0, got {feature_temperature}")
        _check_choice("branches", branches, FEATURE_BRANCHES)
        _check_choice("teacher_weight", teacher_weight, ("ones", "target"))
        kd_weight_schedule(0, total_steps, schedule)
        if not pairs:
            raise ValueError("FeatureKD needs at least one {student_layer: teacher_layer} pair")
        if teacher_flip_test and not alpha_logits:
            raise ValueError("teacher_flip_test=True averages the teacher's heatmaps for the logits term, "
                             "but alpha_logits=0 leaves that term out; the hints use unflipped features")
        freeze(teacher)
        adapters = _build_adapters(teacher, student, dict(pairs), branches, _spatial_size(input_size),
                                   _spatial_size(teacher_input_size or input_size))
        losses = {"feat": HintTerm(beta, adapters, normalize, feature_loss, feature_temperature)}
        if alpha_logits:
            losses["kd"] = LogitTerm(alpha_logits, kind, temperature, teacher_weight)
        super().__init__(teacher, student, losses, pairs=pairs, branches=branches, schedule=schedule,
                         total_steps=total_steps, teacher_input_size=teacher_input_size,
                         teacher_output=teacher_output, teacher_flip_test=teacher_flip_test, flip_pairs=flip_pairs)
        if feature_cache is not None:
            if len(feature_cache) != len(self.pairs):
                raise ValueError(f"feature_cache: {len(feature_cache)} caches for {len(self.pairs)} layer pairs; "
                                 "give one per pair, in the pairs' order")
            if alpha_logits and cache is None:
                raise ValueError("feature_cache without cache: the logits term would still run the teacher; "
                                 "give the heatmap cache too (or alpha_logits=0)")
            if teacher_flip_test:
                raise ValueError("teacher_flip_test needs the live teacher; the caches hold plain-crop outputs")
        self.warp_cache, self.feature_caches = cache, (list(feature_cache) if feature_cache is not None else None)

    def teacher_outputs(self, batch: dict) -> dict:
        """From the caches when given (:class:`~posekd_lib.teacher_cache.TeacherCache` of the teacher's
        heatmaps and of each hinted layer's features, warped to each augmented crop; a mirrored crop
        gets the mirrored plain-crop features, an approximation, see docs/experiments.md), so a
        hinted step runs no teacher forward; else, and for batches the caches do not hold, the
        live teacher."""
        if self.feature_caches is None:
            return super().teacher_outputs(batch)
        if "meta" not in batch:
            raise KeyError("FeatureKD(feature_cache=...) needs batch['meta'] (index, center, scale, rotation, "
                           "flipped) from TopDownDataset")
        size = (int(batch["image"].shape[-1]), int(batch["image"].shape[-2]))
        device = batch["image"].device
        try:
            features = [c.for_batch(batch, input_size=size).to(device) for c in self.feature_caches]
            heatmaps = self.warp_cache.for_batch(batch, input_size=size).to(device) if "kd" in self.losses else None
        except CacheMissError as e:
            return self._live_teacher_outputs(batch, e)
        return {"heatmaps": heatmaps, "features": features}

    @property
    def adapters(self) -> nn.ModuleDict:
        """The hint adapters, one per pair, keyed by student layer (dots written ``/``)."""
        return self.losses["feat"].adapters

    beta = property(lambda self: self.losses["feat"].weight)
    alpha = property(lambda self: self.losses["kd"].weight if "kd" in self.losses else 0.0)
    normalize = property(lambda self: self.losses["feat"].normalize)


def _build_adapters(teacher: nn.Module, student: nn.Module, pairs: dict, branches: str, size, teacher_size) -> dict:
    """One :class:`FeatureAdapter` per pair, sized by one dummy forward of each net, on the student's device."""
    s_shapes = dict(list_feature_shapes(student, (1, 3, size[1], size[0]), list(pairs)))
    t_shapes = dict(list_feature_shapes(teacher, (1, 3, teacher_size[1], teacher_size[0]), list(pairs.values())))
    adapters = {}
    for s_name, t_name in pairs.items():
        for name, shapes, net in ((s_name, s_shapes, "student"), (t_name, t_shapes, "teacher")):
            if name not in shapes:
                raise ValueError(f"{net} layer {name!r} did not run in a forward pass")
        s_c = _channels(s_shapes[s_name], s_name, branches)
        t_c = _channels(t_shapes[t_name], t_name, branches)
        adapters[_adapter_key(s_name)] = FeatureAdapter(s_c, t_c).to(_device_of(student))
    return adapters


def _channels(shape, name: str, branches: str = "first") -> int:
    shapes = _branches_used(shape, branches) if isinstance(shape, list) and shape else [shape]
    for sh in shapes:
        if not isinstance(sh, tuple) or len(sh) != 4:
            raise ValueError(f"layer {name!r} outputs shape {shape}; feature KD needs an (N, C, H, W) map")
    return sum(sh[1] for sh in shapes)
