"""Stand-in for matplotlib (see bench/shims/README.md): importable, unusable."""

from _missing import missing  # noqa: F401  (bench/shims is on sys.path whenever this is)


def __getattr__(name):
    raise ImportError(f"matplotlib.{name}: matplotlib is not installed (a stand-in from bench/shims)")
