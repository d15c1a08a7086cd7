"""Per-token cross-attention heatmaps of generated samples.

``generation_attention`` runs a ``StableDiffusionPipeline`` once with :class:`AttentionCapture`
on its UNet and averages, over the denoising steps, the conditional branch's cross-attention
(heads and a resolution group's layers averaged) -> ``{r: (r*r, 77)}``. ``token_labels`` names
the prompt's real tokens, ``render_prompt_heatmaps`` draws one row (the sample, then one
heatmap per token over it, the token under it) and ``render_grid`` stacks rows under their
prompts::

    image, maps = generation_attention(pipe, prompt, seed=0, steps=50, guidance=7.5, resolution=512)
    row = render_prompt_heatmaps(image, maps, token_labels(pipe.tokenizer, prompt))
    render_grid([(prompt, row)]).save("heatmaps.png")

The captured layers compute attention explicitly (``AttnProcessor`` math) instead of the
default fused SDPA kernel, so a sample equals the uncaptured one up to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.train.attention import AttentionCapture, average_maps
from pipeline.train.heatmaps import CELL, colormap, noun_heatmap

log = logging.getLogger(__name__)

LABEL_H = 16  # pixels of the text strip under a row's cells and above a grid row (the title)
BACKGROUND = (20, 20, 20)
TEXT = (255, 255, 255)


@torch.no_grad()
def generation_attention(pipe, prompt: str, seed: int, steps: int, guidance: float, resolution: int,
                         blocks: Iterable[str] = ("mid", "up")) -> tuple[Image.Image, dict[int, torch.Tensor]]:
    """Generate one ``resolution`` x ``resolution`` sample of ``prompt`` and its cross-attention maps.

    The generator is ``torch.Generator("cpu").manual_seed(seed)``. After each UNet call (read in
    ``callback_on_step_end``) the maps of the conditional half of the UNet batch are kept: with
    classifier-free guidance (``pipe.do_classifier_free_guidance``: ``guidance > 1``) the batch
    is ``[uncond, cond]``, else it is ``cond`` only. Returns the PIL sample and
    ``{r: (r*r, 77)}`` float32 CPU maps: softmax probabilities over the 77 text positions,
    averaged over heads, the group's layers and the ``steps`` denoising steps (each row sums
    to 1). The UNet's attention processors are restored afterwards, also on error.
    """
    sums: dict[int, torch.Tensor] = {}
    calls = 0

    def on_step_end(p, i, t, callback_kwargs):
        nonlocal calls
        for r, probs in average_maps(capture.groups()).items():  # (B, Q, S)
            if p.do_classifier_free_guidance:
                probs = probs[probs.shape[0] // 2:]
            mean = probs.mean(0).cpu()  # (Q, S)
            sums[r] = sums[r] + mean if r in sums else mean
        capture.clear()
        calls += 1
        return {}

    generator = torch.Generator(device="cpu").manual_seed(seed)
    with AttentionCapture(pipe.unet, blocks=blocks) as capture:
        image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=resolution,
                     width=resolution, generator=generator, callback_on_step_end=on_step_end).images[0]
    if calls == 0:
        raise RuntimeError("the pipeline ran no denoising step; no attention was captured")
    log.debug("captured %d steps of %r at resolutions %s", calls, prompt, sorted(sums))
    return image, {r: s / calls for r, s in sums.items()}


def token_labels(tokenizer, prompt: str) -> list[tuple[int, str]]:
    """``(position in the 77-token sequence, decoded word piece)`` of the prompt's real tokens.

    Position 0 is the start token, so words start at 1; the end token and padding are left
    out, and so are tokens past the window (truncated as the pipeline truncates them).
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    if ids[0] != tokenizer.bos_token_id or ids[-1] != tokenizer.eos_token_id:
        raise ValueError(f"expected start and end tokens around the prompt, got ids {ids[:3]}...{ids[-3:]}")
    return [(i, tokenizer.decode([t]).strip()) for i, t in enumerate(ids[1:-1], start=1)]


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """``text`` cut (with "..") to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def render_prompt_heatmaps(image: Image.Image, maps: dict[int, torch.Tensor], labels: Sequence[tuple[int, str]],
                           cell: int = CELL) -> Image.Image:
    """One row: the sample, then each token's heatmap blended over it, the token's text under each.

    maps: ``{r: (r*r, 77)}`` (:func:`generation_attention`); labels: ``(position, text)``
    (:func:`token_labels`). A heatmap is :func:`~pipeline.train.heatmaps.noun_heatmap` of the
    token (groups upsampled and averaged, min-max normalised) through ``colormap``.
    Size: ``((1 + len(labels)) * cell, cell + LABEL_H)``.
    """
    font = ImageFont.load_default()
    row = Image.new("RGB", ((1 + len(labels)) * cell, cell + LABEL_H), BACKGROUND)
    draw = ImageDraw.Draw(row)
    sample = image.convert("RGB").resize((cell, cell), Image.BILINEAR)
    row.paste(sample, (0, 0))
    draw.text((2, cell + 2), _fit(draw, "sample", cell - 4, font), fill=TEXT, font=font)
    base = np.asarray(sample, np.float32)
    for j, (position, text) in enumerate(labels, start=1):
        heat = Image.fromarray(colormap(noun_heatmap(maps, [position])))
        if heat.size != (cell, cell):
            heat = heat.resize((cell, cell), Image.BILINEAR)
        blend = (0.45 * base + 0.55 * np.asarray(heat, np.float32)).astype(np.uint8)
        row.paste(Image.fromarray(blend), (j * cell, 0))
        draw.text((j * cell + 2, cell + 2), _fit(draw, f"{position}: {text}", cell - 4, font), fill=TEXT, font=font)
    return row


def render_grid(rows: Sequence[tuple[str, Image.Image]]) -> Image.Image:
    """Stack ``(prompt, row)`` pairs top to bottom, each row under a ``LABEL_H`` strip with its prompt.

    Size: ``(widest row, sum of (LABEL_H + row height))``; narrower rows are left-aligned.
    """
    if not rows:
        raise ValueError("no rows to stack")
    font = ImageFont.load_default()
    width = max(img.width for _, img in rows)
    grid = Image.new("RGB", (width, sum(LABEL_H + img.height for _, img in rows)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    y = 0
    for prompt, img in rows:
        draw.text((2, y + 2), _fit(draw, prompt, width - 4, font), fill=TEXT, font=font)
        grid.paste(img, (0, y + LABEL_H))
        y += LABEL_H + img.height
    return grid
