# pippo_lightning — `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
CONFIG ?= train

.DEFAULT_GOAL := help
.PHONY: help install train test test-slow test-all lint format bench eval generate clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install.sh
	@bash scripts/install.sh
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install everything (CPU torch where there is no GPU)

train: $(STAMP) ## train the embedded default (micro model, synthetic studio, CPU); extra Hydra overrides in ARGS="..."
	$(VENV)/bin/pippo-train $(ARGS)

test: $(STAMP) ## run the fast test suite (no GPU, no network)
	$(PY) -m pytest -q -m "not slow and not gpu" $(ARGS)

test-slow: $(STAMP) ## run only the slow end-to-end tests
	$(PY) -m pytest -q -m "slow" $(ARGS)

test-all: $(STAMP) ## run every test, slow ones included
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

format: $(STAMP) ## ruff autofix + format
	$(VENV)/bin/ruff check --fix src tests
	$(VENV)/bin/ruff format src tests

bench: $(STAMP) ## benchmark train step, sampling, memory, parameter counts (CONFIG=..., ARGS="overrides")
	$(VENV)/bin/pippo-bench --config-name $(CONFIG) $(ARGS)

CKPT ?= $(lastword $(sort $(wildcard outputs/train/runs/*/checkpoints/last.ckpt)))
PHOTO ?=

eval: $(STAMP) ## score a checkpoint on held-out subjects (CKPT=..., default: newest run's last.ckpt; ARGS="...")
	$(VENV)/bin/pippo-eval ckpt=$(CKPT) $(ARGS)

generate: $(STAMP) ## one photo -> a turnaround (PHOTO=..., CKPT=... as for eval; ARGS="num_views=24 ...")
	$(VENV)/bin/pippo-generate ckpt=$(CKPT) photo=$(PHOTO) $(ARGS)

clean: ## remove outputs, caches and the venv
	rm -rf outputs .pytest_cache .ruff_cache $(VENV)
