"""Which half of a bottom-up student fails: its heatmaps or its PAFs.

    python benchmarks/bench_bottom_up_maps.py RUN_FOLDER [--variant tiny_s4] [--images 100]
    python benchmarks/bench_bottom_up_maps.py runs/workshop/checkpoints/curve_s4_s0_float --variant tiny_s4

Loads a bottom-up MAX78000 student's ``latest.pt`` (a float or QAT run folder of
``bottom_up.train_bottom_up``) and scores, on the first ``--images`` validation frames (the
curve's fixed frames), the whole-frame COCO AP of four mixes decoded by the same ``PafCodec``:
the student's heatmaps and PAFs; its heatmaps with the label PAFs; the label heatmaps with its
PAFs; the label maps (the decoder's ceiling at this stride). Then the heatmap peaks: how many
label peaks have a student peak of the same keypoint within ``--radius`` input pixels (recall)
and how many student peaks have a label peak there (precision), and the PAF length on the
labels' limb cells (label: about 1) and off them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    import torch.nn.functional as F

    from posekd_lib.ai8x_models import HeatmapView, ai85bottomup
    from posekd_lib.config import get_mode, set_torch_threads
    from posekd_lib.data import BottomUpDataset, dataset_splits
    from posekd_lib.evaluation import bottom_up_results, coco_evaluate, first_images
    from posekd_lib.keypoints import NUM_OPENPOSE_KEYPOINTS
    from posekd_lib.train import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a bottom-up run folder holding latest.pt")
    ap.add_argument("--variant", default="tiny_s4", help="ai85bottomup variant the run trained")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--radius", type=float, default=8.0, help="peak match radius, input pixels")
    ap.add_argument("--mode", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_torch_threads(args.threads)

    model = ai85bottomup(args.variant)
    view = HeatmapView(model)
    ckpt = args.run / "latest.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt}: no checkpoint (give a bottom-up run folder)")
    load_checkpoint(ckpt, view)
    view.eval()
    split = dataset_splits(get_mode(args.mode)).val
    ids = first_images(split.ann_file, args.images)
    ds = BottomUpDataset(split.ann_file, split.img_dir, model.input_size, model.stride, train=False)
    keep = {int(i) for i in ids}
    ds.image_ids = [i for i in ds.image_ids if i in keep]
    pred, label, affines, image_ids = [], [], [], []
    with torch.no_grad():
        for b in torch.utils.data.DataLoader(ds, batch_size=50):
            pred.append(view(b["image"]).numpy())
            label.append(torch.cat([b["heatmaps"], b["pafs"]], 1).numpy())
            affines += list(b["meta"]["affine"].numpy())
            image_ids += b["meta"]["image_id"].tolist()
    pred, label = np.concatenate(pred), np.concatenate(label)
    n_hm = NUM_OPENPOSE_KEYPOINTS + 1

    def ap_of(hm, paf) -> float:
        return coco_evaluate(split.ann_file, bottom_up_results(hm, paf, affines, image_ids, ds.codec), img_ids=ids)["AP"]

    print(f"{args.run} ({args.variant}, stride {model.stride}), {len(image_ids)} validation frames")
    for text, hm, paf in (("student heatmaps + student PAFs", pred, pred), ("student heatmaps + label PAFs", pred, label),
                          ("label heatmaps + student PAFs", label, pred), ("label heatmaps + label PAFs", label, label)):
        print(f"  AP, {text:32s} {ap_of(hm[:, :n_hm], paf[:, n_hm:]):.4f}")

    size = (model.input_size[1], model.input_size[0])
    found = matched = n_pred = n_label = 0
    for i in range(len(pred)):
        up = [F.interpolate(torch.as_tensor(m[i:i + 1, :n_hm]), size=size, mode="bicubic")[0].numpy() for m in (pred, label)]
        for p, q in zip(ds.codec.find_peaks(up[0]), ds.codec.find_peaks(up[1], threshold=0.5)):
            n_pred, n_label = n_pred + len(p), n_label + len(q)
            if len(p) and len(q):
                d = np.hypot(p[:, None, 0] - q[None, :, 0], p[:, None, 1] - q[None, :, 1])
                found += int((d.min(0) < args.radius).sum())
                matched += int((d.min(1) < args.radius).sum())
    print(f"  heatmap peaks: {n_label} label, {n_pred} student; recall {found / max(n_label, 1):.3f}, "
          f"precision {matched / max(n_pred, 1):.3f} (within {args.radius:g} input px)")
    length = [np.linalg.norm(m[:, n_hm:].reshape(len(m), -1, 2, *m.shape[2:]), axis=2) for m in (label, pred)]
    on = length[0] > 0.5
    print(f"  PAF length: label {length[0][on].mean():.3f} on limb cells; student {length[1][on].mean():.3f} on them, "
          f"{length[1][~on].mean():.3f} off them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
