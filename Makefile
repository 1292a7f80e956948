# Two commands on a fresh machine (each creates or refreshes .venv first; quick when nothing changed):
#   make run    the main job on the embedded default (recipes/tiny_cpu.yaml)
#   make test   the default test suite (CPU, no download)
VENV ?= .venv
RECIPE ?= recipes/tiny_cpu.yaml
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export VLLM_CPU_KVCACHE_SPACE ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv run sweep test bench lint
venv:
	@./scripts/setup_venv.sh

run: venv
	$(VENV)/bin/awares-rl run $(RECIPE)

sweep: venv  # after `make run`: reward-weight trials from its SFT model, the accuracy/RTR front
	$(VENV)/bin/awares-rl sweep --recipe $(RECIPE) --max-rtr 0.3

test: venv
	$(VENV)/bin/lint-imports  # the layering (ARCHITECTURE.md), contracts in pyproject.toml
	$(VENV)/bin/python -m pytest -q -m "not gpu" --durations=25 tests

bench: venv
	$(VENV)/bin/python bench/bench_episodes.py

lint: venv
	$(VENV)/bin/ruff check .
