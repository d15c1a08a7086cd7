"""Tiny randomly initialised OWL-ViT / OWLv2 detectors, saved like the hub checkpoints.

``build_tiny_owlv2(out_dir, seed, tokenizer_dir)`` and ``build_tiny_owlvit(...)`` write what
``google/owlv2-large-patch14-ensemble`` and ``google/owlvit-base-patch32`` hold on the hub::

    config.json, model.safetensors      Owlv2ForObjectDetection / OwlViTForObjectDetection
    preprocessor_config.json            Owlv2ImageProcessor / OwlViTImageProcessor (tiny image size)
    processor_config.json (if any)      the processor class
    vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                        SD's CLIP BPE vocabulary (49,408 ids) as the OWL tokenizer:
                                        pad token "!" (id 0), model_max_length 16

so :meth:`pipeline.evaluate.detection.Detector.load` loads them through the same ``from_pretrained``
calls as the real weights. The tokenizer settings are those of transformers' OWL conversion
scripts (``CLIPTokenizer.from_pretrained(..., pad_token="!", model_max_length=16)``): the
processors pad every query to 16 tokens with id 0, and the detection head treats a query
whose first id is 0 as padding.

Architecture (both kinds): text and vision towers of width 32, 2 layers, 2 heads; 64 px
input, patch 16, so a 4 x 4 grid and 16 predicted boxes per image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPTokenizerFast,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    OwlViTConfig,
    OwlViTForObjectDetection,
    OwlViTImageProcessor,
    OwlViTProcessor,
)

from pipeline.core.tables import write_json
from pipeline.models.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

log = logging.getLogger(__name__)

#: The OWL text length (the hub tokenizers' ``model_max_length``; the processors pad to it).
OWL_MAX_TEXT_LEN = 16
OWL_PAD_TOKEN = "!"  # id 0
OWL_PAD_ID = 0


@dataclass(frozen=True)
class TinyOwlConfig:
    """Architecture numbers shared by the tiny OWL-ViT and OWLv2."""

    image_size: int = 64
    patch_size: int = 16
    hidden_size: int = 32
    intermediate_size: int = 64
    layers: int = 2
    heads: int = 2
    projection_dim: int = 32

    @property
    def num_patches(self) -> int:
        """Boxes predicted per image: one per patch of the (image_size / patch_size)^2 grid."""
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        if self.image_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a positive multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.heads} heads")


def _config_dicts(cfg: TinyOwlConfig) -> tuple[dict, dict]:
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": OWL_MAX_TEXT_LEN,
        "pad_token_id": OWL_PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
    vision = {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
    }
    return text, vision


def _owl_tokenizer(tokenizer_dir: str | Path) -> CLIPTokenizerFast:
    """SD's CLIP tokenizer from ``tokenizer_dir`` re-configured as OWL's (pad "!", 16 tokens)."""
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "vocab.json").is_file():
        raise FileNotFoundError(f"no CLIP tokenizer (vocab.json) in {tokenizer_dir}")
    tok = CLIPTokenizerFast.from_pretrained(
        tokenizer_dir, pad_token=OWL_PAD_TOKEN, model_max_length=OWL_MAX_TEXT_LEN
    )
    if len(tok) != VOCAB_SIZE or tok.pad_token_id != OWL_PAD_ID or tok.eos_token_id != EOS_ID:
        raise ValueError(f"{tokenizer_dir}: not SD's CLIP tokenizer ({len(tok)} ids, pad id {tok.pad_token_id})")
    return tok


def _reset_heads(model: Owlv2ForObjectDetection) -> None:
    """Give OWLv2's detection heads PyTorch's default Linear init (uniform, bound 1/sqrt(fan_in)).

    ``Owlv2PreTrainedModel._init_weights`` draws their weights with std 1.0, so a random
    model's box logits reach +-100 (every box degenerate) and its class scores saturate at
    0 or 1; OWL-ViT's heads keep the default init and give boxes near their patch and
    scores spread around 0.5, which is what the tests need.
    """
    for head in (model.class_head, model.box_head, model.objectness_head):
        for module in head.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()


def _build(kind: str, out_dir: str | Path, seed: int, tokenizer_dir: str | Path, config: TinyOwlConfig | None) -> Path:
    cfg = config or TinyOwlConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    text, vision = _config_dicts(cfg)
    size = {"height": cfg.image_size, "width": cfg.image_size}
    tokenizer = _owl_tokenizer(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "owlv2":
            model = Owlv2ForObjectDetection(
                Owlv2Config(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
            )
            _reset_heads(model)
            processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size=size), tokenizer=tokenizer)
        else:
            model = OwlViTForObjectDetection(
                OwlViTConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
            )
            processor = OwlViTProcessor(
                image_processor=OwlViTImageProcessor(size=size, crop_size=size), tokenizer=tokenizer
            )
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    write_json({"seed": seed, "kind": kind, "config": asdict(cfg)}, out_dir / "tiny_owl.json")
    log.info(
        "tiny %s (%d px, %d boxes) written to %s in %.1f s",
        kind,
        cfg.image_size,
        cfg.num_patches,
        out_dir,
        time.perf_counter() - t0,
    )
    return out_dir


def build_tiny_owlv2(
    out_dir: str | Path, seed: int, tokenizer_dir: str | Path, config: TinyOwlConfig | None = None
) -> Path:
    """Write a tiny random ``Owlv2ForObjectDetection`` + ``Owlv2Processor`` folder; return it.

    ``tokenizer_dir``: a folder holding SD's CLIP tokenizer (``build_clip_tokenizer``'s output).
    The same ``seed`` and ``config`` give byte-identical weights; the global RNG is left as it was.
    """
    return _build("owlv2", out_dir, seed, tokenizer_dir, config)


def build_tiny_owlvit(
    out_dir: str | Path, seed: int, tokenizer_dir: str | Path, config: TinyOwlConfig | None = None
) -> Path:
    """Write a tiny random ``OwlViTForObjectDetection`` + ``OwlViTProcessor`` folder; return it.

    As :func:`build_tiny_owlv2`; the image processor resizes (and centre-crops, a no-op) to a
    square without keeping the aspect ratio, as ``google/owlvit-base-patch32``'s does.
    """
    return _build("owlvit", out_dir, seed, tokenizer_dir, config)
