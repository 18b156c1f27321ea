"""Which half of a bottom-up student fails: its heatmaps or its PAFs (``bottom_up.map_diagnosis``).

    python benchmarks/bench_bottom_up_maps.py RUN_FOLDER [--variant tiny_s4] [--images 100]
    python benchmarks/bench_bottom_up_maps.py runs/workshop/checkpoints/curve_s4_s0_float --variant tiny_s4
    python benchmarks/bench_bottom_up_maps.py RUN_FOLDER --variant tiny_s4 --input-size 160 128 --sigma 3.5

Loads a bottom-up MAX78000 student's ``latest.pt`` (a float or QAT run folder of
``bottom_up.train_bottom_up``) and prints, on the first ``--images`` validation frames (the
curve's fixed frames), the whole-frame COCO AP of four mixes decoded by the same ``PafCodec``:
the student's heatmaps and PAFs; its heatmaps with the label PAFs; the label heatmaps with its
PAFs; the label maps (the decoder's ceiling at this stride). Then the heatmap peaks (recall and
precision within ``--radius`` input pixels) and the PAF length on the labels' limb cells.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None) -> int:
    from posekd_lib.models.ai8x_models import HeatmapView, ai85bottomup
    from posekd_lib.train.bottom_up import map_diagnosis
    from posekd_lib.config import get_mode, set_torch_threads
    from posekd_lib.data.datasets import dataset_splits
    from posekd_lib.evaluation.coco import first_images
    from posekd_lib.train import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a bottom-up run folder holding latest.pt")
    ap.add_argument("--variant", default="tiny_s4", help="ai85bottomup variant the run trained")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--radius", type=float, default=8.0, help="peak match radius, input pixels")
    ap.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                    help="the run's input size (model.options.input_size; default 128 128)")
    ap.add_argument("--sigma", type=float, default=None, help="the run's heatmap σ (data.sigma; default 7)")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_torch_threads(args.threads)

    ckpt = args.run / "latest.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: no checkpoint (give a bottom-up run folder)")
    model = ai85bottomup(args.variant, **({} if args.input_size is None else {"input_size": tuple(args.input_size)}))
    load_checkpoint(ckpt, HeatmapView(model))
    split = dataset_splits(get_mode(args.mode)).val
    d = map_diagnosis(model, split, first_images(split.ann_file, args.images), args.radius, sigma=args.sigma)
    print(f"{args.run} ({args.variant}, stride {d['stride']}), {d['frames']} validation frames")
    for key, text in (("AP_student", "student heatmaps + student PAFs"), ("AP_student_heatmaps", "student heatmaps + label PAFs"),
                      ("AP_student_pafs", "label heatmaps + student PAFs"), ("AP_labels", "label heatmaps + label PAFs")):
        print(f"  AP, {text:32s} {d[key]:.4f}")
    print(f"  heatmap peaks: {d['peaks_label']} label, {d['peaks_student']} student; recall {d['peak_recall']:.3f}, "
          f"precision {d['peak_precision']:.3f} (within {d['radius']:g} input px)")
    print(f"  PAF length: label {d['paf_on_limbs_label']:.3f} on limb cells; student {d['paf_on_limbs_student']:.3f} "
          f"on them, {d['paf_off_limbs_student']:.3f} off them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
