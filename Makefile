# posekd — the two contract commands are `make run` and `make test` (see README.md).
# The virtual environment lives outside the clone, keyed by the hash of requirements.txt, so a
# second clone (or CI on the same machine) reuses it; a fresh machine builds it on first use.

SHELL := /bin/bash
PYTHON ?= python3
REQ_HASH := $(shell cat requirements.txt constraints.txt | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/posekd/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.posekd-installed-2
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export POSEKD_MODE ?= workshop
export FIFTYONE_DO_NOT_TRACK := true
export FIFTYONE_DATABASE_VALIDATION := false
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help setup run test test-unit test-notebooks notebooks times lab app bench figures izer clean-env

help:
	@echo "make run    - set up (if needed) and execute the notebook series in POSEKD_MODE (default workshop)"
	@echo "make test   - set up (if needed), unit tests + every notebook in quick mode with nbval"
	@echo "make lab    - JupyterLab on the notebooks"
	@echo "make app DATASET=name [PORT=5151] - the FiftyOne App on a dataset the notebooks built (127.0.0.1)"
	@echo "make bench  - run the benchmark scripts"
	@echo "make notebooks - re-execute notebooks in place in workshop mode (what is committed)"
	@echo "make times - on a fresh clone of an idle machine: measure the series (first time, cached, quick)"
	@echo "             and write the times into notebooks/timings.json, the headers and the README"
	@echo "make izer   - build izer's own venv from \$$AI8X_SYNTHESIS_DIR/requirements.txt (FORCE=1 rebuilds)"

setup: $(STAMP)

# No file prerequisites: the venv's name already holds the requirement files' hash, so new contents
# get a new venv, and a second clone (files newer than the stamp, same contents) reuses this one.
$(STAMP):
	@echo ">> creating $(VENV) (first run only: a few minutes, ~6 GB)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-input -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-input --no-deps -e .
	$(PY) -c "import torch, torchvision, fiftyone, pycocotools, calflops, nbval; print('environment ok: torch', torch.__version__)"
	touch $(STAMP)

run: $(STAMP)
	$(PY) scripts/run_series.py --mode $(POSEKD_MODE)

# One pytest run: unit tests (slow ones included) + every numbered notebook executed in quick mode.
test: $(STAMP)
	POSEKD_MODE=quick $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
		tests $(wildcard notebooks/[0-9]*.ipynb)

test-unit: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

notebooks: $(STAMP)
	POSEKD_MODE=workshop $(PY) scripts/run_series.py --mode workshop --inplace

# The stated times come from here only (posekd_lib/runs/series.py): a first-time workshop series (every
# run trained; a fresh clone), the same series again (everything cached), then quick mode.
times: $(STAMP)
	POSEKD_MODE=workshop $(PY) scripts/run_series.py --mode workshop --stamp
	POSEKD_MODE=workshop $(PY) scripts/run_series.py --mode workshop --stamp
	POSEKD_MODE=quick $(PY) scripts/run_series.py --mode quick --stamp

lab: $(STAMP)
	$(PY) -m jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root)

# The FiftyOne App on a dataset from a shell (notebooks print this line when they cannot launch it themselves).
PORT ?= 5151
app: $(STAMP)
	@test -n "$(DATASET)" || { echo "make app: name the dataset, e.g. make app DATASET=posekd-workshop-val"; exit 2; }
	$(VENV)/bin/fiftyone app launch $(DATASET) --address 127.0.0.1 --port $(PORT)

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

figures: $(STAMP)
	for f in scripts/make_figures_*.py; do $(PY) $$f || exit 1; done

# izer (ai8x-synthesis) pins numpy 1.26.4 and fails under this venv's numpy 2: give it its own venv,
# ~/.cache/posekd/izer-venv-<hash>, which export.run_izer then uses.
izer: $(STAMP)
	$(PY) scripts/build_izer_venv.py $(if $(FORCE),--force)

clean-env:
	rm -rf $(VENV)
