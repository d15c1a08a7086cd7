"""Stage ``train``: fine-tune the UNet with the TokenCompose losses (see pipeline/train/loop.py).

    python -m stages.train                                   # one process
    accelerate launch --num_processes 8 -m stages.train      # data parallel on GPUs
"""

from __future__ import annotations

import json

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section, read_params
from pipeline.core.satisfiable import require_satisfiable
from pipeline.train.loop import TrainConfig, run_train


def main(argv: list[str] | None = None) -> None:
    def extend(p):
        p.add_argument("--captions", default="data/captions/captions.parquet")
        p.add_argument("--nouns", default="data/nouns/nouns.parquet")

    args, log = parse(__doc__, argv, extend)
    cfg = load_section("train", TrainConfig, args.params)
    require_satisfiable(read_params(args.params), args.params, only=("train",))  # before any work
    summary = run_train(cfg, args.captions, args.nouns)
    if summary is not None:
        log.info("train: %s", json.dumps(summary))


if __name__ == "__main__":
    run_main(main, "train")
