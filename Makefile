# Set-up and everyday commands. `make demo` and `make test` work from nothing: each installs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignkit-installed
# The CPU build of torch lies on disk on the project's machines; elsewhere pip picks the build for the platform.
TORCH_SPEC ?= torch>=2.6,<2.14

.PHONY: install test test-fast lint format demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@# An existing torch (a user's CUDA build) is kept; only a venv without torch gets one.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install
	$(BIN)/python -m alignkit.demo

bench: install
	$(BIN)/python benchmarks/cli_latency.py
	$(BIN)/python benchmarks/engine_overhead.py

clean:
	rm -rf $(VENV) outputs alignkit-demo .pytest_cache .ruff_cache
