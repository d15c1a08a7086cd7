"""Which local models carry random weights, so that numbers measured with them say so.

The stages that build models with seeded random weights (``demo_models``: the tiny twins;
``rehearsal_models``: the paper's architectures) write ``RANDOM_WEIGHTS.json`` at the root of
their output folder. A model path at or under such a folder is a random-weights model; a hub
id, or a local path with no marker above it, is taken as released weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pipeline.core.tables import write_json

MARKER = "RANDOM_WEIGHTS.json"


def write_random_weights_marker(root: str | Path, builder: str, seed: int) -> Path:
    """Mark every model under ``root`` as built with seeded random weights by ``builder``."""
    return write_json({"builder": builder, "seed": seed,
                       "note": "random weights: numbers measured with these models test the code, not a model"},
                      Path(root) / MARKER)


def random_weights_root(path: str | Path | None) -> Path | None:
    """The marked folder ``path`` lies in (itself or a parent), or None (hub ids, unmarked paths)."""
    if path is None or not Path(path).exists():
        return None
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        if (folder / MARKER).is_file():
            return folder
    return None


def random_weight_models(paths: Iterable[str | Path | None]) -> list[str]:
    """The ``paths`` (as given, in order, once each) that are random-weights models."""
    out: list[str] = []
    for p in paths:
        if p is not None and str(p) not in out and random_weights_root(p) is not None:
            out.append(str(p))
    return out


def random_weights_flags(paths: Iterable[str | Path | None]) -> list[str]:
    """A summary's flag naming the ``paths`` that have random weights; [] when none has."""
    found = random_weight_models(paths)
    if not found:
        return []
    return [f"random_weights: {', '.join(found)} carry seeded random weights (built by demo_models or "
            f"rehearsal_models): the numbers test the pipeline, not a model"]
