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

.PHONY: setup train test test-slow test-gpu bench clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

train: setup
	$(BIN)/slmkit train recipe=$(RECIPE) $(ARGS)

test: setup browser
	$(BIN)/python -m pytest -q

# The browser test of `slmkit compare --html` opens the page in headless Chromium: Debian's package, installed here
# where apt-get can (CI runs as root); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed and cannot be here: the browser test of slmkit compare --html will skip"

# The slow tests include datatrove's Ray executor on a local cluster: ray is large, so only this target installs it.
test-slow: setup
	$(BIN)/pip install --quiet -c constraints.txt "ray>=2.9,<3"
	$(BIN)/python -m pytest -q -m slow

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(VENV) .pytest_cache
