"""Append-only stores of per-item tensors in safetensors shards (the training caches' storage).

``<folder>/part-<digest of its keys>.safetensors``: each named tensor stacked over the shard's rows,
and the rows' keys (JSON lists) in the metadata field ``meta``. A shard is written to a temporary name
and renamed, so an interrupted fill leaves whole shards only, and a rerun fills what is missing.
Rows are read lazily: one row's slice of the memory-mapped file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

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

    def missing(self, keys: list[tuple], rank: int = 0, world: int = 1) -> list[tuple]:
        """The keys not stored yet, distinct, in their order, of process ``rank`` of ``world``: every
        ``world``-th of all the keys, stored or not, so a key's owner does not depend on when each
        process read the store, and several processes fill one store side by side."""
        return [k for k in list(dict.fromkeys(keys))[rank::world] if k not in self.index]

    def append(self, keys: list[tuple], compute, desc: str = "cache") -> ShardStore:
        """Write ``keys`` in new shards of :data:`SHARD_ROWS` rows; ``compute(key)`` gives a row's
        ``{name: tensor}`` (moved to the CPU here). A shard is named by the digest of its keys, so
        processes writing side by side never collide. Returns the store read again."""
        with tqdm(total=len(keys), desc=desc, unit="row", disable=None) as bar:
            for start in range(0, len(keys), SHARD_ROWS):
                part = keys[start:start + SHARD_ROWS]
                rows = []
                for key in part:
                    rows.append(compute(key))
                    bar.update(1)
                self._write(part, rows)
        return ShardStore.read(self.folder, self.meta)

    def _write(self, part: list[tuple], rows: list[dict[str, torch.Tensor]]) -> Path:
        keys = json.dumps([list(k) for k in part])
        tensors = {name: torch.stack([r[name].to("cpu") for r in rows]).contiguous() for name in rows[0]}
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = self.folder / f"part-{hashlib.sha256(keys.encode()).hexdigest()[:16]}.safetensors"
        tmp = shard.with_name(f".{shard.name}.tmp")
        save_file(tensors, str(tmp), metadata={self.meta: keys})
        tmp.rename(shard)
        return shard
