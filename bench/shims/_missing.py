"""A name that raises ImportError when used: what a stand-in module hands out."""


def missing(package: str, name: str):
    class Missing:
        def __init__(self, *args, **kwargs):
            raise ImportError(f"{package}.{name}: {package} is not installed (a stand-in from bench/shims)")

    Missing.__name__ = name
    return Missing
