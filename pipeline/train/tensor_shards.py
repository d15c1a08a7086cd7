"""Append-only stores of per-item tensors in safetensors shards (the training caches' storage).

``<folder>/part-NNNNN.safetensors``: each named tensor stacked over the shard's rows, and the
rows' keys (JSON lists) in the metadata field ``meta``. A shard is written to a temporary name
and renamed, so an interrupted fill leaves whole shards only, and a rerun fills what is missing.
Rows are read lazily: one row's slice of the memory-mapped file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SHARD_ROWS = 256


@dataclass
class ShardStore:
    """``index[key] = (shard file, row)`` over the shards of ``folder``; keys are tuples of strings."""

    folder: Path
    meta: str
    index: dict[tuple, tuple[Path, int]]

    @classmethod
    def read(cls, folder: str | Path, meta: str) -> ShardStore:
        folder = Path(folder)
        index: dict[tuple, tuple[Path, int]] = {}
        for shard in sorted(folder.glob("part-*.safetensors")):
            with safe_open(str(shard), "pt") as f:
                keys = json.loads(f.metadata()[meta])
            for row, key in enumerate(keys):
                index[tuple(key)] = (shard, row)
        return cls(folder, meta, index)

    def get(self, key: tuple, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` of one row, each without the row dimension."""
        shard, row = self.index[key]
        with safe_open(str(shard), "pt") as f:
            return {n: f.get_slice(n)[row:row + 1][0] for n in names}

    def append(self, keys: list[tuple], compute) -> ShardStore:
        """Write ``keys`` in new shards of :data:`SHARD_ROWS` rows; ``compute(key)`` gives a row's
        ``{name: tensor}`` (moved to the CPU here). Returns the store read again."""
        first = len(list(self.folder.glob("part-*.safetensors")))
        for n, start in enumerate(range(0, len(keys), SHARD_ROWS)):
            part = keys[start:start + SHARD_ROWS]
            rows = [compute(key) for key in part]
            tensors = {name: torch.stack([r[name].to("cpu") for r in rows]).contiguous() for name in rows[0]}
            self.folder.mkdir(parents=True, exist_ok=True)
            shard = self.folder / f"part-{first + n:05d}.safetensors"
            tmp = shard.with_name(f".{shard.name}.tmp")
            save_file(tensors, str(tmp), metadata={self.meta: json.dumps([list(k) for k in part])})
            tmp.rename(shard)
        return ShardStore.read(self.folder, self.meta)
