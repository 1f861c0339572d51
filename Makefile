# Two entry points for a new user (see README): `make demo` and `make test`.
# Everything lives under this directory: the virtual environment, caches, demo data, runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export XDG_CACHE_HOME := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export TORCH_HOME := $(CURDIR)/.cache/torch
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export HF_HOME := $(CURDIR)/.cache/huggingface
export WANDB_DIR := $(CURDIR)/runs
export WANDB_CACHE_DIR := $(CURDIR)/.cache/wandb
export WANDB_CONFIG_DIR := $(CURDIR)/.cache/wandb-config
export WANDB_MODE ?= offline

.PHONY: setup demo lint test bench

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first: a CPU machine then keeps the CPU build (no nvidia-* wheels), a GPU machine gets CUDA.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup  # ARGS: more fit options, e.g. ARGS="--overwrite true" to train the demo again from scratch
	$(PY) -m recipes.gifnet fit $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	bash cluster/install_slurm.sh  # Debian's slurmctld, slurmd, munge for the real-cluster tests
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)
