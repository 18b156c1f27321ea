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
:class:`posekd_lib.data.codecs.HeatmapCodec`; tensor shapes are ``(N, C, H, W)``.

Resizing convention: the heatmap codec puts cell ``i`` of a stride-``s`` map at input pixel
``i·s`` (and a padded stride-``s`` conv centres its output cell ``i`` there too), so a resize from
width ``W`` to ``w`` must read output cell ``j`` from input cell ``j·W/w``. ``F.interpolate``
does not: ``align_corners=False`` reads ``(j+0.5)·W/w - 0.5`` (half a cell off when halving) and
``align_corners=True`` stretches the grid. :func:`resize_heatmaps`, :func:`resize_input` and
:class:`FeatureAdapter` sample at exactly ``j·W/w`` with ``F.grid_sample``.

Modules: :mod:`.logits` (the heatmap losses, resizes and schedule), :mod:`.teacher` (the frozen
teacher), :mod:`.features` (hooks, adapters, hint losses), :mod:`.distiller` (the terms,
:class:`Distiller`, :class:`LogitsKD`, :class:`FeatureKD`). Import from ``posekd_lib.distill``.
"""
from __future__ import annotations

from .logits import (fpd_loss, kd_weight_schedule, LOGIT_KINDS, resize_heatmaps, resize_input, SCHEDULES,
                     spatial_kl_loss)  # noqa: F401
from .teacher import freeze  # noqa: F401
from .features import (FEATURE_BRANCHES, feature_kd_loss, FEATURE_LOSSES, FEATURE_NORMS, FeatureAdapter,
                       FeatureHooks, list_feature_shapes, standardize_channels, _feature_tensor)  # noqa: F401
from .distiller import (Distiller, FeatureKD, HintTerm, LogitsKD, LogitTerm)  # noqa: F401
