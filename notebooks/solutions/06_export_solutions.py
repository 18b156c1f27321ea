"""Solutions to the exercises of notebook 06 (export).

Run from the repository root:  python notebooks/solutions/06_export_solutions.py
(quick mode unless POSEKD_MODE says otherwise).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


from posekd_lib.mcu import ai8x, export, max78000
from posekd_lib.models import ai8x_models as am
from posekd_lib.mcu import onnx_export as ox
from posekd_lib.data.datasets import dataset_splits
from posekd_lib.train.experiments import budget
from posekd_lib.runs.reference import load_reference_ai8x, reference_table
from posekd_lib.run import launch


def exercise_1() -> dict:
    """Resource report and int8 AP of notebook 05's three long-budget FPD students (20,000 + 2,500
    steps, shipped in reference/): `small` spends 96,768 more weight bytes than `tiny` (263,632 against
    166,864) and 0.3 ms more per inference for +0.069 int8 AP; `medium` another 73,728 bytes (337,360)
    and 0.3 ms for +0.020 (the cards: 0.328, 0.397, 0.416). Each step of capacity pays less."""
    shape = am.input_shape(am.AI8X_STUDENT_INPUT)
    table = reference_table().set_index("run")
    out = {}
    for run in ("ref_ai8x_tiny_fpd_s0_qat", "ref_ai8x_tiny_fpd_small_s0_qat", "ref_ai8x_tiny_fpd_medium_s0_qat"):
        model = load_reference_ai8x(run)["qat"]
        t = max78000.resource_report(model, shape, data_format=am.AI8X_DATA_FORMAT).totals
        out[model.variant] = {"weight_bytes": t["weight_bytes"], "cycles": t["cycles"],
                              "latency_ms": round(t["cycles"] / max78000.limits(85).cnn_clock_hz * 1e3, 2),
                              "int8_AP": round(float(table.loc[run, "int8.AP"]), 4)}
    return out


def exercise_2(mode: str | None = None) -> dict:
    """int8 ONNX AP by calibration method and number of crops.

    MinMax keeps every outlier in range (coarse steps for the bulk of the values); Percentile and
    Entropy clip outliers. With heatmap outputs the clipping of the last layer matters most;
    8 crops already give usable ranges for this small model, the method matters more.
    """
    b = budget(mode)
    splits = dataset_splits(mode)
    student = launch("kl_squeezenet", mode=mode, progress=False, show=False).model.eval()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        f = ox.export_onnx(student, Path(tmp) / "f.onnx", input_size=b.input_size, dynamo=False)
        for method in ox.CALIBRATION_METHODS:
            for n in (8, 64):
                calib = ox.calibration_reader(splits.train, b.input_size, b.heatmap_size, b.sigma, num_samples=n)
                q = ox.quantize_int8(f, Path(tmp) / f"q_{method}_{n}.onnx", calib, method=method)
                out[f"{method}, {n} crops"] = round(ox.evaluate_onnx(q, splits.val, b.input_size, b.heatmap_size,
                                                                     b.sigma, progress=False)["AP"], 4)
    return out


def exercise_3() -> str:
    """Modules registered in another order than the forward runs them: network_yaml refuses.

    izer assigns the checkpoint's weights to hardware layers in state-dict order, so a mismatch
    would silently load every layer with another layer's weights.
    """
    class Reordered(am.AI85PoseNet):
        def __init__(self):
            super().__init__(am.VARIANTS["tiny"])
            order = ["enc2", "enc1", *[n for n, _, _ in self.spec[2:]], "head"]
            mods = {n: getattr(self, n) for n in order}
            for n in order:
                delattr(self, n)
            for n in order:
                self.add_module(n, mods[n])
            self._run = ["enc1", "enc2", *[n for n, _, _ in self.spec[2:]], "head"]

        def forward(self, x):
            for n in self._run:
                x = getattr(self, n)(x)
            return x

    try:
        export.network_yaml(Reordered(), am.input_shape(am.AI8X_STUDENT_INPUT), "ai85posenet", "posekd",
                            data_format="CHW")
    except ai8x.Ai8xRuleError as e:
        return str(e)
    return "no error (unexpected)"


if __name__ == "__main__":
    os.environ.setdefault("POSEKD_MODE", "quick")
    print("1:", exercise_1())
    print("2:", exercise_2())
    print("3:", exercise_3())
