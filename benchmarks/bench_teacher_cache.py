"""Teacher cache: what a distilled step costs with and without it, and how close its warped maps are.

    python benchmarks/bench_teacher_cache.py                  # the shipped teacher, light augmentation
    python benchmarks/bench_teacher_cache.py --aug hrnet --batches 8
    python benchmarks/bench_teacher_cache.py --features stage4     # the hint's features (notebook 04)

Prints (1) the seconds per batch of the teacher's forward (flip test, as KD uses it) against the
cache's warp, and (2) on augmented training batches, how far the cached-and-warped heatmaps are
from the live teacher's on the same augmented crops: the relative squared error
``Σ(cached - live)² / Σ live²`` and the share of joints whose peak lands within one heatmap cell
of the live peak (joints whose live peak is at least 0.2, i.e. the teacher sees them).
The first pass builds the cache over the whole training split (printed: how long it took, and how
far the process's peak memory rose during the build against the cache's own size: a build holds
the cache once, so the rise is about the cache's size plus the teacher's working memory).
``--features LAYER`` does the same for the teacher layer a hint reads (its first branch, no flip
test: the hints use the plain teacher): the relative squared error of the warped features, on all
crops and on the mirrored ones alone, and their cosine similarity, two ways: a mirrored crop reads
the stored features of the mirrored crop (``mirrored=True``, what the feature cache does), or the
plain crop's features mirrored (the approximation without them).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch



def _peak_mib() -> float:
    """The process's peak resident memory so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    from posekd_lib.config import get_mode, set_torch_threads
    from posekd_lib.distill import LogitsKD
    from posekd_lib.distill.teacher_cache import TeacherCache
    from posekd_lib.models.teachers import load_teacher

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--aug", default="light")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="cache only the first N training persons")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--features", default=None, metavar="LAYER", help="the features of this teacher layer instead")
    args = ap.parse_args(argv)
    set_torch_threads(args.threads)
    mode = get_mode(args.mode)

    teacher, info = load_teacher(mode=mode)
    teacher_fn = LogitsKD(teacher, teacher_flip_test=True).teacher   # the frozen flip-test teacher KD runs
    if args.features:
        return bench_features(teacher, info, mode, args)

    plain, train = _datasets(info, mode, args)
    peak0, t0 = _peak_mib(), time.perf_counter()
    cache = TeacherCache.build(teacher_fn, plain, batch_size=64, source=info.name)
    build_s = time.perf_counter() - t0
    print(f"{info.name} on {mode}: cache of {len(cache)} persons built in {build_s:.1f} s "
          f"({cache.heatmaps.numel() * 2 / 2**20:.0f} MiB float16; peak memory rose by "
          f"{_peak_mib() - peak0:.0f} MiB during the build)")

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True)
    t_live = t_cache = 0.0
    num = den = 0.0
    hits = total = 0
    for i, batch in zip(range(args.batches), loader):
        t0 = time.perf_counter()
        live = teacher_fn(batch["image"])
        t1 = time.perf_counter()
        cached = cache.for_batch(batch)
        t2 = time.perf_counter()
        t_live, t_cache = t_live + t1 - t0, t_cache + t2 - t1
        num += float(((cached - live) ** 2).sum())
        den += float((live ** 2).sum())
        w = live.shape[-1]
        pl, pc = live.flatten(2).argmax(-1), cached.flatten(2).argmax(-1)
        seen = live.flatten(2).amax(-1) >= 0.2
        d = torch.maximum((pl % w - pc % w).abs(), (pl // w - pc // w).abs())
        hits += int((d[seen] <= 1).sum())
        total += int(seen.sum())
    n = max(1, min(args.batches, len(loader)))
    print(f"aug {args.aug}, {n} batches of {args.batch_size}:")
    print(f"  teacher forward (flip test): {t_live / n:.3f} s/batch   cache warp: {t_cache / n:.4f} s/batch "
          f"({t_live / max(t_cache, 1e-9):.0f}x faster)")
    print(f"  warped vs live heatmaps: relative squared error {num / max(den, 1e-12):.3f}; "
          f"peaks within one cell {hits / max(total, 1):.1%} of {total} joints the teacher sees")
    return 0


def _datasets(info, mode, args):
    """The training persons plain (what the cache is built from) and augmented (what it serves)."""
    from posekd_lib.data.datasets import TopDownDataset, dataset_splits

    split = dataset_splits(mode).train
    kw = dict(input_size=info.input_size, heatmap_size=info.heatmap_size, sigma=info.sigma)
    plain = TopDownDataset(split.ann_file, split.img_dir, **kw, train=False)
    train = TopDownDataset(split.ann_file, split.img_dir, **kw, train=True, aug=args.aug)
    if args.limit:
        plain.samples = plain.samples[:args.limit]
        train.samples = train.samples[:args.limit]
    return plain, train


def bench_features(teacher, info, mode, args) -> int:
    from posekd_lib.distill import FeatureHooks, _feature_tensor, freeze
    from posekd_lib.train.recipes import build_feature_cache

    freeze(teacher)
    layer = args.features
    plain, train = _datasets(info, mode, args)
    t0 = time.perf_counter()
    cache = build_feature_cache(teacher, plain, layer, source=f"{info.name}:{layer}", mirrored=True)
    print(f"{info.name} {layer} features on {mode}: cache of {len(cache)} persons and their mirrored crops, "
          f"shape {tuple(cache.heatmaps.shape[1:])}, built in {time.perf_counter() - t0:.1f} s "
          f"({2 * cache.heatmaps.numel() * 2 / 2**20:.0f} MiB float16)")
    mirrored_rows = cache.mirrored
    with FeatureHooks(teacher, [layer]) as hooks:
        def features(x):
            with torch.no_grad():
                teacher(x)
            return _feature_tensor(hooks[layer], layer, "first")

        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True)
        ways = ("stored mirrored crops", "plain crops mirrored (approximation)")
        sums = {(way, key): [0.0, 0.0] for way in ways for key in ("all", "mirrored")}
        cos, t_live, t_cache, n = {way: [] for way in ways}, 0.0, 0.0, 0
        for _, batch in zip(range(args.batches), loader):
            t0 = time.perf_counter()
            live = features(batch["image"])
            t1 = time.perf_counter()
            cache.mirrored = mirrored_rows
            cached = cache.for_batch(batch)
            t_live, t_cache, n = t_live + t1 - t0, t_cache + time.perf_counter() - t1, n + 1
            cache.mirrored = None
            approx = cache.for_batch(batch)
            flipped = torch.as_tensor(batch["meta"]["flipped"]).bool()
            for way, got in zip(ways, (cached, approx)):
                for key, rows in (("all", slice(None)), ("mirrored", flipped)):
                    sums[way, key][0] += float(((got[rows] - live[rows]) ** 2).sum())
                    sums[way, key][1] += float((live[rows] ** 2).sum())
                cos[way].append(torch.nn.functional.cosine_similarity(got.flatten(1), live.flatten(1)).mean().item())
    print(f"aug {args.aug}, {n} batches of {args.batch_size}:")
    print(f"  teacher forward: {t_live / n:.3f} s/batch   cache warp: {t_cache / n:.4f} s/batch")
    for way in ways:
        print(f"  a mirrored crop reads the {way}:")
        for key in ("all", "mirrored"):
            num, den = sums[way, key]
            print(f"    warped vs live features, {key} crops: relative squared error {num / max(den, 1e-12):.3f}")
        print(f"    cosine similarity per crop (mean): {sum(cos[way]) / len(cos[way]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
