"""ONNX export, onnxruntime parity and evaluation through OnnxPoseModel, and the int8 (QDQ) path."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from posekd_lib.data.datasets import TopDownDataset, dataset_splits, predict_topdown
from posekd_lib.train.experiments import budget
from posekd_lib.models.students import build_student
from posekd_lib.mcu.onnx_export import (OnnxPoseModel, calibration_reader, evaluate_onnx, export_onnx,
                                    heatmap_agreement, int8_report, onnx_parity, quantize_int8)

from conftest import float32_atol, longest_dot_product

STUDENTS = ("squeezenet", "mobilenetv3")


def parity_atol(model: nn.Module, x: torch.Tensor) -> float:
    """How far onnxruntime's float32 kernels may be from torch's (each its own summation order,
    per CPU ISA): conftest.float32_atol with n the model's longest dot product."""
    with torch.no_grad():
        ref = model.eval()(x)
    atol = float32_atol(ref, longest_dot_product(model))
    print(f"[float32 golden] onnx parity atol {atol:.3g} (n={longest_dot_product(model)}, "
          f"max|ref|={float(ref.abs().max()):.4g})")
    return atol


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    b = budget("quick")
    return b, dataset_splits("quick")


def student_with_data_stats(name: str, split, b) -> nn.Module:
    """A student whose BatchNorm statistics come from 16 real crops: untrained mobilenetv3 with
    default BN stats outputs the same heatmaps for every input, which would make parity trivial."""
    torch.manual_seed(0)
    model = build_student(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    ds = TopDownDataset(split.ann_file, split.img_dir, b.input_size, b.heatmap_size, b.sigma)
    with torch.no_grad():
        model.train()(torch.stack([ds[i]["image"] for i in range(16)]))
    return model.eval()


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    b, splits = setup
    out = {}
    for name in STUDENTS:
        model = student_with_data_stats(name, splits.train, b)
        path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{name}.onnx", b.input_size, dynamo=False)
        out[name] = (model, path)
    return out


@pytest.fixture(scope="module")
def reader(setup):
    b, splits = setup
    return calibration_reader(splits.train, b.input_size, b.heatmap_size, b.sigma, num_samples=16, seed=0)


@pytest.fixture(scope="module")
def quantized(exported, reader, tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    return {name: quantize_int8(path, d / f"{name}.int8.onnx", reader) for name, (_, path) in exported.items()}


# --------------------------------------------------------------------------- float export
@pytest.mark.parametrize("name", STUDENTS)
def test_export_is_one_checked_file_with_named_dynamic_io(exported, name):
    _, path = exported[name]
    assert not path.with_name(path.name + ".data").exists()
    onnx.checker.check_model(str(path), full_check=True)
    g = onnx.load(str(path)).graph
    (inp,), (out,) = g.input, g.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert inp.name == "image" and dims(inp) == ["batch", 3, 128, 96]
    assert out.name == "heatmaps" and dims(out) == ["batch", 17, 32, 24]


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch(setup, exported, name, batch):
    """On real crops (on random noise the BN-rescaled outputs reach ~50, and the float32
    tolerance, which scales with them, would be loose)."""
    b, splits = setup
    model, path = exported[name]
    ds = TopDownDataset(splits.val.ann_file, splits.val.img_dir, b.input_size, b.heatmap_size, b.sigma)
    x = torch.stack([ds[i]["image"] for i in range(batch)])
    with torch.no_grad():
        assert (model(x) - model(torch.zeros_like(x))).abs().max() > 1e-2
    diff = onnx_parity(model, path, x)
    print(f"[float32 golden] onnx parity {name} batch {batch}: max abs diff {diff:.3g}")
    assert diff <= parity_atol(model, x)


def test_fixed_batch_export_runs_larger_batches_in_chunks(exported, tmp_path):
    model, _ = exported["squeezenet"]
    path = export_onnx(model, tmp_path / "fixed.onnx", (96, 128), dynamic_batch=False, dynamo=False)
    m = OnnxPoseModel(path)
    assert m.fixed_batch == 1
    x = torch.randn(3, 3, 128, 96)
    assert onnx_parity(model, path, x) <= parity_atol(model, x)


@pytest.mark.slow
def test_dynamo_exporter_matches_torch_at_opset_17(exported, tmp_path):
    model, _ = exported["squeezenet"]
    path = export_onnx(model, tmp_path / "dynamo.onnx", (96, 128), opset=17, dynamo=True)
    assert not (tmp_path / "dynamo.onnx.data").exists()
    assert {o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")} == {17}
    x = torch.randn(2, 3, 128, 96)
    assert onnx_parity(model, path, x) <= parity_atol(model, x)


@pytest.mark.parametrize("name", STUDENTS)
def test_onnx_model_gives_torch_keypoints_through_predict_topdown(setup, exported, name):
    b, splits = setup
    model, path = exported[name]
    ds = TopDownDataset(splits.val.ann_file, splits.val.img_dir, b.input_size, b.heatmap_size, b.sigma)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(6)), batch_size=4)
    ref = predict_topdown(model, loader, ds.codec, progress=False)
    got = predict_topdown(OnnxPoseModel(path), loader, ds.codec, progress=False)
    assert [r["image_id"] for r in got] == [r["image_id"] for r in ref]
    np.testing.assert_allclose([r["keypoints"] for r in got], [r["keypoints"] for r in ref], atol=0.02)
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in ref], atol=1e-4)


