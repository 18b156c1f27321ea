"""Throughput of the embedded dataset generator with 1 and 2 workers, and the projected time for
the workshop set (``sizes_for_mode("workshop")``).

    python benchmarks/bench_synth.py [--images 200] [--difficulty 0.5]

Wall-clock figures depend on what else runs on the machine (the load average is printed); the
1-worker CPU time per image is the load-independent figure.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from posekd_lib.data.synth import generate_split, sizes_for_mode


def run(out: Path, images: int, workers: int, difficulty: float) -> dict:
    cpu, t0 = time.process_time(), time.perf_counter()
    split = generate_split(out, images, seed=123, difficulty=difficulty, num_workers=workers, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    anns = json.loads(split.ann_file.read_text())["annotations"]
    return {"wall": wall, "cpu": cpu, "persons": len(anns)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--difficulty", type=float, default=0.5)
    args = ap.parse_args(argv)
    sizes = sizes_for_mode("workshop")
    total = sizes["train"] + sizes["val"]
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            r = run(Path(tmp) / f"w{workers}", args.images, workers, args.difficulty)
            ips, pps = args.images / r["wall"], r["persons"] / r["wall"]
            line = (f"workers={workers}: {ips:6.1f} images/s, {pps:6.1f} persons/s "
                    f"({r['persons'] / args.images:.2f} persons/image), "
                    f"workshop set ({total} images) projected {total / ips:5.1f} s")
            if workers == 1:
                line += f"; CPU {1e3 * r['cpu'] / args.images:.1f} ms/image"
            print(line, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
