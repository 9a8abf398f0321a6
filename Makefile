# Quick start: `make demo` (install, then run the main job) and `make test`.
# torch is installed first, pinned to the CPU build on this machine's disk; a GPU user
# installs the CUDA build of their choice into .venv first and sets TORCH_SPEC="" to keep it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install install-test demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/pip install --quiet "$(TORCH_SPEC)"; fi
	$(BIN)/pip install --quiet -e ".[structured]"

install-test: $(BIN)/python
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/pip install --quiet "$(TORCH_SPEC)"; fi
	$(BIN)/pip install --quiet -e ".[test]"

demo: install
	$(BIN)/reasonrl train

test: install-test
	$(BIN)/python -m pytest -q

test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

clean:
	rm -rf $(VENV) runs .pytest_cache
