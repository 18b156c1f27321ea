"""The declared environments agree, and the notebooks are committed in a clean, executed state."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line)
        assert m, f"requirement not pinned exactly: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_matches_requirements():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_block) == req
    assert "python=3.11" in env["dependencies"]


def test_constraints_cover_requirements():
    req = _pins((REPO / "requirements.txt").read_text().splitlines())
    lock = _pins((REPO / "constraints.txt").read_text().splitlines())
    for name, version in req.items():
        assert lock.get(name) == version, f"{name}: requirements {version} vs constraints {lock.get(name)}"


def _code_cells(path: Path):
    nb = json.loads(path.read_text())
    return nb, [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebooks_committed_clean_and_executed():
    """Like nbdev's check: executed top to bottom, no errors, no stray metadata."""
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in notebooks:
        nb, cells = _code_cells(path)
        counts = [c["execution_count"] for c in cells]
        assert None not in counts, f"{path.name}: unexecuted code cells"
        assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}"
        for c in cells:
            errors = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{path.name}: a committed cell has an error output"
            assert set(c.get("metadata", {})) <= {"tags", "collapsed", "scrolled", "jupyter"}, \
                f"{path.name}: stray cell metadata {set(c['metadata'])}"
        assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel"
