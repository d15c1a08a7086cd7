#!/usr/bin/env bash
# On the lent GPU machine, from the repo root, with .whl/ (bench/gpu_wheels.sh) carried along:
#     bash bench/gpu_run.sh [--quick]
# Installs the wheels without an index into /tmp/site (the machine's own packages stay as
# they are) and prints the report's Markdown table; a copy goes to $OUT/gpu_report.md if set.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# transformers 4.57 for the Grounding DINO part only, in a child process (bench/gpu_report.py)
if compgen -G ".whl/gdino/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-gdino .whl/gdino/*.whl
    export GPU_REPORT_GDINO_SITE=/tmp/site-gdino
fi
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
python3 -m bench --gpu "$@" | tee "${OUT:-/tmp}/gpu_report.md"
