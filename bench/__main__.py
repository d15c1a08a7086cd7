"""Run every benchmark in one process and print one table.

    python -m bench            # or: make bench
    python -m bench --startup  # also start-up at COCO scale (bench/bench_startup.py, ~2 min, ~1 GB in /tmp)
    python -m bench --gpu [--quick] [--parts train,sdxl_lora] [--out DIR]   # or: make gpu-report (bench/gpu_report.py)

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
        import argparse

        from . import gpu_report

        p = argparse.ArgumentParser(prog="python -m bench --gpu")
        p.add_argument("--gpu", action="store_true")
        p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU")
        p.add_argument("--parts", default=None, help=f"comma-separated, of {','.join(gpu_report.PARTS)}")
        p.add_argument("--out", default=None, help="folder where gpu_report.md is rewritten after every part")
        args = p.parse_args(sys.argv[1:])
        setup_logging("INFO")
        print(gpu_report.report(quick=args.quick, parts=args.parts.split(",") if args.parts else None, out=args.out))
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
