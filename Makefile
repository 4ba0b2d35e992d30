# unity_legion: `make demo`, `make test` (both install the environment first).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
ENV    := . $(VENV)/unity_legion_env.sh
STAMP  := $(VENV)/.unity_legion_setup.stamp
# Legate configuration for the test suite (one process, 2 CPU processors).
TEST_LEGATE_CONFIG ?= --cpus 2 --sysmem 4000
PYTEST_ARGS ?=
DEMO_ARGS ?=

SETUP_INPUTS := setup/install.sh setup/no_device_libcuda.c setup/ucx_ib_seg_shim.c \
                pyproject.toml setup.py

.PHONY: help setup demo test test-fast clean distclean

help:
	@echo "make setup      create .venv with the pinned Legate stack (idempotent)"
	@echo "make demo       run scripts/train.py under legate --cpus 2"
	@echo "make test       run the whole test suite (incl. slow multi-rank tests)"
	@echo "make test-fast  run the tests not marked slow"
	@echo "make clean      remove caches and build leftovers (keeps .venv)"
	@echo "make distclean  clean, and remove .venv too"

setup: $(STAMP)

# The stamp lives inside .venv: deleting .venv re-runs the install.
$(STAMP): $(SETUP_INPUTS)
	bash setup/install.sh
	touch $@

# Legate options go before the script; DEMO_ARGS go to the script.
demo: setup
	$(ENV) && legate --cpus 2 scripts/train.py $(DEMO_ARGS)

test: setup
	$(ENV) && LEGATE_CONFIG="$(TEST_LEGATE_CONFIG)" $(PY) -m pytest -q tests $(PYTEST_ARGS)

test-fast: setup
	$(ENV) && LEGATE_CONFIG="$(TEST_LEGATE_CONFIG)" $(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

clean:
	rm -rf build dist .pytest_cache .ruff_cache .mypy_cache
	rm -rf *.egg-info unity_legion.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(STAMP)

distclean: clean
	rm -rf $(VENV)
