"""Stage ``train``: fine-tune the UNet with the TokenCompose losses (see pipeline/train/loop.py).

    python -m stages.train                                   # one process
    accelerate launch --num_processes 8 -m stages.train      # data parallel on GPUs (same recipe:
                                                             # train.global_batch_size is the batch)
    python -m stages.train --list-runs                       # the run folders under checkpoints/, their size
    python -m stages.train --prune-other-runs                # delete every run folder but this config's
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.cli import parse, run_main
from pipeline.core.code import code_digest
from pipeline.core.config import load_section, read_params
from pipeline.core.satisfiable import require_satisfiable
from pipeline.core.tables import read_table
from pipeline.train.loop import TrainConfig, run_train
from pipeline.train.model_card import write_card_with_pictures
from pipeline.train.runs import RunIdentity, list_runs, prune_other_runs
from pipeline.train.setup import data_digest


def manage_runs(cfg: TrainConfig, args, log) -> None:
    """``--list-runs`` / ``--prune-other-runs``: nothing is trained."""
    root = Path(cfg.out_dir) / "checkpoints"
    key = RunIdentity.of(cfg, data_digest(cfg, args.captions, args.nouns), code_digest("pipeline.train.loop")).key
    if args.prune_other_runs:
        removed = prune_other_runs(root, key)
        log.warning("removed %d folder(s) of other runs; kept run %s", len(removed), key)
    for row in list_runs(root, key):
        print(f"{row['run']:>16}  {'*' if row['current'] else ' '}  {row['bytes'] / 1e9:8.2f} GB  "
              f"steps {row['steps']}  {row['folder']}")


def main(argv: list[str] | None = None) -> None:
    def extend(p):
        p.add_argument("--captions", default="data/captions/captions.parquet")
        p.add_argument("--nouns", default="data/nouns/nouns.parquet")
        p.add_argument("--list-runs", action="store_true", help="list the run folders of train.out_dir/checkpoints")
        p.add_argument("--prune-other-runs", action="store_true",
                       help="delete the checkpoints of every run but the one params.yaml describes")

    args, log = parse(__doc__, argv, extend)
    cfg = load_section("train", TrainConfig, args.params)
    if args.list_runs or args.prune_other_runs:
        manage_runs(cfg, args, log)
        return
    require_satisfiable(read_params(args.params), args.params, only=("train",))  # before any work
    summary = run_train(cfg, args.captions, args.nouns)
    if summary is not None:
        log.info("train: %s", json.dumps(summary))
        captions = sorted(read_table(args.captions, columns=["caption_id", "caption"]).to_pylist(),
                          key=lambda r: r["caption_id"])
        write_card_with_pictures(cfg, summary, read_params(args.params).get("dataset"),
                                 [r["caption"] for r in captions])


if __name__ == "__main__":
    run_main(main, "train")
