"""Execute the notebook series headless in one mode and write a results summary.

    python scripts/run_series.py --mode workshop            # executed copies in runs/<mode>/notebooks/
    python scripts/run_series.py --mode workshop --inplace  # re-execute the committed notebooks

Each notebook runs in a fresh kernel (they stand alone), in order; the notebooks' wall times and the
runs table their runs extend (runs/<mode>/runs.csv) are rendered to runs/<mode>/results.md at the end,
and the times to runs/<mode>/timings.json (posekd_lib.runs.series: first-time or cached, and where).

    python scripts/run_series.py --mode workshop --stamp    # ... and file the times in notebooks/timings.json,
                                                            # then write the headers' and README's times from it
    python scripts/run_series.py --stamp-only               # only rewrite headers and README from that file
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compact_progress(nb) -> int:
    """Show tqdm's progress bars as a terminal would: consecutive stream outputs of a cell are
    merged (per stream) and each carriage-return-redrawn line keeps only its last state. Returns how
    many stream outputs were merged away. Only the display changes; no printed line is lost."""
    import re

    merged = 0
    for cell in nb.cells:
        outs = []
        for out in cell.get("outputs", []):
            if (out.get("output_type") == "stream" and outs and outs[-1].get("output_type") == "stream"
                    and outs[-1]["name"] == out["name"]):
                outs[-1]["text"] += out["text"]
                merged += 1
                continue
            outs.append(out)
        for out in outs:
            if out.get("output_type") == "stream":
                out["text"] = "\n".join(re.split(r"\r(?!\n)", line)[-1] for line in out["text"].split("\n"))
        if "outputs" in cell:
            cell["outputs"] = outs
    return merged


def main(argv=None) -> int:
    import nbformat
    from nbclient import NotebookClient

    from posekd_lib.config import run_paths
    from posekd_lib.data.synth import ensure_embedded_dataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default=os.environ.get("POSEKD_MODE", "workshop"))
    ap.add_argument("--inplace", action="store_true", help="write outputs back into notebooks/")
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run, e.g. 01 02")
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    ap.add_argument("--stamp", action="store_true",
                    help="file this run's times in notebooks/timings.json and write headers and README from it")
    ap.add_argument("--stamp-only", action="store_true",
                    help="run nothing: write headers and README from notebooks/timings.json")
    args = ap.parse_args(argv)
    from posekd_lib.runs import series

    all_notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.stamp_only:
        for p in series.stamp(series.load_timings(), all_notebooks):
            print(f">> times written: {p.relative_to(REPO)}")
        return 0

    os.environ["POSEKD_MODE"] = args.mode
    os.environ["POSEKD_HEADLESS"] = "1"  # notebooks never open the FiftyOne App in a headless run
    paths = run_paths(args.mode)
    if args.mode != "full":
        ensure_embedded_dataset(args.mode)

    notebooks = all_notebooks
    if args.only:
        notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in args.only)]
    timings = []
    load_at_start, fresh = os.getloadavg()[0], not series.cached_files(paths)
    measured = series.measurement(args.mode, timings, load_at_start, fresh)
    for nb_path in notebooks:
        nb = nbformat.read(nb_path, as_version=4)
        before = series.cached_files(paths)
        t0 = time.perf_counter()
        print(f">> {nb_path.name} ({args.mode})", flush=True)
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(nb_path.parent)}})
        try:
            client.execute()
        finally:
            out = nb_path if args.inplace else paths.notebooks / nb_path.name
            compact_progress(nb)
            nbformat.write(nb, out)
        dt = time.perf_counter() - t0
        timings.append((nb_path.stem, dt, series.computed_anything(before, series.cached_files(paths))))
        print(f"   done in {dt / 60:.1f} min -> {out}", flush=True)
        # filed after every notebook, so a series stopped half-way keeps the times it measured
        measured = series.measurement(args.mode, timings, load_at_start, fresh)
        (paths.root / "timings.json").write_text(json.dumps(measured, indent=1) + "\n")
        if args.stamp:
            timings_all = series.file_measurement(series.load_timings(), measured)
            series.TIMINGS_FILE.write_text(json.dumps(timings_all, indent=1, ensure_ascii=False) + "\n")
            for p in series.stamp(timings_all, all_notebooks):
                print(f">> times written: {p.relative_to(REPO)}")

    lines = [f"# posekd results ({args.mode} mode)", "", "| notebook | wall time |", "| --- | --- |"]
    kinds = measured["notebooks"]
    lines += [f"| {n} | {dt / 60:.1f} min ({'first time' if kinds[n]['kind'] == 'first' else 'cached'}) |"
              for n, dt, _ in timings]
    from posekd_lib.runs.table import SUMMARY_COLUMNS, runs_table

    table = runs_table(args.mode)
    if len(table):
        cols = [c for c in SUMMARY_COLUMNS if c in table]
        lines += ["", table[cols].to_markdown(index=False, floatfmt=".3f")]
    summary = paths.root / "results.md"
    summary.write_text("\n".join(lines) + "\n")
    print(f">> summary: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
