"""Turn a percent-format script (``# %%`` code cells, ``# %% [markdown]`` cells) into an .ipynb.

    python scripts/percent_to_notebook.py my_draft.py notebooks/07_my_topic.ipynb

The notebook is written without outputs; execute it afterwards (``make notebooks``).
"""
from __future__ import annotations

import sys

import nbformat


def convert(text: str) -> nbformat.NotebookNode:
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif kind == "code":
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    with open(src) as f:
        nbformat.write(convert(f.read()), dst)
