"""Stage ``segment``: SAM masks for every noun with a box (see pipeline/data/segment.py)."""

from __future__ import annotations

import json

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section
from pipeline.data.segment import SegmentConfig, run_segment


def main(argv: list[str] | None = None) -> None:
    def extend(p):
        p.add_argument("--captions", default="data/captions/captions.parquet")
        p.add_argument("--boxes", default="data/ground/boxes")

    args, log = parse(__doc__, argv, extend)
    cfg = load_section("segment", SegmentConfig, args.params)
    summary = run_segment(cfg, args.captions, args.boxes)
    if summary is not None:
        log.info("segment: %s", json.dumps(summary))


if __name__ == "__main__":
    run_main(main, "segment")
