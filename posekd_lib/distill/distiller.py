"""The distiller: one module holding the student, the frozen teacher and weighted loss terms."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..data.keypoints import COCO_FLIP_PAIRS
from .losses import joints_mse
from .teacher_cache import CacheMissError
from .features import (FEATURE_BRANCHES, FEATURE_LOSSES, FEATURE_NORMS, FeatureAdapter, FeatureHooks,
                       _channels, _feature_tensor, feature_kd_loss, list_feature_shapes)
from .logits import LOGIT_KINDS, _spatial_size, kd_weight_schedule
from .teacher import (_Teacher, _check_choice, _check_heatmaps, _device_of, _logit_kd_term, _sample_keys,
                      _student_heatmaps, freeze)

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

    ``cache=`` a :class:`~posekd_lib.distill.teacher_cache.TeacherCache` (built once over the training
    set's plain crops) serves augmented batches too: each sample's cached heatmaps warped by its
    crop's augmentation, so a distilled step runs no teacher forward (an approximation; see that
    module). With it, ``teacher_blob_sigma`` (student heatmap cells; the labels' σ, 2, is the natural
    value) samples the teacher's maps on the student's grid with their blobs widened to that width,
    for a teacher that answers on a finer grid than the student's (``TeacherCache.for_batch``).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module | None = None, kind: str = "mse", alpha: float = 0.5,
                 temperature: float = 1.0, schedule: str = "constant", total_steps: int | None = None,
                 teacher_input_size=None, teacher_weight: str = "ones", teacher_output: Callable | None = None,
                 cache=False, teacher_flip_test: bool = False,
                 flip_pairs: Sequence[tuple[int, int]] = COCO_FLIP_PAIRS, teacher_blob_sigma: float | None = None):
        super().__init__(teacher, student, {"kd": LogitTerm(alpha, kind, temperature, teacher_weight)},
                         schedule=schedule, total_steps=total_steps, teacher_input_size=teacher_input_size,
                         teacher_output=teacher_output, teacher_flip_test=teacher_flip_test, flip_pairs=flip_pairs)
        self.warp_cache = cache if hasattr(cache, "for_batch") else None
        self.cache: dict | None = {} if cache is True else None
        if teacher_blob_sigma is not None and self.warp_cache is None:
            raise ValueError("LogitsKD(teacher_blob_sigma=...) widens the blobs of a teacher cache's maps; "
                             "pass cache=<TeacherCache> (distill.options.teacher_cache: true)")
        self.teacher_blob_sigma = teacher_blob_sigma

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
                if self.teacher_blob_sigma is None:
                    hm = self.warp_cache.for_batch(batch)
                else:       # sampled on the student's grid (its labels' size), blobs of the student's width
                    hm = self.warp_cache.for_batch(batch, out_size=tuple(batch["target"].shape[-1:-3:-1]),
                                                   blob_sigma=self.teacher_blob_sigma)
                return {"heatmaps": hm.to(batch["image"].device), "features": None}
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
        """From the caches when given (:class:`~posekd_lib.distill.teacher_cache.TeacherCache` of the teacher's
        heatmaps and of each hinted layer's features, warped to each augmented crop; a mirrored crop
        gets the mirrored plain-crop features, an approximation, see docs/experiments.md), so a
        hinted step runs no teacher forward; else, and for batches the caches do not hold, the
        live teacher."""
        if self.feature_caches is None:
            return super().teacher_outputs(batch)
        if "meta" not in batch:
            raise KeyError("FeatureKD(feature_cache=...) needs batch['meta'] (index, center, scale, rotation, "
                           "flipped) from TopDownDataset")
        device = batch["image"].device
        try:       # each cache warps onto the batch's own crops (for_batch reads their size)
            features = [c.for_batch(batch).to(device) for c in self.feature_caches]
            heatmaps = self.warp_cache.for_batch(batch).to(device) if "kd" in self.losses else None
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


