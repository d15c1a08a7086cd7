"""Stand-in (see bench/shims/README.md)."""

from _missing import missing

PatchCollection = missing("matplotlib.collections", "PatchCollection")
