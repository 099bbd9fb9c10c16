# Every target creates .venv when it is missing and installs what it needs into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: test demo bench bench-quick lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,rl,examples]"
	touch $(STAMP)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q

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
