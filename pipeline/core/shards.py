"""Sharded, resumable, multi-process stage execution.

A stage's work items (image ids) are cut into shards of ``shard_size`` items in a fixed
order. Each shard is processed into two Parquet tables (rows, rejects) and written
atomically into a *partial folder* outside the stage's DVC outputs::

    data/.partial/<stage>-<fingerprint>/part-00003.parquet
    data/.partial/<stage>-<fingerprint>/part-00003.rejects.parquet

The fingerprint hashes the stage's params and its inputs' bytes, so a rerun after an
interruption (even ``kill -9``) skips every shard already on disk, while a rerun with
other params or inputs starts clean. When every shard exists, the main process moves the
row shards into the final output folder and merges the rejects.

Several processes (``accelerate launch --num_processes N`` on GPUs, ``torchrun
--nproc_per_node N`` on CPUs) split the shards round-robin: shard ``k`` belongs to rank
``k % N``. Each shard's content depends only on its items, so the merged output is
identical for any N.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.core.devices import is_cuda
from pipeline.core.digests import file_digest, inputs_digest, on_main_process  # noqa: F401 - re-exported
from pipeline.core.schemas import REJECTS_SCHEMA
from pipeline.core.tables import write_table

log = logging.getLogger(__name__)

K = TypeVar("K")

PARTIAL_ROOT = Path("data/.partial")

# process one shard's items -> (rows, rejects)
ShardFn = Callable[[Sequence[K]], tuple[pa.Table, pa.Table]]


def chunk(items: Sequence[K], size: int) -> list[list[K]]:
    """Cut ``items`` into consecutive lists of at most ``size``."""
    if size < 1:
        raise ValueError(f"shard_size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass
class World:
    """Which process this is, its device, and a barrier. Backed by accelerate's ``PartialState``."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"
    _state: object | None = None

    @classmethod
    def from_accelerate(cls, device: str) -> "World":
        """Join the launcher's process group (if any) for work on ``device`` ("cpu", "cuda", "cuda:N").

        On CPU, accelerate must be told so (``cpu=True``) to form a multi-process gloo world
        under ``torchrun``. With several processes on CUDA each process takes its own GPU
        (``cuda:<local rank>``) unless an index was given.
        """
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        if is_cuda(device) and ":" not in str(device) and state.num_processes > 1:
            device = str(state.device)
        return cls(rank=state.process_index, size=state.num_processes, device=device, _state=state)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: object) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if self.size == 1 or self._state is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def on_main(self, fn: Callable[[], K]) -> K:
        """``fn()`` computed on the main process only, its result returned on every process."""
        return on_main_process(fn, self.is_main, self.size if self._state is not None else 1)

    def barrier(self) -> None:
        if self.size > 1 and self._state is not None:
            self._state.wait_for_everyone()  # type: ignore[attr-defined]


@dataclass
class ShardResult:
    """What ``run_sharded`` produced: the final rows folder and the merged rejects."""

    out_dir: Path
    rejects: pa.Table
    num_shards: int
    resumed_shards: int


def _shard_name(k: int) -> str:
    return f"part-{k:05d}"


def partial_dir(name: str, fingerprint: str, world: World, root: str | Path = PARTIAL_ROOT) -> Path:
    """``root/<name>-<fingerprint>``, created; first the main process removes ``<name>-*`` of other fingerprints."""
    path = Path(root) / f"{name}-{fingerprint}"
    if world.is_main:
        for stale in Path(root).glob(f"{name}-*"):
            if stale != path and stale.is_dir():
                log.info("%s: removing partial results of other params/inputs: %s", name, stale)
                shutil.rmtree(stale)
    world.barrier()
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_sharded(
    stage: str,
    items: Sequence[K],
    shard_size: int,
    fn: ShardFn,
    out_dir: str | Path,
    fingerprint: str,
    schema: pa.Schema,
    world: World | None = None,
    partial_root: str | Path = PARTIAL_ROOT,
    keep: bool = False,
) -> ShardResult | None:
    """Process ``items`` shard by shard with ``fn`` and publish the row shards in ``out_dir``.

    ``schema`` is the row schema; every shard (empty ones included) is cast to it. ``keep``:
    publish links (or copies) and keep the partial folder as a cache for later runs.
    Returns the result on the main process, ``None`` on the others.
    """
    world = world or World()
    shards = chunk(items, shard_size)
    partial = partial_dir(stage, fingerprint, world, partial_root)
    mine = [k for k in range(len(shards)) if k % world.size == world.rank]
    log.info("%s: process %d of %d takes %d of %d shards", stage, world.rank, world.size, len(mine), len(shards))
    done = [k for k in mine if (partial / f"{_shard_name(k)}.parquet").exists()]
    if done:
        log.info("%s: resuming, %d of this process's %d shards already done", stage, len(done), len(mine))
    todo = [k for k in mine if k not in set(done)]
    bar = tqdm(
        total=sum(len(shards[k]) for k in mine),
        initial=sum(len(shards[k]) for k in done),
        desc=f"{stage} [rank {world.rank}/{world.size}]",
        unit="img",
        disable=None,
    )
    for k in todo:
        t0 = time.perf_counter()
        rows, rejects = fn(shards[k])
        rows = rows.cast(schema) if rows.schema != schema else rows
        # rejects first: the rows file marks the shard as done
        write_table(rejects.cast(REJECTS_SCHEMA), partial / f"{_shard_name(k)}.rejects.parquet")
        write_table(rows, partial / f"{_shard_name(k)}.parquet")
        bar.update(len(shards[k]))
        log.debug("%s: shard %d (%d items) in %.2fs", stage, k, len(shards[k]), time.perf_counter() - t0)
    bar.close()
    world.barrier()
    if not world.is_main:
        return None
    return _publish(stage, partial, len(shards), Path(out_dir), schema, resumed=len(done), keep=keep)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (a copy across file systems)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _publish(stage: str, partial: Path, n: int, out_dir: Path, schema: pa.Schema, resumed: int,
             keep: bool = False) -> ShardResult:
    missing = [k for k in range(n) if not (partial / f"{_shard_name(k)}.parquet").exists()]
    if missing:
        raise RuntimeError(f"{stage}: shards {missing[:10]} missing in {partial}; a process failed")
    rejects = [pq.read_table(partial / f"{_shard_name(k)}.rejects.parquet") for k in range(n)]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if n == 0:  # keep the folder readable: one empty shard with the schema
        write_table(schema.empty_table(), out_dir / "part-00000.parquet")
    for k in range(n):
        src, dst = partial / f"{_shard_name(k)}.parquet", out_dir / f"{_shard_name(k)}.parquet"
        link_or_copy(src, dst) if keep else src.replace(dst)
    if not keep:
        shutil.rmtree(partial)
    merged = pa.concat_tables(rejects) if rejects else REJECTS_SCHEMA.empty_table()
    log.info("%s: %d shards published to %s (%d resumed)", stage, n, out_dir, resumed)
    return ShardResult(out_dir=out_dir, rejects=merged.cast(REJECTS_SCHEMA), num_shards=n, resumed_shards=resumed)
