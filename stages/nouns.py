"""Stage ``nouns``: captions table -> nouns table (spaCy POS tags + SD's CLIP token indices).

Usage: ``python -m stages.nouns [--params params.yaml] [--captions data/captions/captions.parquet]``
Writes ``<out_dir>/nouns.parquet``, ``rejects.parquet`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json

from pipeline.core.cli import run_main
from pipeline.core.config import DEFAULT_PARAMS, load_section
from pipeline.core.logs import setup_logging
from pipeline.data.nouns import NounsConfig, run_nouns

DEFAULT_CAPTIONS = "data/captions/captions.parquet"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: %(default)s)")
    parser.add_argument("--captions", default=DEFAULT_CAPTIONS, help="captions table (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    log = setup_logging()
    cfg = load_section("nouns", NounsConfig, args.params)
    log.info("nouns: %s", cfg)
    summary = run_nouns(cfg, args.captions, progress=not args.no_progress)
    log.info("summary: %s", json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    run_main(main, "nouns")
