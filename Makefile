# pippo_lightning — `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
CONFIG ?= train
HW ?=
INIT ?=
# `make train-stage3 data=folder trainer.max_steps=10`: command-line variables that are not the
# Makefile's own are handed to Hydra as overrides
OWN_VARS := ARGS=% CONFIG=% VENV=% HW=% INIT=% CKPT=% PHOTO=% DATA=% PRESET=% RUN=% ORIGINAL=% OUT=%
HYDRA_ARGS = $(filter-out $(OWN_VARS),$(MAKEOVERRIDES)) $(if $(HW),hardware=$(HW)) $(if $(INIT),stage.init_from=$(INIT)) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install train train-stage1 train-stage2 train-stage3 sweep reproduce test test-slow test-all test-faults lint format bench bench-original bench-scale eval sampler-table generate data-validate data-demo download-samples clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/install.sh
	@bash scripts/install.sh
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install everything (CPU torch where there is no GPU)

train: $(STAMP) ## train the embedded default (P3, micro model, synthetic studio, CPU); Hydra overrides as ARGS="..." or key=value
	$(VENV)/bin/pippo-train $(HYDRA_ARGS)

train-stage1: $(STAMP) ## P1 pre-training (single views + global image embedding); HW=<hardware preset>, overrides as for train
	$(VENV)/bin/pippo-train stage=p1 $(HYDRA_ARGS)

train-stage2: $(STAMP) ## M2 mid-training (many views, cameras, reference); INIT=<P1 checkpoint> to chain
	$(VENV)/bin/pippo-train stage=m2 $(HYDRA_ARGS)

train-stage3: $(STAMP) ## P3 post-training (ControlMLP: Plücker rays + spatial anchor); INIT=<M2 checkpoint> to chain
	$(VENV)/bin/pippo-train stage=p3 $(HYDRA_ARGS)

sweep: $(STAMP) ## Hydra multirun example: learning rate x reference dropout on the CPU demo
	$(VENV)/bin/pippo-train experiment=sweep_lr_refdrop $(HYDRA_ARGS)

# `make reproduce [PRESET=cpu|gpu|tiny] [RUN=name]`: issue #15, the paper's ablations
PRESET ?= cpu
REPRO_SEEDS_cpu := 0
REPRO_SEEDS_gpu := 0,1
REPRO_SEEDS_tiny := 0
ABLATIONS := ablation/full,ablation/no_anchor,ablation/no_plucker,ablation/no_controlmlp
REPRO_RUN := $(or $(RUN),$(shell date +%Y-%m-%d_%H-%M-%S)_$(PRESET))
REPRO_DIR := outputs/reproduce/$(REPRO_RUN)

reproduce: $(STAMP) ## the paper's ablations on the studio: train every variant (multirun), then one report in outputs/reproduce/<run> (PRESET=cpu|gpu|tiny)
	$(VENV)/bin/pippo-train -m experiment=$(ABLATIONS) +ablation_preset=$(PRESET) \
	  seed=$(REPRO_SEEDS_$(PRESET)) reproduce.group=$(REPRO_RUN) \
	  hydra.sweep.dir=$(REPRO_DIR)/jobs $(HYDRA_ARGS)
	$(PY) -m pippo_lightning.cli.reproduce report $(REPRO_DIR)

test: $(STAMP) ## run the fast test suite (no GPU, no network)
	$(PY) -m pytest -q -m "not slow and not gpu" $(ARGS)

test-slow: $(STAMP) ## run only the slow end-to-end tests
	$(PY) -m pytest -q -m "slow" $(ARGS)

test-all: $(STAMP) ## run every test, slow ones included
	$(PY) -m pytest -q $(ARGS)

test-faults: $(STAMP) ## fault injection: corrupt and code-running checkpoints, sharded resume, disk full, NaN (DDP too), SIGTERM/SIGUSR1 + SLURM requeue, kill + resume, malformed configs (slow ones included)
	$(PY) -m pytest -q tests/test_faults.py tests/test_resume.py tests/test_preflight.py tests/test_preemption.py tests/test_sharded_resume.py tests/test_safe_loading.py $(ARGS)

lint: $(STAMP) ## the pre-commit hooks on every file (ruff lint + format check, yaml, end of file, whitespace), import layers (lint-imports), no source file over 400 lines
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pre-commit run --all-files
	PYTHONPATH=src $(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests/test_layout.py

format: $(STAMP) ## ruff autofix + format
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

bench: $(STAMP) ## benchmark train step, sampling, memory, parameter counts (CONFIG=..., ARGS="overrides")
	$(VENV)/bin/pippo-bench --config-name $(CONFIG) $(filter-out $(OWN_VARS),$(MAKEOVERRIDES)) $(ARGS)

ORIGINAL ?= ../original_pippo
bench-original: $(STAMP) ## original release vs ours, same machine and run: step time, latent cache, peak RSS (ORIGINAL=<pippo checkout>, ARGS="--rounds 2")
	$(PY) scripts/bench_original.py --original $(ORIGINAL) --out outputs/bench_original $(ARGS)

bench-scale: $(STAMP) ## step time + peak memory vs views (2-16) and resolution (64-256), fitted curve, JSON/markdown/PNG (ARGS="--model tiny")
	$(PY) -m pippo_lightning.cli.bench_scale --out outputs/bench_scale $(ARGS)

CKPT ?= $(lastword $(sort $(wildcard outputs/train/runs/*/checkpoints/last.ckpt)))
PHOTO ?=

eval: $(STAMP) ## score a checkpoint on held-out subjects (CKPT=..., default: newest run's last.ckpt; ARGS="...")
	$(VENV)/bin/pippo-eval ckpt=$(CKPT) $(ARGS)

sampler-table: $(STAMP) ## steps vs seconds vs PSNR per sampler (ddim, dpmpp_2m, unipc) against DDIM-250 on CKPT=... (ARGS="table.steps=[5,10] ...")
	$(PY) -m pippo_lightning.cli.sampler_table ckpt=$(CKPT) $(ARGS)

generate: $(STAMP) ## one photo -> a turnaround (PHOTO=..., CKPT=... as for eval; ARGS="num_views=24 ...")
	$(VENV)/bin/pippo-generate ckpt=$(CKPT) photo=$(PHOTO) $(ARGS)

DATA ?=
data-validate: $(STAMP) ## check every sample of a dataset: make data-validate DATA=path [ARGS=--strict]
	$(VENV)/bin/pippo-data validate $(DATA) $(ARGS)

data-demo: $(STAMP) ## studio -> plain captures -> pippo-data prepare -> validate
	$(VENV)/bin/pippo-data export-studio outputs/captures --subjects 2 --resolution 128
	$(VENV)/bin/pippo-data prepare outputs/captures --out outputs/prepared --resolution 128 --overwrite
	$(VENV)/bin/pippo-data validate outputs/prepared

download-samples: $(STAMP) ## the original release's Ava-256 samples from the Hugging Face Hub -> data/ava256_samples
	$(VENV)/bin/pippo-data download-samples --out data/ava256_samples $(ARGS)

clean: ## remove outputs, caches and the venv
	rm -rf outputs .pytest_cache .ruff_cache $(VENV)
