"""ONNX export of a float student, onnxruntime inference that plugs into the COCO evaluation, and the
STM32 int8 path (onnxruntime static quantization to QDQ int8, as STM32Cube.AI / ST Edge AI imports it).

Pipeline: `export_onnx` (one self-contained ``.onnx``: input ``image`` (N, 3, H, W), output
``heatmaps`` (N, K, H/4, W/4)) -> `onnx_parity` (max abs difference to torch) -> `OnnxPoseModel`
(an ``nn.Module`` face over an ``InferenceSession``, so ``predict_topdown`` / ``evaluate_topdown``
score ONNX files unchanged) -> `calibration_reader` (un-augmented train crops) -> `quantize_int8`
-> `int8_report` / `heatmap_agreement` / `evaluate_onnx`.

Quantization choice: QDQ format, int8 activations (asymmetric, per tensor, range from calibration)
and int8 weights (symmetric, per output channel by default). That is the QDQ int8 layout STM32Cube.AI
expects for an ONNX model; uint8 activations or the QOperator format are not what it runs natively.
"""
from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAME = "heatmaps"
CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")


# --------------------------------------------------------------------------- float export
def export_onnx(model: nn.Module, path, input_size=(192, 256), opset: int = 17, dynamic_batch: bool = True,
                dynamo: bool = True) -> Path:
    """Export ``model`` (eval mode, on CPU) to one self-contained ``.onnx`` file and check it.

    ``input_size`` is ``(w, h)``; the graph input is ``image`` (N, 3, h, w) with a symbolic batch
    when ``dynamic_batch``, the output ``heatmaps``. Weights are stored inside the file (no
    ``.onnx.data`` side file) so one file can be copied to STM32Cube.AI. ``dynamo=True`` uses the
    torch.export-based exporter (torch's default); ``False`` the older TorchScript exporter, which
    is ~40x faster to run and gives the same graph for these students. The file passes
    ``onnx.checker.check_model``.
    """
    import onnx

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"export_onnx: {path} should end in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in input_size)
    x = torch.zeros(1, 3, h, w)
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval().cpu()
    kw = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, dynamo=dynamo)
    if dynamo:
        kw.update(external_data=False, verbose=False,
                  dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None)
    else:
        kw.update(dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript")
            torch.onnx.export(model, (x,), str(path), **kw)
    finally:
        model.to(device).train(was_training)
    side = path.with_name(path.name + ".data")
    if side.exists():
        raise RuntimeError(f"export_onnx: the exporter wrote external weights to {side}; expected one file")
    onnx.checker.check_model(str(path), full_check=True)
    return path


def _session(path, providers=("CPUExecutionProvider",), threads: int | None = None):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as e:
        raise RuntimeError(f"onnxruntime could not load {path}: {e}") from e


class OnnxPoseModel(nn.Module):
    """An ONNX heatmap model behind the torch call convention: ``model(x)`` with x (N, 3, H, W).

    The tensor goes to numpy, through the ``InferenceSession`` and back, so ``predict_topdown`` and
    ``evaluate_topdown`` score an exported (or int8) file exactly as they score the torch model.
    ``eval()`` / ``train()`` change nothing (there is no training mode); gradients do not flow.
    """

    def __init__(self, path, providers=("CPUExecutionProvider",), threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.session = _session(self.path, providers, threads)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        n, _, h, w = inp.shape
        self.input_size = (w, h) if isinstance(w, int) and isinstance(h, int) else None
        self.fixed_batch = n if isinstance(n, int) else None

    def train(self, mode: bool = True) -> "OnnxPoseModel":
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.path}: expected an (N, 3, H, W) image batch, got shape {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size[::-1]:
            w, h = self.input_size
            raise ValueError(f"{self.path}: expects input size (w, h) = ({w}, {h}), i.e. (N, 3, {h}, {w}); "
                             f"got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        b = self.fixed_batch
        if b is not None and len(arr) % b:
            raise ValueError(f"{self.path}: exported with a fixed batch of {b}; got a batch of {len(arr)}")
        chunks = [arr] if b is None else np.split(arr, len(arr) // b)
        out = np.concatenate([self.session.run([self.output_name], {self.input_name: c})[0] for c in chunks])
        return torch.from_numpy(out).to(x.device)


def onnx_parity(model: nn.Module, path, x: torch.Tensor) -> float:
    """Max abs difference between the torch ``model`` (eval mode) and the ONNX file on input ``x``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(x.to(next(model.parameters()).device)).float().cpu()
    finally:
        model.train(was_training)
    return float((OnnxPoseModel(path)(x.cpu()) - ref).abs().max())


# --------------------------------------------------------------------------- int8 (STM32) path
def calibration_reader(split, input_size, heatmap_size, sigma: float = 2.0, num_samples: int = 64,
                       seed: int = 0):
    """An onnxruntime ``CalibrationDataReader`` over ``num_samples`` crops of ``split`` (``.ann_file`` +
    ``.img_dir``, normally the train split), picked at random with ``seed``, without augmentation.

    Each item is ``{"image": float32 (1, 3, h, w)}``, normalised as in training. Crops are decoded
    once; ``rewind()`` starts over (``quantize_int8`` rewinds before and after calibrating).
    """
    from onnxruntime.quantization import CalibrationDataReader

    from ..data.datasets import TopDownDataset

    ds = TopDownDataset(split.ann_file, split.img_dir, input_size, heatmap_size, sigma, train=False)
    if len(ds) == 0:
        raise ValueError(f"calibration_reader: no person crops in {split.ann_file}")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds))[:num_samples]
    images = [ds[int(i)]["image"].numpy()[None] for i in idx]

    class CropReader(CalibrationDataReader):
        def __init__(self):
            self.images, self.pos = images, 0

        def __len__(self) -> int:
            return len(self.images)

        def get_next(self):
            if self.pos >= len(self.images):
                return None
            self.pos += 1
            return {INPUT_NAME: self.images[self.pos - 1]}

        def rewind(self) -> None:
            self.pos = 0

    return CropReader()


def quantize_int8(float_onnx, out_path, calib_reader, per_channel: bool = True, method: str = "MinMax",
                  preprocess: bool = True) -> Path:
    """Static int8 quantization of ``float_onnx`` to ``out_path`` (QDQ, int8 activations and weights).

    ``method`` picks how activation ranges come from the calibration crops: ``"MinMax"`` (full
    range), ``"Percentile"`` (clip the 99.999th percentile) or ``"Entropy"`` (KL-optimal range).
    With ``preprocess`` the model first goes through onnxruntime's ``quant_pre_process`` (shape
    inference and graph optimisation, e.g. BatchNorm folded into convs), as onnxruntime advises.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_onnx, out_path = Path(float_onnx), Path(out_path)
    if not float_onnx.is_file():
        raise FileNotFoundError(f"float ONNX model not found: {float_onnx}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"quantize_int8: method={method!r}; choose one of {CALIBRATION_METHODS}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    calib_reader.rewind()
    with tempfile.TemporaryDirectory(prefix="posekd_q_") as tmp:
        src = float_onnx
        if preprocess:
            src = Path(tmp) / "pre.onnx"
            quant_pre_process(str(float_onnx), str(src), skip_symbolic_shape=False)
        try:
            quantize_static(str(src), str(out_path), calib_reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=per_channel, calibrate_method=getattr(CalibrationMethod, method),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        finally:
            calib_reader.rewind()
    return out_path


def _op_types(path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def int8_report(float_onnx, int8_onnx) -> dict:
    """File sizes (bytes), size ratio, QuantizeLinear / DequantizeLinear counts and op types of both files."""
    f_ops, q_ops = _op_types(float_onnx), _op_types(int8_onnx)
    f_bytes, q_bytes = Path(float_onnx).stat().st_size, Path(int8_onnx).stat().st_size
    return {"float_bytes": f_bytes, "int8_bytes": q_bytes, "size_ratio": q_bytes / f_bytes,
            "quantize_nodes": q_ops["QuantizeLinear"], "dequantize_nodes": q_ops["DequantizeLinear"],
            "float_op_types": dict(f_ops), "int8_op_types": dict(q_ops)}


def heatmap_agreement(float_onnx, int8_onnx, calib_reader) -> dict:
    """How close the int8 heatmaps stay to the float ones on the reader's crops.

    ``corr``: Pearson correlation over all heatmap values; ``max_abs`` / ``mean_abs``: errors;
    ``argmax_agree``: share of (crop, joint) maps whose peak cell is the same.
    """
    f_model, q_model = OnnxPoseModel(float_onnx), OnnxPoseModel(int8_onnx)
    calib_reader.rewind()
    xs = []
    while (item := calib_reader.get_next()) is not None:
        xs.append(item[INPUT_NAME])
    calib_reader.rewind()
    x = torch.from_numpy(np.concatenate(xs))
    f, q = f_model(x), q_model(x)
    fc, qc = f.flatten() - f.mean(), q.flatten() - q.mean()
    corr = float((fc @ qc) / (fc.norm() * qc.norm()).clamp_min(1e-12))
    agree = (f.flatten(2).argmax(-1) == q.flatten(2).argmax(-1)).float().mean()
    return {"corr": corr, "max_abs": float((f - q).abs().max()), "mean_abs": float((f - q).abs().mean()),
            "argmax_agree": float(agree), "num_crops": len(xs)}


def evaluate_onnx(path, split, input_size, heatmap_size, sigma: float = 2.0, flip_test: bool = True,
                  batch_size: int = 32, threads: int | None = None, **kw) -> dict:
    """COCO keypoint metrics of an ONNX file (float or int8) via ``evaluate_topdown``, as for torch models."""
    from ..evaluation.coco import evaluate_topdown

    return evaluate_topdown(OnnxPoseModel(path, threads=threads), split, input_size, heatmap_size, sigma,
                            flip_test=flip_test, batch_size=batch_size, **kw)
