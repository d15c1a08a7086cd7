"""Parquet tables and JSON files, written atomically.

A writer never leaves a half-written file under the final name: it writes
``<name>.tmp-<pid>`` in the same folder, fsyncs, then ``os.replace``s it into place.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.schemas import REJECTS_SCHEMA


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_and_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_table(table: pa.Table, path: str | Path, compression: str = "zstd") -> Path:
    """Write ``table`` to ``path`` (Parquet) atomically; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression=compression)
        _fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_rows(rows: list[dict[str, Any]], schema: pa.Schema, path: str | Path) -> Path:
    """Write a list of row dicts with an explicit schema (so empty tables keep their columns)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    return write_table(table, path)


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file or a folder of Parquet shards (``part-*.parquet``, in name order)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("part-*.parquet"))
        if not shards:
            raise FileNotFoundError(f"no part-*.parquet shards in {path}")
        return pa.concat_tables([pq.read_table(s, columns=columns) for s in shards])
    if not path.exists():
        raise FileNotFoundError(f"table not found: {path}")
    return pq.read_table(path, columns=columns)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as pretty JSON atomically (metrics and summaries)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        _fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_csv(rows: list[dict[str, Any]], columns: list[str], path: str | Path) -> Path:
    """Write rows as CSV atomically (for ``dvc plots``); floats with 4 decimals."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: f"{r[c]:.4f}" if isinstance(r[c], float) else r[c] for c in columns} for r in rows)
    return write_bytes(buf.getvalue().encode(), path)


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write raw bytes (a PNG, a zip) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_bytes(data)
        _fsync_and_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path



def rejects_table(stage: str, rejects: Iterable[tuple[str, str, str]]) -> pa.Table:
    """Rows ``(key, reason, detail)`` -> a rejects table with the common schema."""
    rows = [{"stage": stage, "key": str(k), "reason": r, "detail": d} for k, r, d in rejects]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)
