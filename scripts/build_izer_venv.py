"""Build izer's own virtual environment (what ``make izer`` runs).

    AI8X_SYNTHESIS_DIR=~/ai8x-synthesis python scripts/build_izer_venv.py [--force] [--torch SPEC]

ai8x-synthesis pins numpy 1.26.4 and its izer fails under numpy 2 (this project's), so izer gets a
venv of its own, ``~/.cache/posekd/izer-venv-<hash>``, from ``$AI8X_SYNTHESIS_DIR/requirements.txt``
with its torch pin replaced by a CPU build (``posekd_lib.mcu.export.IZER_TORCH``, or ``--torch`` /
``$AI8X_SYNTHESIS_TORCH``). ``export.run_izer`` then uses that venv's python by itself. Prints the
interpreter's path last; exits 2 with the reason when izer's environment cannot be built.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    from posekd_lib.mcu import export

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthesis-dir", default=None,
                    help="the ai8x-synthesis checkout (default: $AI8X_SYNTHESIS_DIR)")
    ap.add_argument("--torch", default=None,
                    help=f"torch requirement for izer (default: $AI8X_SYNTHESIS_TORCH or {export.IZER_TORCH})")
    ap.add_argument("--python", default=None, help="base interpreter for the venv (default: this one's)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the venv is complete")
    args = ap.parse_args(argv)
    try:
        py = export.build_izer_venv(args.synthesis_dir, torch_spec=args.torch, python=args.python,
                                    force=args.force)
    except export.IzerUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
