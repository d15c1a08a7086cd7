"""Stage ``reference_masks``: nouns + COCO instance annotations -> a masks table (see pipeline/data/reference_masks.py).

Usage: ``python -m stages.reference_masks [--params params.yaml] [--captions ...] [--nouns ...]``
Writes ``<out_dir>/masks/part-00000.parquet`` and ``<out_dir>/summary.json``.
"""

from __future__ import annotations

import json

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section
from pipeline.data.reference_masks import ReferenceMasksConfig, run_reference_masks

DEFAULT_CAPTIONS = "data/captions/captions.parquet"
DEFAULT_NOUNS = "data/nouns/nouns.parquet"


def main(argv: list[str] | None = None) -> dict:
    def extend(p):
        p.add_argument("--captions", default=DEFAULT_CAPTIONS, help="captions table (default: %(default)s)")
        p.add_argument("--nouns", default=DEFAULT_NOUNS, help="nouns table (default: %(default)s)")

    args, log = parse(__doc__.splitlines()[0], argv, extend)
    cfg = load_section("reference_masks", ReferenceMasksConfig, args.params)
    summary = run_reference_masks(cfg, args.captions, args.nouns)
    log.info("reference_masks: %s", json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    run_main(main, "reference_masks")
