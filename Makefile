# Every target creates .venv when it is missing and installs into it what it needs (once: a
# stamp file per extra records it, renewed when pyproject.toml changes). pip shows what it installs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
PIP := $(BIN)/python -m pip install --progress-bar off

.PHONY: test test-fast test-integrations demo bench bench-quick gpu lint docs clean
CORE_TESTS := tests/test_transplant.py tests/test_errors.py tests/test_state.py tests/test_trace.py \
	tests/test_never_wrong.py tests/test_agents.py tests/test_spec.py flaxsurgery/spec.py flaxsurgery/planner.py flaxsurgery/units.py flaxsurgery/rules.py \
	flaxsurgery/layout.py flaxsurgery/transplant.py flaxsurgery/verify.py flaxsurgery/trace

$(BIN)/python:
	@echo "== creating $(VENV) with $(PY)"
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The test suite's packages (the `dev` extra: pytest, gymnax, orbax, gymnasium, ...).
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing flaxsurgery with the test suite's packages (.[dev]) into $(VENV)"
	$(PIP) -e ".[dev]"
	touch $(STAMP)

# The demo's packages only (the `demo` extra: gymnax, scipy, matplotlib).
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing flaxsurgery with the demo's packages (.[demo]) into $(VENV)"
	$(PIP) -e ".[demo]"
	touch $(DEMO_STAMP)

# Two workers (pytest-xdist): the suite is compile- and Python-bound, one core per worker.
# --durations lists the slowest tests, to keep the suite within its ten minutes.
# XLA compiles the tests' thousands of small programs without LLVM's optimisations: most of the
# suite's time is compiling programs that then run once (on two idle cores 478.9 s against 630.6 s
# and 682.0 s before, every test passing: results/test_times/runs.json). Experiments, benches
# and the demo keep XLA's default.
TEST_WORKERS ?= 2
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS="$(XLA_FLAGS) --xla_backend_optimization_level=0"
test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

# The core alone, with a few property-test examples each, on two workers: a quick check while editing.
test-fast: $(STAMP)
	FLAXSURGERY_FAST=1 $(TEST_ENV) $(BIN)/python -m pytest -q -n 2 $(CORE_TESTS)

# Client libraries' agents (SBX, and the purejaxrl, Brax and rejax recipes) through fs.surgery:
# tests/integrations/, never part of `make test`.
# torch is installed first and on its own, so that pip never resolves it (a plain `torch` pulls
# the CUDA build); where the CPU wheel is not at hand, point TORCH_PIP_ARGS at a CPU-only index.
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
INTEGRATIONS_STAMP := $(VENV)/.installed-integrations

$(INTEGRATIONS_STAMP): pyproject.toml $(STAMP)
	@echo "== installing $(TORCH) on its own, then the client libraries (.[dev,integrations])"
	$(PIP) $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PIP) -e ".[dev,integrations]"
	touch $(INTEGRATIONS_STAMP)

test-integrations: $(INTEGRATIONS_STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q tests/integrations

demo: $(DEMO_STAMP)
	JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 $(BIN)/python examples/demo.py

bench: $(STAMP)
	JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 $(BIN)/python -m bench

bench-quick: $(STAMP)
	JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 $(BIN)/python -m bench --quick

# On a machine with one NVIDIA GPU: 1B-parameter transplant and surgery, a 1024-seed DQN
# population and a 20-seed continuation experiment, within 8 minutes (bench/gpu.py); rows into
# bench/results.json, the experiment's summary under results/gpu_<device>/. Installs the test
# suite's packages and jax's CUDA 12 wheels (the `gpu` extra).
GPU_STAMP := $(VENV)/.installed-gpu

$(GPU_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing flaxsurgery with the test suite's packages and jax for CUDA (.[dev,gpu])"
	$(PIP) -e ".[dev,gpu]"
	touch $(GPU_STAMP)

gpu: $(GPU_STAMP)
	PYTHONUNBUFFERED=1 $(BIN)/python -m bench.gpu

# The documentation site: README.md and docs/ with the API reference from the docstrings, into
# site/ (not tracked). Relative links in README.md and docs/ must resolve; --strict turns every
# warning (a broken link or anchor in the site included) into an error.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml | $(BIN)/python
	@echo "== installing the documentation site's packages (.[docs]) into $(VENV)"
	$(PIP) -e ".[docs]"
	touch $(DOCS_STAMP)

# Docstrings are Markdown with mkdocstrings cross-references: a Sphinx role would show as raw text.
docs: $(DOCS_STAMP)
	$(BIN)/python tools/docstring_roles.py
	$(BIN)/python tools/check_links.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check flaxsurgery experiments tests examples bench

# Build outputs only: tracked files (results/, bench/results.json) are left alone.
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache build dist site
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
