"""The series' times: recorded by run_series, filed in notebooks/timings.json, written to headers and README."""
from __future__ import annotations

import json
import os

import pytest

from posekd_lib.config import RunPaths
from posekd_lib.runs import series


def test_a_notebook_that_writes_a_cache_file_is_timed_as_a_first_run(tmp_path):
    paths = RunPaths("workshop", tmp_path)
    (tmp_path / "checkpoints" / "run_a").mkdir(parents=True)
    (tmp_path / "checkpoints" / "run_a" / "latest.pt").write_bytes(b"0")
    before = series.cached_files(paths)
    assert not series.computed_anything(before, series.cached_files(paths))
    (tmp_path / "teacher_cache").mkdir()
    (tmp_path / "teacher_cache" / "heatmaps.pt").write_bytes(b"1")
    assert series.computed_anything(before, series.cached_files(paths))
    before = series.cached_files(paths)
    os.utime(tmp_path / "checkpoints" / "run_a" / "latest.pt", (1e9, 1e9))   # rewritten, not new: cached
    assert not series.computed_anything(before, series.cached_files(paths))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "02.ipynb").write_text("{}")   # executed copies are not caches
    assert set(series.cached_files(paths)) == {str(tmp_path / "checkpoints" / "run_a" / "latest.pt"),
                                               str(tmp_path / "teacher_cache" / "heatmaps.pt")}


def test_measurements_are_filed_by_notebook_mode_and_kind():
    m = series.measurement("workshop", [("01_a", 30.0, False), ("02_b", 540.0, True)], load_at_start=0.0)
    assert m["notebooks"] == {"01_a": {"minutes": 0.5, "kind": "cached"}, "02_b": {"minutes": 9.0, "kind": "first"}}
    assert not m["beside_other_jobs"]
    fresh = series.measurement("workshop", [("01_a", 36.0, False)], load_at_start=0.0, fresh=True)
    assert fresh["notebooks"]["01_a"]["kind"] == "first"    # a new clone: everything is a first time
    busy = series.measurement("quick", [("01_a", 6.0, True)], load_at_start=8.0 * (series.os.cpu_count() or 1))
    assert busy["beside_other_jobs"]
    t = series.file_measurement(series.file_measurement({}, m), fresh)
    assert t["01_a"]["workshop"]["first"]["minutes"] == 0.6 and t["01_a"]["workshop"]["cached"]["minutes"] == 0.5
    assert t["02_b"]["workshop"]["first"]["source"] == "make run"
    t = series.file_measurement(t, busy)
    line = series.time_line("01_a", t)
    assert line.startswith(series.LINE_START) and "**0.6 min**" in line and "0.5 min" in line
    assert "beside other jobs" in line and series.NOT_MEASURED in series.time_line("02_b", t)


def test_stamping_rewrites_only_the_time_line_and_the_readme_cell(tmp_path):
    t = series.file_measurement({}, series.measurement("workshop", [("01_a", 90.0, True)], 0.0))
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 01\n", "\n", f"{series.LINE_START} old\n", "prose\n"]}]}
    path = tmp_path / "01_a.ipynb"
    path.write_text(json.dumps(nb))
    readme = tmp_path / "README.md"
    readme.write_text("| [`01_a`](notebooks/01_a.ipynb) | what | 3 min | sol |\n")
    assert series.stamp(t, [path], readme) == [path, readme]
    src = "".join(json.loads(path.read_text())["cells"][0]["source"])
    assert src == f"# 01\n\n{series.time_line('01_a', t)}\nprose\n"
    assert readme.read_text() == f"| [`01_a`](notebooks/01_a.ipynb) | what | {series.readme_time('01_a', t)} | sol |\n"
    assert series.stamp(t, [path], readme) == []                # idempotent


def test_a_header_without_its_time_line_is_named(tmp_path):
    with pytest.raises(ValueError, match="notebook 05_x: .*exactly one line"):
        series.stamp_header("# 05\n**Time:** 3 min\n", "05_x", {})
    bad = tmp_path / "timings.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="timings.json: not valid JSON"):
        series.load_timings(bad)
