"""Stage ``ground``: Grounding DINO boxes for every noun (see pipeline/data/ground.py)."""

from __future__ import annotations

import json

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section
from pipeline.data.ground import GroundConfig, run_ground


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
    run_main(main, "ground")
