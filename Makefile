# One command to set up and train, one to set up and test. The virtual environment is created on first use;
# torch is installed first and pinned by constraints.txt so nothing later can swap it for another build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
RECIPE ?= legal-tiny
ARGS ?=
export SLMKIT_SHARED ?= $(abspath ../shared)
export SLMKIT_DATA ?= $(SLMKIT_SHARED)/corpora

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test test-slow test-gpu bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

train: setup
	$(BIN)/slmkit train recipe=$(RECIPE) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(VENV) .pytest_cache
