# tnl: two commands on a fresh machine: `make train` and `make test`. `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned here so pip takes the local CPU wheel where one exists;
# on a CUDA machine PyPI serves the CUDA build of the same release.
TORCH_SPEC ?= torch==2.13.0
# Local WikiText copy (see ../shared/data/README.md); the hub is used when this is unset.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export TNL_DATA_DIR ?= $(SHARED_DATA)
endif
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv train test lint eval export bench clean

help: ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo "  (extra Hydra overrides: make train ARGS='train.max_steps=50')"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed ## create .venv from pyproject.toml (rebuilt when pyproject.toml is newer)

train: venv ## train the quickstart TNL on WikiText-103 (CPU, ~7 min), evaluate and export
	$(VENV)/bin/tnl train experiment=quickstart $(ARGS)

# one pytest worker per core (pytest-xdist); a file's tests stay on one worker, so its module fixtures are built once
TEST_WORKERS ?= auto
test: venv ## ruff, then the whole pytest suite on every core (lm-eval cross-check included; the 20 slowest listed)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 $(ARGS)

lint: venv ## ruff only
	$(VENV)/bin/ruff check .

eval: venv ## perplexity of a model: make eval ARGS='model_path=outputs/quickstart/export'
	$(VENV)/bin/tnl evaluate $(ARGS)

export: venv ## HF export of a checkpoint: make export ARGS='checkpoint=PATH out_dir=DIR'
	$(VENV)/bin/tnl export $(ARGS)

bench: venv ## a benchmark module (GPU ones need CUDA): make bench ARGS='benchmarks.bench_attention --help'
	$(PY) -m $(or $(ARGS),benchmarks.bench_data)

clean: ## remove caches and outputs (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
