#!/usr/bin/env bash
# On a GPU machine, from the repo root (make gpu-smoke / make gpu-report); on the lent machine
# with .whl carried along (bench/gpu_wheels.sh here first):
#     bash bench/gpu_run.sh smoke [--dry-run]     # bench/gpu_smoke.py: stage code on CUDA + SD1.4 steps, <= 6 min 40 s
#     bash bench/gpu_run.sh report [--quick] [--parts train,sdxl_lora]   # bench/gpu_report.py: ~10 min for all
#     parts (estimated); $OUT/gpu_report.md is rewritten after every part, so a time limit keeps the rows done
# Installs the carried wheels (bench/gpu_env.sh), then runs it; the report and its log go to
# $OUT if set (the lent machine's output folder), else bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: bash bench/gpu_run.sh smoke|report [args]}
shift
PY=${PYTHON:-python3}
case " $* " in
    *" --dry-run "*|*" --quick "*) ;;
    *) if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
           echo "bench/gpu_run.sh $what: no CUDA GPU visible to $PY (torch.cuda.is_available() is False, or no torch);" \
                "nothing installed or run. On the CPU: bash bench/gpu_run.sh smoke --dry-run / report --quick" >&2
           exit 2
       fi ;;
esac
source bench/gpu_env.sh
out=${OUT:-bench/out}
mkdir -p "$out"
case "$what" in
    smoke)  "$PY" -m bench.gpu_smoke --out "$out" "$@" 2>&1 | tee "$out/gpu_smoke.log" ;;
    report) "$PY" -m bench --gpu --out "$out" "$@" 2>&1 | tee "$out/gpu_report.log" ;;
    *) echo "unknown: $what (smoke or report)" >&2; exit 2 ;;
esac
