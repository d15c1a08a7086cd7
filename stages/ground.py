"""Stage ``ground``: Grounding DINO boxes for every noun (see pipeline/ground_stage.py)."""

from __future__ import annotations

import json

from pipeline.cli import parse
from pipeline.config import load_section
from pipeline.ground_stage import run_ground
from pipeline.grounding import GroundConfig


def main(argv: list[str] | None = None) -> None:
    def extend(p):
        p.add_argument("--captions", default="data/captions/captions.parquet")
        p.add_argument("--nouns", default="data/nouns/nouns.parquet")

    args, log = parse(__doc__, argv, extend)
    cfg = load_section("ground", GroundConfig, args.params)
    summary = run_ground(cfg, args.captions, args.nouns)
    if summary is not None:
        log.info("ground: %s", json.dumps(summary))


if __name__ == "__main__":
    main()
