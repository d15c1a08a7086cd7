"""Tiny randomly initialised models for the demo profile, saved in their libraries' own formats.

``models/tiny/`` after ``build_tiny_models``::

    clip-tokenizer/            Stable Diffusion's CLIP tokenizer (real BPE vocabulary)
    bert/                      a small BERT + uncased WordPiece vocab (Grounding DINO's text encoder)
    groundingdino/config.py    groundingdino-py SLConfig with small layer counts
    groundingdino/groundingdino_tiny.pth   {"model": state_dict}, like groundingdino_swint_ogc.pth
    sam/config.json, sam/sam_tiny.pth      segment-anything classes, raw state dict like sam_vit_h_4b8939.pth
    sd/                        a diffusers Stable Diffusion folder (unet, vae, text_encoder,
                               tokenizer, scheduler), like CompVis/stable-diffusion-v1-4
    sdxl/                      a diffusers Stable Diffusion XL folder (two tokenizers and text encoders, a UNet
                               with SDXL's block layout and added time ids), like stable-diffusion-xl-base-1.0
    owlv2/, owlvit/            transformers detectors + processors, like google/owlv2-large-patch14-ensemble
                               and google/owlvit-base-patch32 (MultiGen, Object Accuracy)
    clip-vision/               a CLIP vision tower + image processor (the demo's FID features)
    clip/                      a CLIP image-text model + processor, like openai/clip-vit-large-patch14-336
                               (captions.select clip_best)

The stages load these through exactly the code that loads the real checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.provenance import write_random_weights_marker
from pipeline.core.tables import write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoModelsConfig:
    seed: int = 0
    out_dir: str = "models/tiny"


def build_tiny_models(cfg: DemoModelsConfig) -> dict[str, str]:
    """Build every tiny model into ``cfg.out_dir``; returns {name: path}."""
    from pipeline.models.clip_model import build_tiny_clip
    from pipeline.models.clip_tokenizer import build_clip_tokenizer
    from pipeline.models.clip_vision_tiny import build_tiny_clip_vision
    from pipeline.models.grounding_dino_tiny import build_tiny_grounding_dino
    from pipeline.models.owl_tiny import build_tiny_owlv2, build_tiny_owlvit
    from pipeline.models.sam import build_tiny_sam
    from pipeline.models.sdxl import build_tiny_sdxl
    from pipeline.models.stable_diffusion import build_tiny_sd

    out = Path(cfg.out_dir)
    paths: dict[str, str] = {"clip_tokenizer": str(build_clip_tokenizer(out / "clip-tokenizer"))}
    log.info("built the CLIP tokenizer")
    paths.update({k: str(v) for k, v in build_tiny_grounding_dino(out, cfg.seed).items()})
    log.info("built the tiny Grounding DINO")
    paths["sam"] = str(build_tiny_sam(out / "sam", cfg.seed))
    log.info("built the tiny SAM")
    paths["sd"] = str(build_tiny_sd(out / "sd", cfg.seed, tokenizer_dir=out / "clip-tokenizer"))
    paths["sdxl"] = str(build_tiny_sdxl(out / "sdxl", cfg.seed, tokenizer_dir=out / "clip-tokenizer"))
    log.info("built the tiny Stable Diffusion and Stable Diffusion XL")
    paths["owlv2"] = str(build_tiny_owlv2(out / "owlv2", cfg.seed, out / "clip-tokenizer"))
    paths["owlvit"] = str(build_tiny_owlvit(out / "owlvit", cfg.seed, out / "clip-tokenizer"))
    paths["clip_vision"] = str(build_tiny_clip_vision(out / "clip-vision", cfg.seed))
    paths["clip"] = str(build_tiny_clip(out / "clip", cfg.seed, out / "clip-tokenizer"))
    log.info("built the tiny OWLv2, OWL-ViT, CLIP vision and CLIP models")
    write_json({"seed": cfg.seed, "paths": paths}, out / "MANIFEST.json")
    write_random_weights_marker(out, "demo_models", cfg.seed)
    return paths
