"""``train.cache_latents``: each training image is VAE-encoded once, not at every step.

The official transform has no random augmentation (shorter side resized to R, centre crop),
so an image's VAE posterior ``N(mean, std^2)`` is the same at every step. The cache keeps the
posterior's mean and std, not a sample: the loop still draws ``mean + std * eps`` with the
generator of (seed, step position) (``step._draws``), so every example's draw is the same
function of (seed, step, position) as without the cache. Each image is encoded alone (batch 1),
so a run with ``train.train_batch_size: 1`` gives the very same losses and weights with and
without the cache; with larger micro-batches they agree up to the last float bits (a batched
VAE forward sums in another order).

Layout, under ``<out_dir>/latents/<key>/`` (key: the VAE's files, R, the dtype)::

    part-<digest>.safetensors "mean", "std": (N, C, R/8, R/8) in the VAE's dtype; metadata
                             "images": JSON [[image path, file digest], ...] of its N rows

Bytes per image, fp32 (4 latent channels): 2 x 4 x 64 x 64 x 4 = 128 KiB at 512 px, 512 KiB at
1024 px (SDXL); half that in bf16/fp16. The paper's 4,526 images: 0.59 GB at 512 px (2.4 GB at
1024 px); all 118,287 COCO train2017 images: 15.5 GB at 512 px. A changed image (another file
digest) or a new one is encoded again into a new shard; shards are read lazily (memory-mapped).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import fingerprint
from pipeline.core.shards import file_digest
from pipeline.train.dataset import TokenComposeDataset, collate, noun_masks
from pipeline.train.tensor_shards import ShardStore

log = logging.getLogger(__name__)


def cache_folder(out_dir: str | Path, pretrained: str, resolution: int, dtype: torch.dtype) -> Path:
    """``<out_dir>/latents/<key>``: one cache per VAE (its files, or the hub id), resolution and dtype."""
    vae = Path(pretrained) / "vae"
    vae_id = file_digest(vae) if vae.is_dir() else pretrained
    return Path(out_dir) / "latents" / fingerprint(vae_id, resolution, str(dtype), "center-crop")


def read_cache(folder: str | Path) -> ShardStore:
    """The latent cache in ``folder``: rows keyed by ``(image path, file digest)``."""
    return ShardStore.read(folder, "images")


@torch.no_grad()
def fill_cache(folder: str | Path, dataset: TokenComposeDataset, vae, device, rank: int = 0,
               world: int = 1) -> ShardStore:
    """Encode the images of ``dataset`` not in the cache yet (one at a time, in the VAE's dtype) into new
    shards; process ``rank`` of ``world`` takes its share (``ShardStore.missing``), so no process waits
    on another's work."""
    cache = read_cache(folder)
    first = {}
    for i, ex in enumerate(dataset.examples):
        first.setdefault((str(ex.image_path), file_digest(ex.image_path)), i)
    todo = cache.missing(list(first), rank, world)
    if not todo:
        return cache
    log.info("caching the VAE posteriors of %d image(s) in %s", len(todo), cache.folder)

    def posterior(key: tuple[str, str]) -> dict[str, torch.Tensor]:
        dist = vae.encode(dataset[first[key]]["pixel_values"][None].to(device, dtype=vae.dtype)).latent_dist
        return {"mean": dist.mean[0], "std": dist.std[0]}

    return cache.append(todo, posterior, desc="cache latents")


class CachedLatentsDataset(torch.utils.data.Dataset):
    """``TokenComposeDataset``'s items with the image's cached posterior (``latent_mean``,
    ``latent_std``) instead of its pixels: no image is decoded. Masks as the base dataset makes
    them (centre crop, the same offsets: ``noun_masks`` crops the resized mask like its image)."""

    def __init__(self, base: TokenComposeDataset, cache: ShardStore) -> None:
        if not base.center_crop:
            raise ValueError("cached latents need the centre crop: a random crop changes the image every step")
        self.base, self.cache = base, cache
        self.examples = base.examples
        self.digests = [file_digest(ex.image_path) for ex in base.examples]
        missing = [str(ex.image_path) for ex, d in zip(self.examples, self.digests)
                   if (str(ex.image_path), d) not in cache.index]
        if missing:
            raise ValueError(f"{len(missing)} image(s) are not in the latent cache {cache.folder}, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        row = self.cache.get((str(ex.image_path), self.digests[i]), ("mean", "std"))
        return {
            "latent_mean": row["mean"],
            "latent_std": row["std"],
            **self.base.conditioning(ex, *self.base.center_crop_box(ex)),
            "masks": noun_masks(ex.nouns, self.base.resolution, self.base.latent_resolutions, crop=None),
            "token_indices": [list(n.token_indices) for n in ex.nouns],
            "noun_ids": [n.noun_id for n in ex.nouns],
            "caption_id": ex.caption_id,
        }


def collate_cached(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``dataset.collate`` of cached items: ``latent_mean`` / ``latent_std`` ``(B, C, h, w)``, no pixels."""
    out = collate([{**item, "pixel_values": torch.empty(0)} for item in batch])
    del out["pixel_values"]
    out["latent_mean"] = torch.stack([item["latent_mean"] for item in batch])
    out["latent_std"] = torch.stack([item["latent_std"] for item in batch])
    return out
