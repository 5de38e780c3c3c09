# Two commands do all set-up on a fresh clone:
#   make book   create .venv if missing, execute every chapter, render _build/html
#   make test   same set-up, then ruff and the whole test suite (unit + QUICK notebooks + strict book build)
# CTRLIB_QUICK=1 make book   executes the chapters in QUICK mode.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Kernelspecs in the venv win over any user-level `python3` kernelspec, so papermill
# always runs the chapters with the venv's python.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export PYDEVD_DISABLE_FILE_VALIDATION := 1

# CPU-only torch (no CUDA libraries): make book TORCH_INDEX=https://download.pytorch.org/whl/cpu
# An extra index for pip when .venv is installed; unset, torch comes from PyPI (CUDA build on Linux).
TORCH_INDEX ?=
ifneq ($(strip $(TORCH_INDEX)),)
export PIP_EXTRA_INDEX_URL := $(TORCH_INDEX)
endif

.PHONY: book test bench claims clean distclean venv

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip "setuptools>=77"
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ctrlib)"
	touch $(STAMP)

book: $(STAMP)
	$(PY) tools/build_book.py

test: $(STAMP)
	$(PY) -m ruff check ctrlib tests tools benchmarks
	$(PY) -m pytest

# Every chapter in full mode (up to ~10 min each), then one table of all claims and their verdicts.
claims: $(STAMP)
	$(PY) tools/claims.py

bench: $(STAMP)
	@test -f benchmarks/run.sh || { echo 'benchmarks/run.sh does not exist yet' >&2; exit 1; }
	bash benchmarks/run.sh

clean:
	rm -rf _build .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
