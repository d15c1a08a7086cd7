"""Device strings from params: ``auto | cpu | cuda | cuda:N``."""

from __future__ import annotations

import re

import torch

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` if a GPU is visible else ``"cpu"``; others are checked and returned.

    Asking for CUDA on a machine without it is an error, not a silent fallback to the CPU.
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N; got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        if ":" in device:
            index = int(device.split(":")[1])
            if index >= torch.cuda.device_count():
                raise RuntimeError(
                    f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
                )
    return device


def is_cuda(device: str | torch.device) -> bool:
    """Whether ``device`` (``"cuda"``, ``"cuda:1"``, a ``torch.device``) is a CUDA device."""
    return torch.device(device).type == "cuda"
