#!/usr/bin/env bash
# Wheels for the GPU report on a lent GPU machine (Python 3.12, torch 2.11, transformers 5,
# no diffusers / groundingdino-py / segment-anything, no network). Run here, once:
#     bash bench/gpu_wheels.sh            # -> .whl/ (gitignored), about 24 MiB
# then on the GPU machine, from the repo root, with .whl carried along:
#     bash bench/gpu_run.sh               # installs them into /tmp/site, prints the report
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON_VERSION:-3.12}
rm -rf .whl && mkdir -p .whl
# pure-Python wheels, no dependencies pulled (the machine has torch, transformers, timm,
# torchvision, accelerate, einops, pyarrow, pyyaml, pillow, scipy, huggingface-hub)
python3 -m pip download -q --no-deps -d .whl \
    diffusers==0.39.0 groundingdino-py==0.4.0 segment-anything==1.0 addict==2.4.0 yapf==0.43.0 \
    open_clip_torch==3.3.0 ftfy wcwidth importlib_metadata
# groundingdino-py ships only an sdist: build its (pure-Python) wheel here, with the
# project venv (its setup.py imports torch; PYTHON=... to use another)
for sdist in .whl/*.tar.gz; do
    "${PYTHON:-.venv/bin/python}" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$sdist" && rm "$sdist"
done
# compiled: pycocotools (pipeline.core.masks), for the machine's Python
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl pycocotools==2.0.11
# groundingdino-py needs transformers < 5 (the machine has 5.x, tokenizers 0.23, huggingface_hub 1.x):
# a second site for the report's Grounding DINO child process (GPU_REPORT_GDINO_SITE)
mkdir -p .whl/gdino
python3 -m pip download -q --no-deps -d .whl/gdino transformers==4.57.6 huggingface_hub==0.36.2
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl/gdino tokenizers==0.22.2
du -sh .whl && ls .whl .whl/gdino
