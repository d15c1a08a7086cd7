"""The command line every stage script shares: ``--params`` and ``--log-level``."""

from __future__ import annotations

import argparse
import logging
from typing import Callable

from pipeline.core.logs import setup_logging


def stage_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: $LOG_LEVEL or INFO)")
    return p


def parse(
    description: str, argv: list[str] | None, extend: Callable[[argparse.ArgumentParser], None] | None = None
) -> tuple[argparse.Namespace, logging.Logger]:
    """Parse a stage's arguments and set up logging."""
    parser = stage_parser(description)
    if extend is not None:
        extend(parser)
    args = parser.parse_args(argv)
    return args, setup_logging(args.log_level)
