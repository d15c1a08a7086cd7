"""``train.cache_text``: each caption's text conditioning computed once; the text encoders are frozen.

The text encoders never train here, so a caption's conditioning is the same at every step: SD1.x/2.x
the last hidden states ``(77, D)``; SDXL both encoders' penultimate states ``(77, 768 + 1280)`` and
the pooled embedding ``(1280,)`` (``conditioning.TextConditioner``). SDXL's ``time_ids`` belong to the
image and stay in the dataset. Each caption is encoded alone (batch 1), so with
``train.train_batch_size: 1`` the training is bit for bit the one without the cache.

Layout, under ``<out_dir>/text/<key>/`` (key: the files of the tokenizers and text encoders, the dtype),
``tensor_shards`` shards with rows keyed by the caption text: ``hidden`` (N, 77, D), SDXL ``pooled`` (N, P).

Bytes per caption: SD1.4 fp32 77 x 768 x 4 = 231 KiB; SDXL bf16 77 x 2048 x 2 + 1280 x 2 = 311 KiB.
The paper's 4,526 captions: 1.05 GB (SD1.4, fp32), 1.44 GB (SDXL, bf16).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import fingerprint
from pipeline.core.shards import file_digest
from pipeline.models.conditioning import TextConditioner
from pipeline.train.tensor_shards import ShardStore

log = logging.getLogger(__name__)

TEXT_PARTS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")


def text_cache_folder(out_dir: str | Path, pretrained: str, dtype: torch.dtype) -> Path:
    """``<out_dir>/text/<key>``: one cache per set of text encoders (their files, or the hub id) and dtype."""
    parts = [Path(pretrained) / p for p in TEXT_PARTS if (Path(pretrained) / p).is_dir()]
    ident = [file_digest(p) for p in parts] if parts else [pretrained]
    return Path(out_dir) / "text" / fingerprint(ident, str(dtype))


def read_text_cache(folder: str | Path) -> ShardStore:
    return ShardStore.read(folder, "captions")


@torch.no_grad()
def fill_text_cache(folder: str | Path, dataset, text: TextConditioner, device, rank: int = 0,
                    world: int = 1) -> ShardStore:
    """Encode the captions of ``dataset`` (a ``TokenComposeDataset``) not cached yet, one at a time;
    process ``rank`` of ``world`` takes its share."""
    cache = read_text_cache(folder)
    first = {}
    for ex in dataset.examples:
        first.setdefault((ex.caption,), ex)
    todo = cache.missing(list(first), rank, world)
    if not todo:
        return cache
    log.info("caching the text conditioning of %d caption(s) in %s", len(todo), cache.folder)

    def encode(key: tuple[str]) -> dict[str, torch.Tensor]:
        ids = dataset.conditioning(first[key], 0, 0)
        hidden, added = text({k: v[None] for k, v in ids.items()}, device)
        return {"hidden": hidden[0]} | ({"pooled": added["text_embeds"][0]} if added else {})

    return cache.append(todo, encode, desc="cache text")


class CachedTextDataset(torch.utils.data.Dataset):
    """The items of ``base`` (a dataset with ``examples``) with their caption's cached conditioning:
    ``text_hidden (77, D)`` and, for SDXL, ``text_pooled (P,)``; ``TextConditioner`` uses them."""

    def __init__(self, base, cache: ShardStore, sdxl: bool) -> None:
        self.base, self.cache = base, cache
        self.examples = base.examples
        self.names = ("hidden", "pooled") if sdxl else ("hidden",)
        missing = [ex.caption for ex in self.examples if (ex.caption,) not in cache.index]
        if missing:
            raise ValueError(f"{len(missing)} caption(s) are not in the text cache {cache.folder}, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.cache.get((self.examples[i].caption,), self.names)
        return {**self.base[i], **{f"text_{n}": t for n, t in row.items()}}
