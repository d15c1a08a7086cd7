"""SAM-HQ (``segment-anything-hq``, the paper's segmenter): the architecture and its tiny twin.

SAM-HQ is SAM with a mask decoder that has one more output token (``MaskDecoderHQ``: the
``hf_token``, ``hf_mlp``, ``compress_vit_feat``, ``embedding_encoder``,
``embedding_maskfeature`` tensors) fed with the encoder's first global-attention block
features; its image encoder returns ``(embedding, interm_embeddings)``. The official
checkpoints (``sam_hq_vit_{h,l,b}.pth``) are raw state dicts of the whole model, loaded by
``pipeline.models.sam.load_sam`` through the same strict ``torch.load(weights_only=True)``
path as SAM's (model types ``hq_vit_h | hq_vit_l | hq_vit_b | hq_tiny``).

``build_tiny_sam_hq`` builds a SAM-HQ from the package's own classes with the numbers of the
tiny SAM (``SamArchitecture``) and seeded random weights, and saves ``sam_hq_tiny.pth`` +
``config.json`` (``model_type: hq_tiny``), like ``build_tiny_sam``.

``segment_anything_hq`` and ``segment_anything`` install side by side: different top-level
modules, no shared files, and neither imports the other (checked in tests). The one clash is
with timm: importing ``segment_anything_hq`` registers its own TinyViT (MobileSAM's encoder)
under timm's names ``tiny_vit_5m_224`` ... ``tiny_vit_21m_512``, replacing timm's models for
the whole process. ``import_segment_anything_hq`` imports it with timm's registry entries
saved and put back, so ``timm.create_model`` keeps meaning timm's models.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def import_segment_anything_hq():
    """Import ``segment_anything_hq`` without letting it overwrite timm's registered models."""
    import sys
    import warnings

    if "segment_anything_hq" in sys.modules:
        return sys.modules["segment_anything_hq"]
    import timm.models._registry as registry

    tables = [name for name in vars(registry) if name.startswith("_model") and isinstance(getattr(registry, name), dict)]
    saved = {name: dict(getattr(registry, name)) for name in tables}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Overwriting tiny_vit", category=UserWarning)
        import segment_anything_hq
    for name, before in saved.items():
        table = getattr(registry, name)
        for key, value in before.items():
            table[key] = value
    return segment_anything_hq


import_segment_anything_hq()
from segment_anything_hq import sam_model_registry as hq_registry  # noqa: E402

HQ_MODEL_TYPES: tuple[str, ...] = ("hq_vit_h", "hq_vit_l", "hq_vit_b", "hq_tiny")
#: state-dict key prefixes only SAM-HQ has (its extra decoder token and feature fusion)
HQ_KEY_PREFIXES: tuple[str, ...] = (
    "mask_decoder.hf_token", "mask_decoder.hf_mlp", "mask_decoder.compress_vit_feat",
    "mask_decoder.embedding_encoder", "mask_decoder.embedding_maskfeature",
)

def hq_modeling():
    """``segment_anything_hq.modeling`` (the classes SAM-HQ is built from)."""
    import segment_anything_hq.modeling

    return segment_anything_hq.modeling


def is_hq_state_dict(state: dict) -> bool:
    """Does the state dict hold SAM-HQ's extra decoder tensors?"""
    return any(k.startswith(HQ_KEY_PREFIXES) for k in state)


def build_official_hq(model_type: str) -> torch.nn.Module:
    """The untrained official SAM-HQ ViT-H/L/B (``segment_anything_hq``'s registry)."""
    return hq_registry[model_type.removeprefix("hq_")](checkpoint=None)


def build_tiny_sam_hq(out_dir: str | Path, seed: int = 0, arch=None) -> Path:
    """A tiny SAM-HQ (``sam_hq_tiny.pth`` + ``config.json``, ``model_type: hq_tiny``), as ``build_tiny_sam``."""
    from pipeline.models.sam import build_tiny_sam

    return build_tiny_sam(out_dir, seed, arch, hq=True)
