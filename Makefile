# Every target creates .venv when it is missing and installs what it needs into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: test test-integrations demo bench bench-quick lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,rl,examples]"
	touch $(STAMP)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q

# Client libraries' agents (SBX) through fs.surgery: tests/integrations/, never part of `make test`.
# torch is installed first and on its own, so that pip never resolves it (a plain `torch` pulls
# the CUDA build); where the CPU wheel is not at hand, pass
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
INTEGRATIONS_STAMP := $(VENV)/.installed-integrations

$(INTEGRATIONS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,rl,examples,integrations]"
	touch $(INTEGRATIONS_STAMP)

test-integrations: $(INTEGRATIONS_STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q tests/integrations

demo: $(STAMP)
	JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 $(BIN)/python examples/demo.py

bench: $(STAMP)
	JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 $(BIN)/python -m bench

bench-quick: $(STAMP)
	JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 $(BIN)/python -m bench --quick

lint: $(STAMP)
	$(BIN)/ruff check flaxsurgery tests examples bench

clean:
	rm -rf $(VENV) results
