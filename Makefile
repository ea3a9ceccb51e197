# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-fast tools bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/lastmile demo

# the Debian tools some tests run (promtool, prometheus, amtool, kubectl, chromium): installed
# when missing if apt-get may run as root; otherwise .ci/tools says what to install
tools:
	@.ci/tools

# test files run in parallel, a file per worker at a time (its broker is per module): 7 min on
# 2 cores instead of 15; TEST_WORKERS=0 runs them in this process, one after the other
TEST_WORKERS ?= 2

test: $(VENV)/.installed tools
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

bench: $(VENV)/.installed $(VENV)/.bench-installed
	$(BIN)/lastmile bench
	$(BIN)/python -m tests.bench.statistics

lint: $(VENV)/.installed
	$(BIN)/ruff check monitor tests deploy
	$(BIN)/mypy monitor
	$(BIN)/python deploy/grafana/generate.py --check
	$(BIN)/python deploy/kubernetes/generate.py --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
