"""Stand-in (see bench/shims/README.md)."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(f"matplotlib.pyplot.{name}: matplotlib is not installed (a stand-in from bench/shims)")
