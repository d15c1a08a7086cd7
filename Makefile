# Two entry points, both from a fresh clone:
#   make repro   set up .venv and run the whole DVC pipeline (demo profile by default)
#   make test    set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test bench rehearsal gpu-report gpu-wheels clean-partial

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

repro: setup
	dvc repro

# one worker per core, whole files per worker (module fixtures built once), one thread per process
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: setup
	python -m bench

# the paper-sd14 recipe with the real architectures (random weights) on a few coco-mini images (CPU, <= 60 min)
rehearsal: setup
	python -m bench.rehearsal --profile rehearsal-sd14

# one GPU, <= 8 min: training step, Grounding DINO, SAM, generation, OWLv2 at the paper's sizes
gpu-report: setup
	python -m bench --gpu

gpu-wheels:
	bash bench/gpu_wheels.sh

clean-partial:
	rm -rf data/.partial
