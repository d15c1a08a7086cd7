"""Per-token attention heatmaps of generated samples, on a tiny SD pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from pipeline.evaluate.prompt_heatmaps import (
    LABEL_H,
    generation_attention,
    render_grid,
    render_prompt_heatmaps,
    token_labels,
)
from pipeline.models.stable_diffusion import build_tiny_sd

PROMPT = "a photo of a cat and a dog."
GROUPS = (4, 8, 16)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> StableDiffusionPipeline:
    folder = build_tiny_sd(tmp_path_factory.mktemp("prompt_heatmaps") / "sd", seed=0)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def processors(pipe) -> dict[str, tuple[type, int]]:
    return {name: (type(p), id(p)) for name, p in pipe.unet.attn_processors.items()}


def test_token_labels(pipe):
    assert token_labels(pipe.tokenizer, PROMPT) == [
        (1, "a"), (2, "photo"), (3, "of"), (4, "a"), (5, "cat"), (6, "and"), (7, "a"), (8, "dog"), (9, "."),
    ]
    long = token_labels(pipe.tokenizer, " ".join(["cat"] * 100))
    assert long[0] == (1, "cat") and long[-1] == (75, "cat") and len(long) == 75


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_maps_are_averaged_probabilities(pipe, guidance):
    image, maps = generation_attention(pipe, PROMPT, seed=0, steps=3, guidance=guidance, resolution=64)
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    assert sorted(maps) == list(GROUPS)
    for r, m in maps.items():
        assert m.shape == (r * r, 77) and m.dtype == torch.float32 and m.device.type == "cpu"
        assert torch.allclose(m.sum(-1), torch.ones(r * r), atol=1e-5)
        assert (m >= 0).all()


def test_maps_come_from_the_conditional_branch(pipe):
    # one step: the first UNet call sees the same latents whatever the guidance, so the cond half
    # of the [uncond, cond] batch must give the maps of the cond-only run, not the "" prompt's
    _, cfg = generation_attention(pipe, PROMPT, seed=3, steps=1, guidance=7.5, resolution=64)
    _, cond = generation_attention(pipe, PROMPT, seed=3, steps=1, guidance=1.0, resolution=64)
    _, uncond = generation_attention(pipe, "", seed=3, steps=1, guidance=1.0, resolution=64)
    for r in GROUPS:
        assert torch.allclose(cfg[r], cond[r], atol=1e-6)
        assert not torch.allclose(cfg[r], uncond[r], atol=1e-4)


def test_capture_does_not_change_the_sample_and_restores_processors(pipe):
    before = processors(pipe)
    image, _ = generation_attention(pipe, PROMPT, seed=1, steps=3, guidance=7.5, resolution=64)
    assert processors(pipe) == before
    plain = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, height=64, width=64,
                 generator=torch.Generator(device="cpu").manual_seed(1)).images[0]
    # captured layers use explicit softmax attention instead of SDPA: equal up to float rounding
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(plain, np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_processors_restored_after_an_error(pipe, monkeypatch):
    before = processors(pipe)

    def fail(*args, **kwargs):
        raise RuntimeError("decoder broke")

    monkeypatch.setattr(pipe.vae, "decode", fail)
    with pytest.raises(RuntimeError, match="decoder broke"):
        generation_attention(pipe, PROMPT, seed=0, steps=2, guidance=7.5, resolution=64)
    assert processors(pipe) == before


@pytest.mark.parametrize("cell", [128, 48])
def test_render_sizes(pipe, cell):
    image, maps = generation_attention(pipe, PROMPT, seed=0, steps=2, guidance=7.5, resolution=64)
    labels = token_labels(pipe.tokenizer, PROMPT)
    row = render_prompt_heatmaps(image, maps, labels, cell=cell)
    assert row.size == ((1 + len(labels)) * cell, cell + LABEL_H) and row.mode == "RGB"
    cells = np.asarray(row)[:cell]
    assert not np.array_equal(cells[:, cell:2 * cell], cells[:, 5 * cell:6 * cell])  # "a" vs "cat" differ
    small = render_prompt_heatmaps(image, maps, labels[:2], cell=cell)
    grid = render_grid([(PROMPT, row), ("a cat", small)])
    assert grid.size == (row.width, 2 * LABEL_H + row.height + small.height)
    with pytest.raises(ValueError):
        render_grid([])
