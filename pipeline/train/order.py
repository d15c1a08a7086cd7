"""The example stream: which dataset example sits at each global position, and seeded draws.

Epoch ``e`` is ``randperm(num_examples)`` from a generator seeded by ``(seed, e)``; the global
stream is the concatenation of epochs. Every random draw of an example (VAE posterior sample,
noise, timestep) comes from a generator keyed by its stream position, so training is a function
of (seed, step, position) only: the same on any number of processes, and after a resume.
"""

from __future__ import annotations

import hashlib

import torch


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and integer keys (stable across runs and layouts)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class ExampleOrder:
    """Stream position -> dataset index, epoch by epoch (cached permutations)."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise ValueError("no training examples")
        self.n, self.seed, self._perms = n, seed, {}

    def __call__(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(self.n, generator=seeded_generator(self.seed, -1, epoch)).tolist()
        return self._perms[epoch][i]
