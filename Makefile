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

.PHONY: setup train test test-slow test-gpu test-llamacpp bench clean browser

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

# llama.cpp itself on slmkit's GGUF files. PyPI has llama-cpp-python as source only: the first run compiles llama.cpp
# (minutes) into LLAMACPP_WHEELS, later runs install that wheel. x86 builds leave out llama.cpp's AMX kernels, which
# crash on Sapphire Rapids CPUs at the first quantized matmul (ggml-org/llama.cpp#20824).
LLAMACPP ?= llama-cpp-python==0.3.36
LLAMACPP_WHEELS ?= .cache/wheels
LLAMACPP_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)

test-llamacpp: setup
	ls $(LLAMACPP_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CFLAGS="$(LLAMACPP_CFLAGS)" CXXFLAGS="$(LLAMACPP_CFLAGS)" \
		$(BIN)/pip wheel --quiet --no-cache-dir --no-deps -w $(LLAMACPP_WHEELS) '$(LLAMACPP)'
	$(BIN)/pip install --quiet -c constraints.txt --only-binary llama-cpp-python --find-links $(LLAMACPP_WHEELS) -e ".[llamacpp]" '$(LLAMACPP)'
	$(BIN)/python -m pytest -q -m llamacpp

clean:
	rm -rf $(VENV) .pytest_cache
