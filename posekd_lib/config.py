"""Run modes and the one folder where every run artifact lives.

``POSEKD_MODE`` picks the mode (``quick`` for CI, ``workshop`` by default, ``full`` for real COCO
on a GPU). ``POSEKD_HOME`` is the artifact folder (default ``<repo>/runs``, ignored by git):
generated datasets, checkpoints, executed notebooks and the results table live below it, one
sub-folder per mode, so a quick CI run never overwrites workshop results.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MODES = ("quick", "workshop", "full")
REPO_ROOT = Path(__file__).resolve().parent.parent


def get_mode(mode: str | None = None) -> str:
    """The run mode: the argument, else ``$POSEKD_MODE``, else ``workshop``."""
    mode = (mode or os.environ.get("POSEKD_MODE") or "workshop").strip().lower()
    if mode not in MODES:
        raise ValueError(f"POSEKD_MODE={mode!r} is not one of {MODES}")
    return mode


def shown_path(path) -> str:
    """``path`` as the library prints it: relative to the checkout when inside it, ``$AI8X_SYNTHESIS_DIR/...``
    inside the synthesizer's checkout, ``~/...`` under the home folder, else as given. Printed outputs
    (and so the committed notebooks) then carry no machine's folders."""
    p = Path(path).expanduser().absolute()
    roots = [(REPO_ROOT, "")]
    if os.environ.get("AI8X_SYNTHESIS_DIR"):
        roots.append((Path(os.environ["AI8X_SYNTHESIS_DIR"]).expanduser().absolute(), "$AI8X_SYNTHESIS_DIR/"))
    roots.append((Path.home(), "~/"))
    for root, label in roots:
        for base in dict.fromkeys((root, root.resolve())):
            try:
                rel = p.relative_to(base)
            except ValueError:
                continue
            return f"{label}{rel}" if str(rel) != "." else (label.rstrip("/") or ".")
    return str(path)


def progress_bar(*args, **kwargs):
    """A tqdm bar: the notebook widget where ipywidgets is installed, else the text bar (``tqdm.auto``
    would warn in every notebook that has no widgets)."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm
    return tqdm(*args, **kwargs)


def home_dir() -> Path:
    """Root of all run artifacts (``$POSEKD_HOME`` or ``<repo>/runs``)."""
    return Path(os.environ.get("POSEKD_HOME") or REPO_ROOT / "runs").expanduser().resolve()


@dataclass(frozen=True)
class RunPaths:
    """Where one mode's artifacts go."""

    mode: str
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def ensure(self) -> "RunPaths":
        for p in (self.data, self.checkpoints, self.notebooks):
            p.mkdir(parents=True, exist_ok=True)
        return self


def run_paths(mode: str | None = None) -> RunPaths:
    """Artifact folders for ``mode`` (created on demand)."""
    m = get_mode(mode)
    return RunPaths(m, home_dir() / m).ensure()


def read_json(path, what: str = "", missing=FileNotFoundError):
    """The JSON in ``path``. A file that does not exist returns ``missing`` (by default it raises
    FileNotFoundError); a file that is not valid JSON raises a ValueError naming it (``what``: what
    the file is, e.g. ``"teacher card"``)."""
    path = Path(path)
    if not path.is_file():
        if missing is FileNotFoundError:
            raise FileNotFoundError(f"{what + ' ' if what else ''}{path} not found")
        return missing
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what + ' ' if what else ''}{path}: not valid JSON ({e})") from None


def atomic_write(path, write, mode: str = "wb") -> Path:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then rename it over ``path``.

    A crash or kill never leaves a half-written file under the real name; the temporary is named
    ``.<name>.tmp<pid>`` so that a later run can spot and remove leftovers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def set_torch_threads(n: int | None = None) -> int:
    """Use all cores for intra-op work (``$POSEKD_THREADS`` overrides); returns the count."""
    import torch

    n = n or int(os.environ.get("POSEKD_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def notebook_setup(mode: str | None = None) -> tuple[str, RunPaths]:
    """The first cell of every notebook: the run mode, its artifact folder, torch's CPU threads.

    Prints one line saying which mode runs where and returns ``(mode, run_paths(mode))`` (the
    library's progress bars are text bars where ipywidgets is missing: :func:`progress_bar`).
    """
    mode = get_mode(mode)
    paths = run_paths(mode)
    print(f"mode: {mode}   artifacts: {shown_path(paths.root)}   torch threads: {set_torch_threads()}")
    return mode, paths
