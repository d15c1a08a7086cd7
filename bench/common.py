"""What every benchmark shares: the shared data folder, timing, result rows, the table."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENCOMPOSE_SHARED", REPO.parent / "shared"))
COCO_MINI = SHARED / "coco-mini"

T = TypeVar("T")


def best_of(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Run ``fn`` ``repeats`` times; the fastest wall time in seconds and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def row(group: str, metric: str, value: float, unit: str, note: str = "") -> dict:
    return {"group": group, "metric": metric, "value": value, "unit": unit, "note": note}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| | metric | value | unit | note |", "|---|---|---:|---|---|"]
    for r in rows:
        value = f"{r['value']:.2f}" if r["value"] < 100 else f"{r['value']:,.0f}"
        lines.append(f"| {r['group']} | {r['metric']} | {value} | {r['unit']} | {r['note']} |")
    return "\n".join(lines)
