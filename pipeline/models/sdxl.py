"""Stable Diffusion XL: the released UNet's layout, its conditioning, a tiny random twin.

The train and evaluate stages run SDXL through the same loaders as SD1.x/2.x
(``stable_diffusion.load_sd_components`` / ``load_sd_pipeline``, ``conditioning.TextConditioner``). Here:
:data:`SDXL_BASE_UNET` and :func:`meta_unet` (the supervised groups below),
:func:`add_time_ids` and :func:`encode_sdxl_text` (SDXL's added conditioning, as diffusers'
``train_text_to_image_sdxl.py`` and the pipeline's ``encode_prompt``), :func:`bigg_position_mismatches`
(token indices of the ViT-L tokenizer against OpenCLIP bigG's) and :func:`build_tiny_sdxl`.

``SDXL_BASE_UNET``: ``stabilityai/stable-diffusion-xl-base-1.0``'s ``unet/config.json``.

The numbers below are the release's UNet config; :func:`meta_unet` builds that UNet on the meta
device (no weights, no download). The cross-attention layers TokenCompose would supervise, with
``pipeline.train.attention.layer_resolutions``'s rule (mid and up ``attn2``, grouped by the side
of their map; ``tests/test_lora.py`` checks this table), at 1024 px (latent 128): 46 layers in
two groups::

    32 x 32   40 layers: mid_block (1 transformer of 10 blocks) + up_blocks.0 (3 transformers x 10 blocks)
    64 x 64    6 layers: up_blocks.1 (3 transformers x 2 blocks)

(up_blocks.2 at 128 x 128 has no attention, nor has down_blocks.0.) SD1.4 at 512 px has 10
layers in four groups (8, 16, 32, 64): SDXL puts most of its cross-attention at 32 x 32.
"""

from __future__ import annotations

from typing import Any

SDXL_BASE_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False, block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
#: SDXL's training and generation side, and the VAE downsampling
SDXL_RESOLUTION = 1024
VAE_FACTOR = 8


def meta_unet(config: dict[str, Any] | None = None):
    """SDXL's UNet (or another config) built on the meta device: its layout, no weights, no download."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**(config or SDXL_BASE_UNET))


def bigg_position_mismatches(tokenizer, captions: list[str]) -> list[tuple[str, int]]:
    """Captions whose token positions differ between SD's CLIP ViT-L tokenizer and OpenCLIP's (ViT-bigG's).

    SDXL's second text encoder takes OpenCLIP's tokens: the same BPE vocabulary, start and end
    tokens, but padding with id 0 (``"!"``) where the ViT-L tokenizer repeats the end token (49407).
    Token indices are computed with the ViT-L tokenizer; they hold for both encoders when every
    position up to and including the end token agrees, which is what is compared here (padding is
    never a supervised position). Returns ``(caption, first differing position)`` pairs.
    """
    import open_clip

    ours = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    theirs = open_clip.tokenize(captions, context_length=77)
    out = []
    for caption, a, b in zip(captions, ours.tolist(), theirs.tolist()):
        end = a.index(tokenizer.eos_token_id) + 1
        if a[:end] != b[:end] or any(b[end:]):
            out.append((caption, next((i for i in range(77) if a[i] != b[i] and i < end), end)))
    return out


def add_time_ids(width: int, height: int, resolution: int) -> list[int]:
    """SDXL's ``add_time_ids`` of one training image, as diffusers' ``train_text_to_image_sdxl.py``
    computes them: ``original_size (h, w) + crop_top_left (top, left) + target_size (R, R)``, where
    the image's shorter side is resized to R (torchvision's rule: the longer side becomes
    ``int(R * long / short)``) and the R x R crop is centred (``round((side - R) / 2)``)."""
    if min(width, height) <= 0 or resolution <= 0:
        raise ValueError(f"image {width} x {height} and resolution {resolution} must be positive")
    short, long = min(width, height), max(width, height)
    new_long = int(resolution * long / short)
    new_w, new_h = (resolution, new_long) if width <= height else (new_long, resolution)
    top, left = round((new_h - resolution) / 2.0), round((new_w - resolution) / 2.0)
    return [height, width, top, left, resolution, resolution]


def encode_sdxl_text(text_encoders, input_ids: list) -> tuple:
    """SDXL's text conditioning as its pipeline's ``encode_prompt``: each encoder's penultimate hidden
    states ``(B, 77, D_i)`` concatenated to ``(B, 77, D_1 + D_2)``, and the pooled, projected output
    of the last encoder ``(B, P)``. ``input_ids``: one ``(B, 77)`` tensor per encoder (its own tokenizer's)."""
    import torch

    hidden, pooled = [], None
    for encoder, ids in zip(text_encoders, input_ids):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def build_tiny_sdxl(out_dir, seed: int, resolution: int = 64, tokenizer_dir=None):
    """A tiny random SDXL folder in the release's layout (``StableDiffusionXLPipeline.save_pretrained``)::

        tokenizer/, tokenizer_2/     SD's CLIP tokenizer; the second pads with "!" (id 0) as OpenCLIP does
        text_encoder/                CLIPTextModel, hidden 32
        text_encoder_2/              CLIPTextModelWithProjection, hidden 32, projection 32 (the pooled embedding)
        vae/, scheduler/             the tiny SD's VAE (downsampling 4); EulerDiscreteScheduler with SD's betas
        unet/                        SDXL's block layout (Down, CrossAttnDown x2 / CrossAttnUp x2, Up), cross-attention
                                     64 = 32 + 32, addition_embed_type text_time (6 time ids x 8 + 32 pooled)
    """
    from pathlib import Path

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from pipeline.models.clip_tokenizer import build_clip_tokenizer
    from pipeline.models.stable_diffusion import TinySDConfig, _text_encoder, _vae, sd_noise_scheduler

    out = Path(out_dir)
    cfg = TinySDConfig(resolution=resolution)
    cfg.validate()
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else build_clip_tokenizer(out / ".tokenizer",
                                                                                          save_fast=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _text_encoder(cfg)
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(text_encoder.config)
        torch.manual_seed(seed + 2)
        vae = _vae(cfg)
        torch.manual_seed(seed + 3)
        unet = UNet2DConditionModel(
            sample_size=cfg.latent_size, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=cfg.unet_block_out_channels, layers_per_block=1, norm_num_groups=8,
            cross_attention_dim=2 * cfg.text_hidden_size, attention_head_dim=8, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=cfg.text_hidden_size + 6 * 8)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir), tokenizer_2=CLIPTokenizer.from_pretrained(tok_dir, pad_token="!"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(sd_noise_scheduler().config))
    pipe.save_pretrained(out, safe_serialization=True)
    if tokenizer_dir is None:
        import shutil

        shutil.rmtree(tok_dir)
    return out
