# Two entry points, both from a fresh clone:
#   make repro   set up .venv and run the whole DVC pipeline (demo profile by default)
#   make test    set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test bench rehearsal gpu-smoke gpu-report gpu-wheels clean-partial

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

# GPU machines. With .whl/ present (make gpu-wheels, carried to a lent machine that has no venv and
# no network) the carried wheels are installed into /tmp/site instead of `make setup` (bench/gpu_env.sh).
# Report and log: $OUT if set, else bench/out/. GPU_ARGS=--dry-run (smoke) / --quick (report): on the CPU.
GPU_DEPS := $(if $(wildcard .whl/*.whl),,setup)
GPU_ARGS ?=

# one GPU, <= 6 min 40 s: ground, segment, train (heatmap, held-out grounding, checkpoint, resume), evaluate, SDXL LoRA
# on CUDA with the tiny models, then SD1.4 training steps at 512 px in fp32 and bf16; one report
gpu-smoke: $(GPU_DEPS)
	bash bench/gpu_run.sh smoke $(GPU_ARGS)

# one GPU, ~10 min (estimated): SD1.4 and SDXL LoRA training steps, Grounding DINO, SAM, generation, OWLv2 at the paper's sizes
gpu-report: $(GPU_DEPS)
	bash bench/gpu_run.sh report $(GPU_ARGS)

gpu-wheels: setup
	bash bench/gpu_wheels.sh

clean-partial:
	rm -rf data/.partial
