"""Run every benchmark in one process and print one table.

    python -m bench            # or: make bench
    python -m bench --startup  # also start-up at COCO scale (bench/bench_startup.py, ~2 min, ~1 GB in /tmp)
    python -m bench --gpu [--quick]   # or: make gpu-report (bench/gpu_report.py)

Each benchmark module exposes ``run() -> list[dict]`` rows (group, metric, value, unit, note).
"""

from __future__ import annotations

import platform

import torch

from pipeline.core.logs import setup_logging

from . import bench_eval, bench_masks, bench_nouns, bench_train
from .common import to_markdown


def main() -> None:
    import sys

    if "--gpu" in sys.argv[1:]:
        from . import gpu_report

        setup_logging("INFO")
        print(gpu_report.report(quick="--quick" in sys.argv[1:]))
        return
    setup_logging("WARNING")
    rows = bench_nouns.run() + bench_masks.run() + bench_train.run() + bench_eval.run()
    if "--startup" in sys.argv[1:]:
        from . import bench_startup

        rows += bench_startup.run()
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"cuda {torch.cuda.is_available()}")
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
