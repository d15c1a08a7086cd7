"""Seeded, batched, resumable generation on a tiny Stable Diffusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.evaluate.generation import (
    GenerationConfig,
    GenItem,
    draw,
    generate_images,
)
from pipeline.models.stable_diffusion import build_tiny_sd, load_sd_pipeline

CFG = GenerationConfig(steps=4, guidance_scale=7.5, resolution=32, batch_size=3)
ITEMS = [GenItem(f"{p}_{j}", f"a photo of a cat and a dog number {p}.", 1000 * p + j) for p in range(2)
         for j in range(2)]


@pytest.fixture(scope="module")
def sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("gen") / "sd", seed=0)


@pytest.fixture(scope="module")
def pipe(sd: Path):
    torch.set_num_threads(1)
    return load_sd_pipeline(str(sd), str(sd / "unet"), "cpu", CFG.dtype, CFG.scheduler)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_an_image_depends_on_its_seed_not_its_batch(pipe):
    alone = [np.asarray(draw(pipe, [it], CFG)[0], np.int16) for it in ITEMS[:3]]
    batched = [np.asarray(im, np.int16) for im in draw(pipe, ITEMS[:3], CFG)]
    for a, b in zip(alone, batched):
        assert np.abs(a - b).max() <= 2  # float noise of another batch shape, nothing more
    assert np.abs(alone[0] - alone[1]).mean() > 5  # other seeds give other images
    again = np.asarray(draw(pipe, [ITEMS[0]], CFG)[0], np.int16)
    assert (again == alone[0]).all()


def test_resume_draws_only_missing_or_unreadable_batches(pipe, tmp_path: Path):
    out = tmp_path / "imgs"
    first = generate_images(pipe, ITEMS, out, CFG)
    assert (first.generated, first.reused, first.unreadable) == (4, 0, [])
    before = {it.key: pixels(out / f"{it.key}.png") for it in ITEMS}
    stamp = (out / "1_1.png").stat().st_mtime_ns
    (out / "0_0.png").unlink()                       # batch 0 = items 0..2
    (out / "0_1.png").write_bytes(b"not a png")      # an unreadable file on disk
    report = generate_images(pipe, ITEMS, out, CFG)
    assert report.generated == 2 and report.reused == 2 and report.unreadable == ["0_1"]
    assert (out / "1_1.png").stat().st_mtime_ns == stamp  # batch 1 untouched
    for it in ITEMS:  # a whole batch is drawn again, so the redrawn images are the same bytes
        assert (pixels(out / f"{it.key}.png") == before[it.key]).all()
    assert not list(out.glob(".*.tmp"))
    third = generate_images(pipe, ITEMS, out, CFG)
    assert (third.generated, third.reused) == (0, 4)


def test_swapped_unet_is_used(sd: Path, pipe, tmp_path: Path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    unet.save_pretrained(tmp_path / "unet")
    other = load_sd_pipeline(str(sd), str(tmp_path / "unet"), "cpu", CFG.dtype, CFG.scheduler)
    a = np.asarray(draw(pipe, ITEMS[:1], CFG)[0], np.int16)
    b = np.asarray(draw(other, ITEMS[:1], CFG)[0], np.int16)
    assert np.abs(a - b).mean() > 1


def test_missing_unet_folder_is_a_clear_error(sd: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="UNet folder .*nowhere"):
        load_sd_pipeline(str(sd), str(tmp_path / "nowhere"), "cpu", CFG.dtype, CFG.scheduler)


def test_duplicate_keys_and_bad_config_are_refused(pipe, tmp_path: Path):
    with pytest.raises(ValueError, match="distinct keys"):
        generate_images(pipe, [ITEMS[0], ITEMS[0]], tmp_path, CFG)
    with pytest.raises(ValueError, match="multiple of 8"):
        GenerationConfig(resolution=30).validate()
