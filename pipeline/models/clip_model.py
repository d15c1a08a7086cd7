"""CLIP image-text models (transformers ``CLIPModel`` + ``CLIPProcessor``): loading, scoring, a tiny one.

TokenCompose's data preparation picks each image's caption with OpenAI CLIP ``ViT-L/14@336px``
(``openai/clip-vit-large-patch14-336`` in transformers). ``load_clip`` loads that (or any CLIP)
by hub id or folder; ``image_text_logits`` gives ``logits_per_image`` for one image and its
captions. ``build_tiny_clip(out_dir, seed, tokenizer_dir)`` writes a tiny random CLIP with
Stable Diffusion's real BPE tokenizer::

    config.json, model.safetensors     CLIPModel: text (hidden 32, 2 layers) + vision (32 px,
                                       8 px patches, hidden 32, 2 layers), projection 16
    preprocessor_config.json, tokenizer files      CLIPProcessor

so the demo and the tests load it through the same calls as the real weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from pipeline.core.config import ConfigError

log = logging.getLogger(__name__)

CLIP_MAX_TOKENS = 77  # captions longer than CLIP's context are truncated (OpenAI's clip.tokenize raises)


def build_tiny_clip(out_dir: str | Path, seed: int, tokenizer_dir: str | Path) -> Path:
    """Write a tiny random ``CLIPModel`` + ``CLIPProcessor`` to ``out_dir``; same seed, same bytes."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from pipeline.models.clip_tokenizer import load_clip_tokenizer
    from pipeline.models.clip_vision_tiny import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, tiny_clip_vision_config

    out_dir = Path(out_dir)
    tokenizer = load_clip_tokenizer(tokenizer_dir, fast=True)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CLIP_MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=text, vision_config=tiny_clip_vision_config().to_dict(), projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    from transformers import CLIPImageProcessor

    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    log.info("tiny CLIP written to %s", out_dir)
    return out_dir


def load_clip(name_or_path: str, device: str):
    """``(model, processor)`` from a hub id or folder; a clear ConfigError when it cannot load."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name_or_path).eval().requires_grad_(False).to(device)
        processor = CLIPProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"captions.clip_model {name_or_path!r} does not load as a CLIP model "
                          f"(transformers CLIPModel + CLIPProcessor, a folder or a hub id): {e}") from e
    return model, processor


@torch.inference_mode()
def image_text_logits(model, processor, image: Image.Image, captions: Sequence[str], device: str) -> list[float]:
    """CLIP's ``logits_per_image`` (scaled cosine similarity) of one RGB image with each caption."""
    if not captions:
        raise ValueError("no captions to score")
    inputs = processor(text=list(captions), images=image, return_tensors="pt", padding=True, truncation=True,
                       max_length=CLIP_MAX_TOKENS)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits = model(**inputs).logits_per_image  # (1, len(captions))
    return [float(v) for v in logits[0].float().cpu()]
