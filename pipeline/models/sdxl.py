"""Stable Diffusion XL's UNet as released (``stabilityai/stable-diffusion-xl-base-1.0``, ``unet/config.json``).

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
