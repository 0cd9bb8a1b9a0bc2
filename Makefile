# Two entry points for a fresh machine (Debian, Python 3.11, g++, make, perl):
#   make simulate   set up .venv, then run the main job (sparsemac simulate)
#   make test       set up .venv, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_WORKERS ?= 2

.PHONY: setup simulate test test-slow test-all regress clean

setup: $(VENV)/.installed

# torch is pinned and installed first: the CPU build of 2.13.0 is what this machine serves, and
# an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

simulate: setup
	$(BIN)/sparsemac simulate

# The default run leaves out the tests marked slow (formal proofs, cocotb regressions, Yosys
# syntheses, the board over a pty); CI runs them as its second stage, `make test-all` with the rest.
test: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q -m slow

test-all: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -q

regress: setup
	$(BIN)/sparsemac regress

clean:
	rm -rf $(VENV) *.egg-info results
