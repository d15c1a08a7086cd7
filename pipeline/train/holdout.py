"""Held-out images: kept out of training, the attention share is measured on them."""

from __future__ import annotations

import torch

from pipeline.core.config import ConfigError
from pipeline.train.order import seeded_generator


def split_holdout(examples: list, n_images: int, seed: int, *, name: str = "train.holdout_images",
                  keep_training: bool = True) -> tuple[list, list]:
    """Keep ``n_images`` images (all their captions) out of training, chosen by a seeded permutation.

    ``keep_training=False`` (evaluation) allows holding out every image; the choice is the same.
    """
    if n_images <= 0:
        return list(examples), []
    images = sorted({e.image_id for e in examples})
    if n_images > len(images) or (keep_training and n_images == len(images)):
        left = "leaves no training image" if n_images == len(images) else "asks for more images than there are"
        raise ConfigError(f"{name}={n_images} {left} (there are {len(images)})")
    perm = torch.randperm(len(images), generator=seeded_generator(seed, -2)).tolist()
    held = {images[i] for i in perm[:n_images]}
    return [e for e in examples if e.image_id not in held], [e for e in examples if e.image_id in held]
