"""Stand-in for OpenCV (see bench/shims/README.md): importable, unusable."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(f"cv2.{name}: OpenCV is not installed (a stand-in from bench/shims)")