def test_evaluate_onnx_equals_torch_evaluation(setup, exported):
    from posekd_lib.evaluation.coco import evaluate_topdown

    b, splits = setup
    model, path = exported["squeezenet"]
    args = (splits.val, b.input_size, b.heatmap_size, b.sigma)
    ref = evaluate_topdown(model, *args, flip_test=False)
    got = evaluate_onnx(path, *args, flip_test=False)
    assert got.keys() == ref.keys()
    np.testing.assert_allclose([got[k] for k in ref], [ref[k] for k in ref], atol=1e-6)


# --------------------------------------------------------------------------- errors
def test_errors_name_the_file_and_the_expected_input(exported, tmp_path):
    _, path = exported["squeezenet"]
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OnnxPoseModel(tmp_path / "nope.onnx")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="broken.onnx"):
        OnnxPoseModel(bad)
    with pytest.raises(ValueError, match=r"squeezenet.onnx.*\(w, h\) = \(96, 128\)"):
        OnnxPoseModel(path)(torch.zeros(1, 3, 256, 192))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        OnnxPoseModel(path)(torch.zeros(3, 128, 96))
    with pytest.raises(ValueError, match="should end in .onnx"):
        export_onnx(exported["squeezenet"][0], tmp_path / "model.pt", (96, 128), dynamo=False)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "q.onnx", None)
    with pytest.raises(ValueError, match="MinMax"):
        quantize_int8(path, tmp_path / "q.onnx", None, method="minmax")


# --------------------------------------------------------------------------- int8 path
def test_calibration_reader_yields_seeded_crops_and_rewinds(setup, reader):
    b, splits = setup
    reader.rewind()
    items = list(iter(reader.get_next, None))
    assert len(items) == len(reader) == 16
    assert all(set(it) == {"image"} and it["image"].shape == (1, 3, 128, 96) and it["image"].dtype == np.float32
               for it in items)
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["image"], items[0]["image"])
    other = calibration_reader(splits.train, b.input_size, b.heatmap_size, b.sigma, num_samples=4, seed=1)
    assert len(other) == 4
    assert not all(np.array_equal(other.get_next()["image"], it["image"]) for it in items[:1])
    reader.rewind()


@pytest.mark.parametrize("name", STUDENTS)
def test_int8_model_is_qdq_int8_smaller_and_close_to_float(exported, quantized, reader, name):
    _, fpath = exported[name]
    qpath = quantized[name]
    rep = int8_report(fpath, qpath)
    assert rep["quantize_nodes"] > 0 and rep["dequantize_nodes"] >= rep["float_op_types"]["Conv"]
    assert rep["int8_op_types"]["Conv"] == rep["float_op_types"]["Conv"]
    assert rep["int8_bytes"] < 0.4 * rep["float_bytes"]
    q = onnx.load(str(qpath)).graph
    dtype = {i.name: i.data_type for i in q.initializer}
    zp = lambda op: {dtype[n.input[2]] for n in q.node if n.op_type == op}  # noqa: E731
    assert zp("QuantizeLinear") == {onnx.TensorProto.INT8}
    assert zp("DequantizeLinear") == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}  # int32: conv biases
    out = OnnxPoseModel(qpath)(torch.zeros(2, 3, 128, 96))
    assert out.shape == (2, 17, 32, 24) and torch.isfinite(out).all()
    agree = heatmap_agreement(fpath, qpath, reader)
    assert agree["num_crops"] == 16
    assert agree["corr"] > 0.9, agree


def test_int8_model_evaluates_with_cocoeval(setup, quantized):
    b, splits = setup
    metrics = evaluate_onnx(quantized["squeezenet"], splits.val, b.input_size, b.heatmap_size, b.sigma,
                            flip_test=False)
    assert 0.0 <= metrics["AP"] <= 1.0 and 0.0 <= metrics["AR"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["Percentile", "Entropy"])
def test_histogram_calibration_methods(exported, reader, tmp_path, method):
    _, fpath = exported["squeezenet"]
    qpath = quantize_int8(fpath, tmp_path / f"{method}.onnx", reader, method=method, per_channel=False)
    assert heatmap_agreement(fpath, qpath, reader)["corr"] > 0.9
