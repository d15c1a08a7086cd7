"""The official training list's figures, and a stage's counts beside them.

TokenCompose's released ``metadata.jsonl`` (the paper's training data) holds 4,526 captions
(one per COCO train2017 image), 15,156 nouns in their ``attn_list``, 13,634 of them with a
mask. A rebuilt dataset in the paper data mode (``dataset.format: tokencompose``) states its
counts beside these in the ``captions``, ``nouns``, ``segment`` and ``train`` summaries, so
that a reproduction that lost images or masks shows it at the stage that lost them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

OFFICIAL: dict[str, int] = {"captions": 4526, "nouns": 15156, "masked_nouns": 13634}
SUMMARY_KEY = "official_list"


def beside_official(**counts: int) -> dict[str, Any]:
    """``{"official_list": {name: {"here": n, "official": OFFICIAL[name], "ratio": n / official}}}``.

    ``counts``: any of ``captions``, ``nouns``, ``masked_nouns`` (another name is a ValueError);
    the caller says what it counted (``train``: ``masked_nouns`` = the supervised nouns).
    """
    unknown = sorted(set(counts) - set(OFFICIAL))
    if unknown:
        raise ValueError(f"no official figure for {unknown}; known: {sorted(OFFICIAL)}")
    entries = {}
    for name, here in counts.items():
        if isinstance(here, bool) or not isinstance(here, int) or here < 0:
            raise ValueError(f"{name}: expected a count, got {here!r}")
        entries[name] = {"here": here, "official": OFFICIAL[name], "ratio": round(here / OFFICIAL[name], 4)}
    return {SUMMARY_KEY: entries}


def paper_data_mode(captions: pa.Table) -> bool:
    """True when a captions table came from TokenCompose's list (``official_nouns`` filled)."""
    if "official_nouns" not in captions.column_names:
        return False
    return captions.num_rows > 0 and captions.column("official_nouns").null_count < captions.num_rows


def official_summary(table: pa.Table | str | Path, /, **counts: int) -> dict[str, Any]:
    """``beside_official(**counts)`` when ``table`` (a captions table or its path) is in the paper
    data mode, else ``{}``: what a stage adds to its summary with ``summary.update(...)``."""
    if not isinstance(table, pa.Table):
        from pipeline.core.tables import read_table

        table = read_table(table)
    return beside_official(**counts) if paper_data_mode(table) else {}
