"""Logging setup shared by every stage: levels, timestamps, one format."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> logging.Logger:
    """Configure the root logger once; level from the argument or ``$LOG_LEVEL`` (default INFO)."""
    level = (level or os.environ.get("LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("urllib3", "PIL", "matplotlib", "filelock", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("pipeline")
