"""Torch vs ONNX float vs ONNX int8 (QDQ, the STM32 path) per student: CPU speed, file size, agreement, AP.

    python benchmarks/bench_onnx.py --mode quick           # seconds: checks that everything runs
    python benchmarks/bench_onnx.py                        # workshop mode (trains the baselines if not cached)

Each student is the mode's cached baseline (``configs/baseline_squeezenet.yaml`` with ``model.student``
set, through ``run.launch``; ``--untrained`` skips
training and uses a from-scratch student whose BatchNorm statistics come from 32 training crops).
It is exported with ``export_onnx`` and quantized with ``quantize_int8`` (MinMax, per-channel
weights) from ``--calib`` un-augmented training crops. Latency: batch 1, one thread (torch
``set_num_threads`` / onnxruntime ``intra_op_num_threads``), median of timed runs after warm-up.
Throughput: images/s at ``--batch``, one thread. Sizes: bytes of the ``.onnx`` files and of the
torch ``state_dict``. Agreement: int8 vs float heatmaps on the calibration crops. AP: COCO AP
(flip test, ground-truth boxes) on the validation split, scored the same way for all three.
Figures depend on the machine and its load; on a CPU without VNNI the int8 QDQ model is usually
slower than fp32 in onnxruntime (it is the file format for STM32Cube.AI, not a desktop speed-up).
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch


from posekd_lib.config import get_mode
from posekd_lib.data.datasets import TopDownDataset, dataset_splits
from posekd_lib.evaluation.coco import evaluate_topdown
from posekd_lib.train.experiments import budget, build_student_model
from posekd_lib.run import launch
from posekd_lib.mcu.onnx_export import (OnnxPoseModel, calibration_reader, export_onnx, heatmap_agreement,
                                    onnx_parity, quantize_int8)

STUDENTS = ("squeezenet", "mobilenetv3", "mobilenetv3_os16")


def with_data_bn_stats(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every BatchNorm's running statistics to those of batch ``x`` (untrained but input-dependent)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    return model.eval()


@torch.inference_mode()
def latency_ms(model, x: torch.Tensor, runs: int) -> float:
    """Median milliseconds of one forward pass over ``runs`` timed calls after 3 warm-up calls."""
    for _ in range(3):
        model(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


@torch.inference_mode()
def throughput(model, x: torch.Tensor, seconds: float) -> float:
    """Images/s at batch ``len(x)``: one warm-up batch, then batches for ``seconds`` (at least 2)."""
    model(x)
    n, start = 0, time.perf_counter()
    while n < 2 * len(x) or time.perf_counter() - start < seconds:
        model(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def state_dict_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None, help="quick | workshop | full (default: $POSEKD_MODE, else workshop)")
    ap.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    ap.add_argument("--untrained", action="store_true", help="no training: BN statistics from data only")
    ap.add_argument("--calib", type=int, default=64, help="calibration crops for int8")
    ap.add_argument("--batch", type=int, default=16, help="throughput batch size")
    ap.add_argument("--runs", type=int, default=None, help="timed batch-1 runs (default 50, quick 20)")
    ap.add_argument("--seconds", type=float, default=None, help="throughput timing (default 3, quick 1)")
    ap.add_argument("--no-ap", action="store_true", help="skip the COCO AP evaluations")
    ap.add_argument("--out", default=None, help="folder for the .onnx files (default: a temporary one)")
    args = ap.parse_args(argv)
    mode = get_mode(args.mode)
    quick = mode == "quick"
    runs, seconds = args.runs or (20 if quick else 50), args.seconds or (1.0 if quick else 3.0)
    torch.set_num_threads(1)
    b = budget(mode)
    splits = dataset_splits(mode)
    w, h = b.input_size
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="posekd_onnx_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = calibration_reader(splits.train, b.input_size, b.heatmap_size, b.sigma, num_samples=args.calib)
    print(f"mode={mode} input (w, h)={b.input_size} calib crops={len(reader)} threads=1 files in {out_dir}")

    x1, xb = torch.randn(1, 3, h, w), torch.randn(args.batch, 3, h, w)
    rows = []
    for name in args.students:
        if args.untrained:
            torch.manual_seed(0)
            ds = TopDownDataset(splits.train.ann_file, splits.train.img_dir, b.input_size, b.heatmap_size, b.sigma)
            model = with_data_bn_stats(build_student_model(name), torch.stack([ds[i]["image"] for i in range(32)]))
        else:
            model = launch("baseline_squeezenet", [f"model.student={name}"], mode, progress=False,
                           show=False).model.cpu().eval()
        fpath = export_onnx(model, out_dir / f"{name}.onnx", b.input_size, dynamo=False)
        qpath = quantize_int8(fpath, out_dir / f"{name}.int8.onnx", reader)
        crops = torch.from_numpy(reader.get_next()["image"])
        agree = heatmap_agreement(fpath, qpath, reader)
        models = {"torch": model, "onnx_fp32": OnnxPoseModel(fpath, threads=1),
                  "onnx_int8": OnnxPoseModel(qpath, threads=1)}
        sizes = {"torch": state_dict_bytes(model), "onnx_fp32": fpath.stat().st_size, "onnx_int8": qpath.stat().st_size}
        for kind, m in models.items():
            row = {"student": name, "model": kind, "MB": sizes[kind] / 1e6,
                   "lat_ms": latency_ms(m, x1, runs), "img_s": throughput(m, xb, seconds)}
            if not args.no_ap:
                row["AP"] = evaluate_topdown(m, splits.val, b.input_size, b.heatmap_size, b.sigma)["AP"]
            rows.append(row)
        print(f"{name}: parity fp32 max|diff|={onnx_parity(model, fpath, crops):.1e}; int8 vs fp32 heatmaps "
              f"corr={agree['corr']:.4f} max|diff|={agree['max_abs']:.3f} mean|diff|={agree['mean_abs']:.4f} "
              f"same peak={agree['argmax_agree']:.2f} ({agree['num_crops']} crops)")

    cols = ["student", "model", "MB", "lat_ms", "img_s"] + ([] if args.no_ap else ["AP"])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
