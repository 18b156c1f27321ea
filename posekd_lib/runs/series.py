"""The notebook series' times, from one source: what ``make run`` measured.

``scripts/run_series.py`` (what ``make run`` calls) times each notebook and notes whether it computed
anything that it caches (a run, a teacher cache, a cached score: a new file under
``runs/<mode>/checkpoints`` or ``runs/<mode>/teacher_cache`` after it ran). That makes the time a
*first-time* one; a notebook that only loaded its runs gives the *cached* time. The measurement goes to
``runs/<mode>/timings.json``; ``run_series.py --stamp`` files it into the committed
``notebooks/timings.json`` and writes, from that file alone, each notebook header's time line and the
README's time column (``tests/test_committed_notebooks.py`` checks that they say what the file says).
"""
from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

from posekd_lib.config import REPO_ROOT, RunPaths, read_json

TIMINGS_FILE = REPO_ROOT / "notebooks" / "timings.json"
README = REPO_ROOT / "README.md"
#: The header line this module owns: it starts so and is one line.
LINE_START = "**Time** (measured)"
#: A series counts as run beside other jobs when the load average per core exceeded this at its start.
BUSY_LOAD_PER_CORE = 0.5
#: What is shown where no measurement of a kind exists yet.
NOT_MEASURED = "not measured yet"
CACHED_FOLDERS = ("checkpoints", "teacher_cache")


def machine() -> str:
    """The CPU model and core count of this machine, e.g. ``Intel(R) Xeon(R) Processor, 2 cores``."""
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def cached_files(paths: RunPaths) -> set[str]:
    """Every file a notebook caches its work in (see the module docstring)."""
    return {str(p) for folder in CACHED_FOLDERS for p in (paths.root / folder).rglob("*") if p.is_file()}


def computed_anything(before: set[str], after: set[str]) -> bool:
    """Whether a notebook made a cache file that was not there before. Rewritten files do not count:
    loading a cached run rewrites its ``run_info.json``, and a short fine-tune that always runs (05's
    pruning) rewrites its checkpoint, in a cached series too."""
    return bool(after - before)


def measurement(mode: str, notebooks: list[tuple[str, float, bool]], load_at_start: float,
                fresh: bool = False) -> dict:
    """One series run's times: ``notebooks`` holds (stem, seconds, computed anything) in order. In a
    ``fresh`` series (nothing cached when it started, as on a new clone) every time is a first-time
    one, as a learner meets it: notebook 06, say, finds notebook 03's run there."""
    busy = load_at_start / (os.cpu_count() or 1) > BUSY_LOAD_PER_CORE
    return {"mode": mode, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "load_at_start": round(load_at_start, 2), "beside_other_jobs": busy,
            "notebooks": {stem: {"minutes": round(sec / 60, 1), "kind": "first" if computed or fresh else "cached"}
                          for stem, sec, computed in notebooks}}


def load_timings(path: Path = TIMINGS_FILE) -> dict:
    """The committed times: ``{stem: {mode: {"first"|"cached": entry}}}``, each entry with ``minutes``,
    ``source`` (``make run``, or where an older figure came from), ``date``, ``machine`` and
    ``beside_other_jobs``."""
    return read_json(path, "the series' times", missing={})


def file_measurement(timings: dict, m: dict) -> dict:
    """``timings`` with the entries of measurement ``m`` replacing those of the same notebook, mode and
    kind (a quick-mode run is filed under its kind too: quick mode trains a few steps)."""
    out = json.loads(json.dumps(timings))
    for stem, t in m["notebooks"].items():
        out.setdefault(stem, {}).setdefault(m["mode"], {})[t["kind"]] = {
            "minutes": t["minutes"], "source": "make run", "date": m["date"], "machine": m["machine"],
            "beside_other_jobs": m["beside_other_jobs"]}
    return out


def _minutes(entry: dict | None, bold: bool = False, provenance: bool = True) -> str:
    """``8.8 min (where, when)``; the provenance shortened to ``(busy)`` or nothing for the README."""
    if not entry:
        return NOT_MEASURED
    busy = ", beside other jobs" if entry["beside_other_jobs"] else ""
    where = f" ({entry['source']}, {entry['machine']}, {entry['date']}{busy})" if provenance else busy and " (busy)"
    number = f"{entry['minutes']:.1f} min"
    return (f"**{number}**" if bold else number) + where


def time_line(stem: str, timings: dict) -> str:
    """The header line of notebook ``stem``: workshop first-time and cached times and quick mode's,
    each with where and when it was measured."""
    t = timings.get(stem, {})
    ws, quick = t.get("workshop", {}), t.get("quick", {})
    return (f"{LINE_START} in workshop mode: {_minutes(ws.get('first'), bold=True)} the first time, "
            f"{_minutes(ws.get('cached'))} with its runs cached · quick mode: "
            f"{_minutes(quick.get('first') or quick.get('cached'))}.")


def readme_time(stem: str, timings: dict) -> str:
    """The README table's time cell of notebook ``stem``."""
    ws = timings.get(stem, {}).get("workshop", {})
    return (f"{_minutes(ws.get('first'), provenance=False)} first · "
            f"{_minutes(ws.get('cached'), provenance=False)} cached")


def stamp_header(source: str, stem: str, timings: dict) -> str:
    """A header's markdown with its time line replaced (or, if it has none, an error naming it)."""
    lines = source.split("\n")
    hits = [i for i, ln in enumerate(lines) if ln.startswith(LINE_START)]
    if len(hits) != 1:
        raise ValueError(f"notebook {stem}: its first cell needs exactly one line starting {LINE_START!r} "
                         f"(found {len(hits)})")
    lines[hits[0]] = time_line(stem, timings)
    return "\n".join(lines)


def _readme_row(stem: str) -> re.Pattern:
    return re.compile(rf"^(\| \[`{re.escape(stem)}`\]\([^)]*\) \| [^|]* \| )([^|]*)( \| .*)$", re.M)


def stamp_readme(text: str, stems: list[str], timings: dict) -> str:
    """The README with each notebook row's time column written from ``timings``."""
    for stem in stems:
        row = _readme_row(stem)
        if not row.search(text):
            raise ValueError(f"README.md: no notebook-table row for {stem} (| [`{stem}`](...) | ... |)")
        text = row.sub(lambda m: m.group(1) + readme_time(stem, timings) + m.group(3), text)
    return text


def readme_times(text: str, stems: list[str]) -> dict[str, str]:
    """The time cell each notebook's README row shows now."""
    return {s: m.group(2) for s in stems if (m := _readme_row(s).search(text))}


def stamp(timings: dict, notebooks: list[Path], readme: Path = README) -> list[Path]:
    """Write the time line of every notebook header and the README's time column from ``timings``;
    return the files that changed. Only markdown changes: no cell is re-executed."""
    changed = []
    for path in notebooks:
        nb = json.loads(path.read_text())
        src = "".join(nb["cells"][0]["source"])
        new = stamp_header(src, path.stem, timings)
        if new != src:
            nb["cells"][0]["source"] = new.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    text = readme.read_text()
    new = stamp_readme(text, [p.stem for p in notebooks], timings)
    if new != text:
        readme.write_text(new)
        changed.append(readme)
    return changed
