#!/usr/bin/env bash
# Wheels for the GPU report and the GPU smoke run on a lent GPU machine (Python 3.12, torch 2.11,
# transformers 5, accelerate, peft, pyarrow, pandas, pytest, timm; no diffusers, DVC, dvclive,
# groundingdino-py, segment-anything, pycocotools; no network). Run here, once (make gpu-wheels):
#     bash bench/gpu_wheels.sh            # -> .whl/ (gitignored), about 30 MiB
# then on the GPU machine, from the repo root, with .whl carried along:
#     bash bench/gpu_run.sh smoke         # then: bash bench/gpu_run.sh report (make gpu-smoke / gpu-report)
# bench/gpu_env.sh installs a wheel there only when the machine lacks its distribution, so the
# machine's own packages stay as they are. Versions are the ones tested together here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON_VERSION:-3.12}
rm -rf .whl && mkdir -p .whl
BINARY=(--only-binary=:all: --python-version "$PY" --implementation cp
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
# the pipeline's own libraries that the machine lacks; pure Python except pycocotools and orjson
python3 -m pip download -q --no-deps -d .whl "${BINARY[@]}" \
    diffusers==0.39.0 segment-anything==1.0 segment-anything-hq==0.3 pycocotools==2.0.11 \
    addict==2.4.0 yapf==0.43.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 importlib_metadata==10.2.0 \
    zipp==4.1.2 einops==0.8.2 torchmetrics==1.9.0 lightning-utilities==0.15.3 torch-fidelity==0.4.0 \
    setuptools==84.2.1
# dvclive (the train stage's curves and heatmaps) and what `import dvclive` loads of DVC
python3 -m pip download -q --no-deps -d .whl "${BINARY[@]}" \
    dvclive==3.49.1 dvc==3.67.1 dvc-data==3.18.3 dvc-objects==5.2.0 dvc-http==2.32.0 dvc-render==1.0.2 \
    dvc-studio-client==0.23.0 scmrepo==3.6.2 dulwich==1.2.21 orjson==3.13.0 funcy==2.1 flatten-dict==0.5.0 \
    dpath==2.2.0 diskcache==5.6.3 flufl.lock==9.2.0 atpublic==9.0.0 pygtrie==2.6.2 sqltrie==0.11.3 \
    zc.lockfile==4.0 voluptuous==0.16.0 tabulate==0.10.0 nvidia-ml-py==13.615.71 ruamel.yaml==0.19.1 \
    pathspec==1.1.1 colorama==0.4.6 attrs==26.1.0 platformdirs==4.14.9 pydot==4.0.1 pyparsing==3.3.3 \
    requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
    click==8.5.1
# groundingdino-py ships only an sdist: build its (pure-Python) wheel here, with the
# project venv (its setup.py imports torch; PYTHON=... to use another)
python3 -m pip download -q --no-deps --no-binary=:all: -d .whl/sdist groundingdino-py==0.4.0
"${PYTHON:-.venv/bin/python}" -m pip wheel -q --no-deps --no-build-isolation -w .whl .whl/sdist/*.tar.gz
rm -rf .whl/sdist
# groundingdino-py needs transformers < 5 (the machine has 5.x, tokenizers 0.23, huggingface_hub 1.x):
# a second site, first on the path of the processes that run it (GPU_REPORT_GDINO_SITE)
mkdir -p .whl/gdino
python3 -m pip download -q --no-deps -d .whl/gdino transformers==4.57.6 huggingface_hub==0.36.2
python3 -m pip download -q --no-deps -d .whl/gdino "${BINARY[@]}" tokenizers==0.22.2
du -sh .whl && ls -s .whl .whl/gdino
