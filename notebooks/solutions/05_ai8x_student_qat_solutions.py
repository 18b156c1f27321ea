"""Solutions to the exercises of notebook 05 (MAX78000 student, KD, QAT, pruning).

Run from the repository root:  python notebooks/solutions/05_ai8x_student_qat_solutions.py
(quick mode unless POSEKD_MODE says otherwise; quick runs are a few steps long, so the numbers only
show that the code works — run in workshop mode for meaningful ones).
"""
from __future__ import annotations

import os

from posekd_lib.mcu import ai8x, max78000, pruning
from posekd_lib.models import ai8x_models as am
from posekd_lib.train.experiments import train_ai8x
from posekd_lib.run import launch

KEYS = ("AP", "AP50", "PCK@0.2")


def _summary(run) -> dict:
    return {k: {m: round(run.metrics[k][m], 4) for m in KEYS} for k in ("float", "int8")}


def exercise_1(mode: str | None = None) -> dict:
    """The tiny student trained on ground truth only vs distilled (FPD), float and int8.

    Same steps, data and seed; only the loss differs. Quantization costs both about the same, so
    whatever KD gains in float carries over to the integer model.
    """
    return {"ground truth": _summary(launch("ai8x_tiny_gt", mode=mode, progress=False, show=False)),
            "fpd": _summary(launch("ai8x_tiny_fpd", mode=mode, progress=False, show=False))}


def exercise_2(mode: str | None = None) -> dict:
    """QAT with the 4-bit example policy (enc4, enc4b at 4 bits) vs the 8-bit default.

    Rounding those two layers to 16 levels without retraining moves the heatmaps a lot; a QAT phase
    with the same policy lets the other layers adapt to it and recovers most of the loss, for 32 kB
    less weight memory. (A per-layer QAT policy is not a config key, so this exercise calls
    ``experiments.train_ai8x``, the trainer the ``ai8x_tiny_fpd`` config runs, with the policy.)
    """
    run4 = train_ai8x("tiny", mode=mode, kd="fpd", qat_policy=am.QAT_POLICY_4BIT_EXAMPLE,
                      tag="ai8x_tiny_fpd_4bit_s0", progress=False)
    run8 = train_ai8x("tiny", mode=mode, kd="fpd", progress=False)
    shape = am.input_shape(am.AI8X_STUDENT_INPUT)
    out = {}
    for name, run in (("8-bit", run8), ("4-bit example", run4)):
        rep = max78000.resource_report(run.model, shape, data_format=am.AI8X_DATA_FORMAT)
        out[name] = {"weight_bytes": rep.totals["weight_bytes"], **_summary(run)}
    return out


def exercise_3() -> dict:
    """A 50 % channel-pruned tiny student: it still fits, with far more headroom.

    The freed weight memory could buy a wider decoder (the heatmap resolution is what limits AP at
    strict thresholds) or the `small` variant's extra 64-channel layer.
    """
    shape = am.input_shape(am.AI8X_STUDENT_INPUT)
    out = {}
    for name, net in (("tiny", am.ai85posenet("tiny")),
                      ("tiny, 50 % channels", pruning.prune_channels(am.ai85posenet("tiny"), shape, 0.5))):
        rep = max78000.resource_report(net, shape, data_format=am.AI8X_DATA_FORMAT)
        out[name] = {"weight_bytes": rep.totals["weight_bytes"], "fits": rep.fits,
                     "latency_ms": round(rep.totals["cycles"] / max78000.limits(85).cnn_clock_hz * 1e3, 2)}
    return out


def exercise_4() -> dict:
    """A depthwise conv (groups = in = out = 16): the MAX78000 has no grouped convolution, the
    MAX78002 runs depthwise ones (and only those: groups=4 would be rejected there too)."""
    out = {}
    for dev in (85, 87):
        try:
            ai8x.FusedConv2dBNReLU(16, 16, 3, padding=1, groups=16, device=ai8x.Device(dev), name="grouped")
            out[max78000.limits(dev).name] = "accepted"
        except ai8x.Ai8xRuleError as e:
            out[max78000.limits(dev).name] = f"rejected: {e}"
    return out


if __name__ == "__main__":
    os.environ.setdefault("POSEKD_MODE", "quick")
    print("1:", exercise_1())
    print("2:", exercise_2())
    print("3:", exercise_3())
    print("4:", exercise_4())
