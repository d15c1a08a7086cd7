"""Params section ``demo_data``: the generator's settings and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import ConfigError

MAX_CAPTIONS_PER_IMAGE = 10


@dataclass(frozen=True)
class DemoDataConfig:
    """Params section ``demo_data``."""

    seed: int
    num_images: int
    min_size: int
    max_size: int
    captions_per_image: int
    out_dir: str

    def validate(self) -> None:
        if self.num_images < 1:
            raise ConfigError(f"demo_data.num_images must be >= 1, got {self.num_images}")
        if self.min_size < 64:
            raise ConfigError(f"demo_data.min_size must be >= 64, got {self.min_size}")
        if self.min_size > self.max_size:
            raise ConfigError(
                f"demo_data.min_size ({self.min_size}) must be <= max_size ({self.max_size})"
            )
        if self.max_size > 4096:
            raise ConfigError(f"demo_data.max_size must be <= 4096, got {self.max_size}")
        if not 1 <= self.captions_per_image <= MAX_CAPTIONS_PER_IMAGE:
            raise ConfigError(
                f"demo_data.captions_per_image must be in [1, {MAX_CAPTIONS_PER_IMAGE}], "
                f"got {self.captions_per_image}"
            )
        if self.seed < 0:
            raise ConfigError(f"demo_data.seed must be >= 0, got {self.seed}")
        if not self.out_dir:
            raise ConfigError("demo_data.out_dir must not be empty")
