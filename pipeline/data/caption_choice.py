"""One caption per image chosen by CLIP: ``captions.select: clip_best``.

TokenCompose's data preparation (``gen_noun_tgt.py``) scores every caption of an image with
OpenAI CLIP ``ViT-L/14@336px`` and keeps the one with the highest image-text logit (its softmax
argmax). Here: the same, with transformers' ``CLIPModel`` (``captions.clip_model``: hub id or
folder; the release's model is ``openai/clip-vit-large-patch14-336``), ties broken by the
smallest caption id, captions longer than CLIP's 77 tokens truncated (the release's
``clip.tokenize`` would stop there). The chosen caption's logit goes to the captions table's
``clip_score``. An image whose pixels CLIP cannot read rejects all its captions as ``clip_failed``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable, Sequence

from tqdm import tqdm

log = logging.getLogger(__name__)

CLIP_FAILED = "clip_failed"

#: (image path, the image's captions) -> one score per caption
Scorer = Callable[[str, Sequence[str]], list[float]]


def best_caption(scores: Sequence[float], caption_ids: Sequence[int]) -> int:
    """Position of the highest score; on a tie the smallest caption id."""
    if not scores or len(scores) != len(caption_ids):
        raise ValueError(f"{len(scores)} scores for {len(caption_ids)} captions")
    return max(range(len(scores)), key=lambda k: (scores[k], -caption_ids[k]))


def choose_by_clip(rows: Sequence[dict], score: Scorer, progress: bool = True
                   ) -> tuple[list[dict], dict[int, str], int]:
    """Kept caption rows (dicts with image_id, caption_id, path, caption) -> ``(chosen, failed,
    not_selected)``: one row per image with ``clip_score`` set, sorted by caption_id;
    ``failed``: caption_id -> detail for the captions of images CLIP could not score."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["caption_id"]):
        by_image[r["image_id"]].append(r)
    chosen: list[dict] = []
    failed: dict[int, str] = {}
    for group in tqdm(by_image.values(), desc="clip_best", unit="img", disable=not progress):
        try:
            scores = score(group[0]["path"], [r["caption"] for r in group])
        except Exception as e:  # noqa: BLE001 - an image CLIP cannot score is a recorded reject
            for r in group:
                failed[r["caption_id"]] = f"{group[0]['path']}: {type(e).__name__}: {e}"
            continue
        k = best_caption(scores, [r["caption_id"] for r in group])
        chosen.append({**group[k], "clip_score": float(scores[k])})
    not_selected = len(rows) - len(chosen) - len(failed)
    log.info("clip_best: %d images, %d captions not selected, %d rejected (%s)",
             len(chosen), not_selected, len(failed), CLIP_FAILED)
    return sorted(chosen, key=lambda r: r["caption_id"]), failed, not_selected


def clip_scorer(clip_model: str, device: str) -> Scorer:
    """Load the CLIP model now (a ConfigError before any work when it cannot load) and return a scorer."""
    from pipeline.core.images import load_rgb
    from pipeline.models.clip_model import image_text_logits, load_clip

    model, processor = load_clip(clip_model, device)

    def score(path: str, captions: Sequence[str]) -> list[float]:
        return image_text_logits(model, processor, load_rgb(path), captions, device)

    return score
