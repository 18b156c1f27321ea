"""What each teacher's heatmaps are as a student's KD targets, on the student's own grid.

    python benchmarks/bench_teacher_targets.py                          # the demo line's shipped teachers
    python benchmarks/bench_teacher_targets.py --teachers demo_w16_128x96_ft2 demo_w16_224x160_x5 --persons 2000
    python benchmarks/bench_teacher_targets.py --blob-sigma 2     # + each teacher's blobs widened to σ 2

A stronger teacher is not always a better target (docs/experiments.md E44, E46): a teacher that
sees a larger crop answers on a finer grid, and its maps are warped onto the student's heatmap
grid (the teacher cache's warp, what every cached KD step reads). For each teacher, on the plain
(un-augmented) crops of every ``k``-th training person, with the student budget's crop and heatmap
size, this prints, over the labelled joints:

  * ``peak``: the warped map's maximum (a label's is 1);
  * ``to label``: the distance in student cells from its argmax to the label's, and the share of
    joints more than one cell off;
  * ``sigma``: the blob's width in student cells (the second moment of the positive map around
    its argmax, within 4 cells: the label's Gaussian of σ 2 reads 1.64 through this window);
  * ``contrast``: the spatial softmax at the KL's temperature (``--temperature``, the KL config's)
    as the KL uses it: its largest probability times the number of cells (1 = uniform), the
    signal a KL target carries about where the joint is.

``--blob-sigma S`` adds, for each teacher, a row of its maps widened to blobs of σ S student cells
(``TeacherCache.for_batch(blob_sigma=S)``, what ``distill.options.teacher_blob_sigma`` trains with).
Each teacher's cache is built on its first use (a few minutes) and stored under the mode's runs,
the same file the distilled runs read.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

SHIPPED = ("demo_w16_128x96_ft2", "demo_w16_160x128_x5", "demo_w16_224x160_x5", "demo_w16_256x192_x5")


def blob_width(maps: torch.Tensor, radius: int = 4) -> torch.Tensor:
    """Per map (N, K, H, W): the RMS width in cells (per axis) of its positive part within ``radius``
    cells of its argmax; the window truncates a wide blob (a Gaussian of σ 2 reads 1.64)."""
    n, k, h, w = maps.shape
    flat = maps.flatten(2)
    arg = flat.argmax(-1)
    ys = torch.arange(h).view(1, 1, h, 1).float()
    xs = torch.arange(w).view(1, 1, 1, w).float()
    cy, cx = (arg // w).float()[..., None, None], (arg % w).float()[..., None, None]
    d2 = (ys - cy) ** 2 + (xs - cx) ** 2
    m = maps.clamp_min(0) * (d2 <= radius ** 2)
    return (torch.sqrt((m * d2).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1e-12) / 2))


def target_stats(maps: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor, temperature: float) -> dict:
    """The figures above for warped teacher maps ``maps`` against label heatmaps ``labels`` (same
    shape), over the joints where ``seen`` (N, K) is true."""
    w = maps.shape[-1]
    peak, am = maps.flatten(2).max(-1)
    al = labels.flatten(2).argmax(-1)
    dist = torch.sqrt(((am % w - al % w).float()) ** 2 + ((am // w - al // w).float()) ** 2)
    p = F.softmax(maps.flatten(2).float() / temperature, dim=-1)
    contrast = p.amax(-1) * p.shape[-1]
    return {"peak": float(peak[seen].mean()), "to label": float(dist[seen].mean()),
            "> 1 cell %": float(100 * (dist[seen] > 1.5).float().mean()),
            "sigma": float(blob_width(maps)[seen].mean()), "contrast": float(contrast[seen].mean())}


def main(argv=None) -> int:
    from posekd_lib.config import get_mode, set_torch_threads
    from posekd_lib.models.teachers import load_teacher
    from posekd_lib.train.budgets import budget, training_set
    from posekd_lib.train.recipes import teacher_cache_for

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--teachers", nargs="+", default=list(SHIPPED))
    ap.add_argument("--persons", type=int, default=1000, help="persons scored (every k-th of the training split)")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--blob-sigma", type=float, default=None, help="also each teacher's blobs widened to this σ")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    set_torch_threads(args.threads)
    mode = get_mode(args.mode)
    b = budget(mode)

    ds = training_set(b)
    ds.train, ds.aug = False, None          # the plain crops: what the cache stores, unwarped by augmentation
    step = max(1, len(ds) // args.persons)
    subset = torch.utils.data.Subset(ds, list(range(0, len(ds), step))[:args.persons])
    batches = list(torch.utils.data.DataLoader(subset, batch_size=100, shuffle=False))
    labels = torch.cat([x["target"] for x in batches])
    seen = torch.cat([x["target_weight"] for x in batches]).reshape(labels.shape[:2]) > 0
    print(f"{mode}: {len(subset)} training persons, {int(seen.sum())} labelled joints; the student's crop "
          f"{tuple(b.input_size)}, heatmaps {tuple(b.heatmap_size)}, label sigma {b.sigma:g} cells; "
          f"KL temperature {args.temperature:g}")
    rows = {"labels": target_stats(labels, labels, seen, args.temperature)}
    for name in args.teachers:
        teacher, info = load_teacher(name, mode)
        size = getattr(teacher, "image_size", None) or tuple(b.input_size)
        cache = teacher_cache_for(teacher, mode, size)
        maps = torch.cat([cache.for_batch(x, out_size=b.heatmap_size, input_size=b.input_size) for x in batches])
        ap_txt = f"{info.val_ap:.3f}" if info.val_ap is not None else "?"
        rows[f"{name} ({size[0]}x{size[1]}, AP {ap_txt})"] = target_stats(maps, labels, seen, args.temperature)
        if args.blob_sigma is not None:
            wide = torch.cat([cache.for_batch(x, out_size=b.heatmap_size, input_size=b.input_size,
                                              blob_sigma=args.blob_sigma) for x in batches])
            rows[f"{name}, widened to sigma {args.blob_sigma:g}"] = target_stats(wide, labels, seen, args.temperature)
    width = max(len(k) for k in rows)
    cols = list(next(iter(rows.values())))
    print(f"{'':{width}s} " + " ".join(f"{c:>11s}" for c in cols))
    for k, r in rows.items():
        print(f"{k:{width}s} " + " ".join(f"{r[c]:11.3f}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
