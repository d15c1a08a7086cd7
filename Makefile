# Two entry points, both from a fresh clone:
#   make repro   set up .venv and run the whole DVC pipeline (demo profile by default)
#   make test    set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test bench clean-partial

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest -q

bench: setup
	python -m bench

clean-partial:
	rm -rf data/.partial
