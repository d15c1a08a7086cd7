"""Stand-in (see bench/shims/README.md)."""

from _missing import missing

Polygon = missing("matplotlib.patches", "Polygon")
