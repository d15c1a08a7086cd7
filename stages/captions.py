"""Stage ``captions``: validated, selected captions table from COCO captions or TokenCompose metadata.

Usage: ``python -m stages.captions [--params params.yaml] [--workers N]``
Reads section ``captions`` (``pipeline.data.captions.CaptionsConfig``); writes ``<out_dir>/captions.parquet``,
``rejects.parquet`` and ``summary.json`` (formats in ``pipeline/data/captions.py``).
"""

from __future__ import annotations

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section, read_params
from pipeline.core.satisfiable import require_satisfiable
from pipeline.data.captions import CaptionsConfig, run_captions


def main(argv: list[str] | None = None) -> dict:
    args, log = parse(
        __doc__.splitlines()[0], argv,
        lambda p: p.add_argument("--workers", type=int, default=None,
                                 help="image decoding threads (default: min(8, CPUs))"),
    )
    cfg = load_section("captions", CaptionsConfig, args.params)
    require_satisfiable(read_params(args.params), args.params, only=("captions",))  # before any work
    log.info("captions: %s", cfg)
    return run_captions(cfg, workers=args.workers)


if __name__ == "__main__":
    run_main(main, "captions")
