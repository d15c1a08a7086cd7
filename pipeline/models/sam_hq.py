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

import dataclasses
import logging
from functools import partial
from pathlib import Path

import torch

from pipeline.core.tables import write_json

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
from segment_anything_hq.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoderHQ,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

HQ_MODEL_TYPES: tuple[str, ...] = ("hq_vit_h", "hq_vit_l", "hq_vit_b", "hq_tiny")
HQ_CHECKPOINT_NAME = "sam_hq_tiny.pth"
#: state-dict key prefixes only SAM-HQ has (its extra decoder token and feature fusion)
HQ_KEY_PREFIXES: tuple[str, ...] = (
    "mask_decoder.hf_token", "mask_decoder.hf_mlp", "mask_decoder.compress_vit_feat",
    "mask_decoder.embedding_encoder", "mask_decoder.embedding_maskfeature",
)

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def is_hq_state_dict(state: dict) -> bool:
    """Does the state dict hold SAM-HQ's extra decoder tensors?"""
    return any(k.startswith(HQ_KEY_PREFIXES) for k in state)


def build_sam_hq(arch) -> Sam:
    """A SAM-HQ with the numbers of ``arch`` (a ``pipeline.models.sam.SamArchitecture``)."""
    arch.validate()
    grid = arch.embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
            window_size=arch.encoder_window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
            vit_dim=arch.encoder_embed_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def build_official_hq(model_type: str) -> Sam:
    """The untrained official SAM-HQ ViT-H/L/B (``segment_anything_hq``'s registry)."""
    return hq_registry[model_type.removeprefix("hq_")](checkpoint=None)


def build_tiny_sam_hq(out_dir: str | Path, seed: int = 0, arch=None) -> Path:
    """Build, seed and save a tiny SAM-HQ; returns the checkpoint path.

    Writes ``out_dir/sam_hq_tiny.pth`` (a raw state dict, like the official checkpoints) and
    ``out_dir/config.json`` (the architecture, the seed and ``model_type: hq_tiny``).
    """
    from pipeline.models.sam import CONFIG_NAME, SamArchitecture

    arch = arch or SamArchitecture()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_hq(arch)
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    state = {k: v.detach().clone().contiguous() for k, v in sam.state_dict().items()}
    checkpoint = out_dir / HQ_CHECKPOINT_NAME
    tmp = out_dir / f".{HQ_CHECKPOINT_NAME}.tmp"
    try:
        torch.save(state, tmp)
        tmp.replace(checkpoint)
    finally:
        tmp.unlink(missing_ok=True)
    config = {"model_type": "hq_tiny", "seed": seed, **dataclasses.asdict(arch)}
    config["encoder_global_attn_indexes"] = list(arch.encoder_global_attn_indexes)
    write_json(config, out_dir / CONFIG_NAME)
    log.info("tiny SAM-HQ: %d parameters -> %s", sum(v.numel() for v in state.values()), checkpoint)
    return checkpoint
