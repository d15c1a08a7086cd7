#!/usr/bin/env bash
# Sourced by bench/gpu_run.sh on a machine without the project's venv (the lent GPU machine):
# installs the wheels carried in .whl/ (bench/gpu_wheels.sh) without an index into /tmp/site,
# each only when the machine lacks its distribution (the machine's own packages stay as they
# are and come first), and the Grounding DINO site (transformers 4.57) into /tmp/site-gdino;
# exports PYTHONPATH, GPU_REPORT_GDINO_SITE, PYTHONUNBUFFERED and TQDM_DISABLE. No .whl/: nothing
# is installed (a machine with the project's venv, or everything installed). $PYTHON: the
# interpreter (default python3); without pip, the wheels are unpacked with zipfile.
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}

_gpu_install() {   # _gpu_install TARGET WHEEL...
    local target=$1
    shift
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
    else
        mkdir -p "$target"
        for w in "$@"; do "$PY" -m zipfile -e "$w" "$target"; done
        for d in "$target"/*.data/purelib "$target"/*.data/platlib; do
            if [ -d "$d" ]; then cp -r "$d"/. "$target"/; fi
        done
    fi
}

if compgen -G ".whl/*.whl" >/dev/null; then
    mapfile -t NEEDED < <("$PY" - .whl/*.whl <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, distribution

for wheel in sys.argv[1:]:
    name = wheel.rsplit("/", 1)[-1].split("-")[0]
    try:
        distribution(name)
    except PackageNotFoundError:
        print(wheel)
PY
)
    if [ "${#NEEDED[@]}" -gt 0 ]; then
        echo "gpu_env: installing ${#NEEDED[@]} carried wheels into $SITE: ${NEEDED[*]##*/}" >&2
        _gpu_install "$SITE" "${NEEDED[@]}"
    fi
fi
# transformers 4.57 for Grounding DINO, in the processes that run it (bench/gpu_report.py, bench/gpu_smoke.py)
if compgen -G ".whl/gdino/*.whl" >/dev/null; then
    _gpu_install "$SITE-gdino" .whl/gdino/*.whl
    export GPU_REPORT_GDINO_SITE="$SITE-gdino"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
