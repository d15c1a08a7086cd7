"""A tiny randomly initialised CLIP image encoder, saved as a transformers model folder.

``build_tiny_clip_vision(out_dir, seed)`` writes what a CLIP checkpoint's vision half holds::

    config.json                  CLIPVisionConfig: 32 px images, 8 px patches (16 tokens + CLS),
                                 hidden 32, 2 layers, 2 heads, projection to 16 dimensions
    model.safetensors            CLIPVisionModelWithProjection weights
    preprocessor_config.json     CLIPImageProcessor for 32 px (OpenAI CLIP mean / std)

so ``CLIPVisionModelWithProjection.from_pretrained(out_dir)`` and
``CLIPImageProcessor.from_pretrained(out_dir)`` load it through the same calls as real CLIP
weights. It stands in for CLIP in ``pipeline.evaluate.fid.FidMetric`` (FID in CLIP feature space) in
tests and the demo profile.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN_SIZE = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE_SIZE = 64
PROJECTION_DIM = 16


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """The tiny encoder's architecture (see the module docstring)."""
    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        projection_dim=PROJECTION_DIM,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def build_tiny_clip_vision(out_dir: str | Path, seed: int) -> Path:
    """Write a tiny random ``CLIPVisionModelWithProjection`` + ``CLIPImageProcessor`` to ``out_dir``.

    The same ``seed`` gives byte-identical weights (the global RNG state is restored afterwards).
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(tiny_clip_vision_config()).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor.save_pretrained(out_dir)
    log.info("tiny CLIP vision encoder (%d px, %d-d embeddings) written to %s in %.1f s",
             IMAGE_SIZE, PROJECTION_DIM, out_dir, time.perf_counter() - t0)
    return out_dir
