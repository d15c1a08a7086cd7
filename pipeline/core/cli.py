"""The command line every stage script shares: ``--params``, ``--log-level``, and ``run_main``
(a failed stage exits 1 with its error and how to get the previous outputs back)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from pipeline.core.config import ConfigError
from pipeline.core.guards import StageInputError
from pipeline.core.logs import setup_logging

RESTORE_HINT = (
    "`dvc repro` removed the outputs of stage {stage} before running it; to get the previous ones back "
    "(as recorded in dvc.lock): dvc checkout {stage}"
)


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


def run_main(main: Callable[[], Any], stage: str) -> None:
    """Run a stage script's ``main``; on an error, log it with ``RESTORE_HINT`` and exit 1.

    Input and params errors (StageInputError, ConfigError, FileNotFoundError) are logged as
    their message alone: it says what to check; anything else with its traceback.
    """
    try:
        main()
    except (StageInputError, ConfigError, FileNotFoundError) as e:
        logging.getLogger(f"stages.{stage}").error("%s\n%s", e, RESTORE_HINT.format(stage=stage))
        sys.exit(1)
    except Exception:
        logging.getLogger(f"stages.{stage}").exception("stage %s failed\n%s", stage, RESTORE_HINT.format(stage=stage))
        sys.exit(1)
