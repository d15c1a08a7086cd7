"""Stand-in for matplotlib (see bench/shims/README.md): importable, unusable."""

from . import collections, patches, pyplot, transforms  # noqa: F401  (``from matplotlib import transforms``)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(f"matplotlib.{name}: matplotlib is not installed (a stand-in from bench/shims)")
