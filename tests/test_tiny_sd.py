"""The tiny Stable Diffusion: a diffusers pipeline folder that loads like the real weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

from pipeline.models.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE
from pipeline.models.stable_diffusion import (
    SD_SCALING_FACTOR,
    TinySDConfig,
    build_tiny_sd,
    load_sd_components,
    vae_scale_factor,
)
from pipeline.train.attention import layer_resolutions

PARTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "sd", seed=0)


def test_folder_layout(tiny_sd: Path):
    index = json.loads((tiny_sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["safety_checker"] == [None, None]
    for part in PARTS:
        assert (tiny_sd / part).is_dir(), part
    for part in ("text_encoder", "vae", "unet"):
        assert list((tiny_sd / part).glob("*.safetensors")), part
    assert not list(tiny_sd.rglob("*.bin"))
    size = sum(f.stat().st_size for f in tiny_sd.rglob("*") if f.is_file())
    assert size < 20 * 2**20


def test_pipeline_generates_64px(tiny_sd: Path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 4
    out = pipe(
        "a photo of a cat and a dog",
        num_inference_steps=1,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3)
    assert np.isfinite(out.images).all()


def test_components_and_config(tiny_sd: Path):
    c = load_sd_components(str(tiny_sd))
    assert type(c.tokenizer).__name__ == "CLIPTokenizer"
    assert len(c.tokenizer) == VOCAB_SIZE
    assert c.tokenizer("a cat")["input_ids"] == [BOS_ID, 320, 2368, EOS_ID]
    te = c.text_encoder.config
    assert (te.vocab_size, te.hidden_size, te.num_hidden_layers, te.max_position_embeddings) == (VOCAB_SIZE, 32, 2, 77)
    assert vae_scale_factor(c.vae) == 4
    assert c.vae.config.latent_channels == 4
    assert math.isclose(c.vae.config.scaling_factor, SD_SCALING_FACTOR)
    u = c.unet.config
    assert u.sample_size == 16 and u.cross_attention_dim == 32 and u.in_channels == 4
    assert tuple(u.up_block_types) == ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    s = c.noise_scheduler.config
    assert (s.num_train_timesteps, s.beta_schedule, s.prediction_type) == (1000, "scaled_linear", "epsilon")
    assert math.isclose(s.beta_start, 0.00085) and math.isclose(s.beta_end, 0.012)
    assert type(UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")) is UNet2DConditionModel
    assert type(AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")) is AutoencoderKL


def test_layer_resolutions_match_the_forward_pass(tiny_sd: Path):
    c = load_sd_components(tiny_sd)
    supervised = layer_resolutions(c.unet, latent_size=16)
    assert list(supervised.values()) == [4, 8, 8, 16, 16]
    assert next(iter(supervised)).startswith("mid_block")
    assert list(layer_resolutions(c.unet, 16, ("up",)).values()) == [8, 8, 16, 16]
    # every block, down included, checked against the shapes of a real forward
    layers = {name.removesuffix(".processor"): side
              for name, side in layer_resolutions(c.unet, 16, ("down", "mid", "up")).items()}
    assert list(layers.values())[:2] == [16, 8]  # down_blocks.0, down_blocks.1
    seen: dict[str, tuple[int, ...]] = {}
    modules = dict(c.unet.named_modules())
    hooks = [
        modules[name].register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, tuple(out.shape)))
        for name in layers
    ]
    ids = c.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = c.text_encoder(ids)[0]
        c.unet(torch.randn(1, 4, 16, 16), torch.tensor([10]), encoder_hidden_states=text)
    for h in hooks:
        h.remove()
    assert list(seen) == list(layers)
    for name, side in layers.items():
        assert seen[name][1] == side * side, name


def test_deterministic(tmp_path: Path, tiny_sd: Path):
    other = build_tiny_sd(tmp_path / "again", seed=0, tokenizer_dir=tiny_sd / "tokenizer")
    different = build_tiny_sd(tmp_path / "seed1", seed=1, tokenizer_dir=tiny_sd / "tokenizer")
    for part, name in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a = (tiny_sd / part / name).read_bytes()
        assert a == (other / part / name).read_bytes(), part
        assert a != (different / part / name).read_bytes(), part
    assert (tiny_sd / "tokenizer" / "vocab.json").read_bytes() == (other / "tokenizer" / "vocab.json").read_bytes()


def test_global_rng_untouched(tmp_path: Path, tiny_sd: Path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_sd(tmp_path / "sd", seed=5, tokenizer_dir=tiny_sd / "tokenizer")
    assert torch.equal(torch.rand(3), expected)


def test_v_prediction_and_resolution(tmp_path: Path, tiny_sd: Path):
    cfg = TinySDConfig(resolution=96, prediction_type="v_prediction")
    out = build_tiny_sd(tmp_path / "v", seed=0, tokenizer_dir=tiny_sd / "tokenizer", config=cfg)
    c = load_sd_components(out)
    assert c.noise_scheduler.config.prediction_type == "v_prediction"
    assert c.unet.config.sample_size == 24
    assert list(layer_resolutions(c.unet, 24).values()) == [6, 12, 12, 24, 24]


@pytest.mark.parametrize(
    "kwargs",
    [{"prediction_type": "sample"}, {"resolution": 60}, {"unet_block_out_channels": (32, 64)}],
)
def test_bad_config(kwargs, tmp_path: Path):
    with pytest.raises(ValueError):
        build_tiny_sd(tmp_path / "bad", seed=0, config=TinySDConfig(**kwargs))


def test_load_missing_parts(tmp_path: Path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="not a Stable Diffusion pipeline folder"):
        load_sd_components(tmp_path)


def test_a_folder_of_another_architecture_stops_before_any_weight_loads(tiny_sd: Path, tmp_path: Path, monkeypatch):
    """An "SD2.1" folder (wider cross-attention, v-prediction) where the profile expects the tiny SD1-like model."""
    import diffusers

    from pipeline.models.stable_diffusion import (
        SDExpectation,
        check_sd_architecture,
        load_sd_pipeline,
    )

    other = build_tiny_sd(tmp_path / "sd-v", seed=0,
                          config=TinySDConfig(text_hidden_size=48, prediction_type="v_prediction"))
    expect = SDExpectation(cross_attention_dim=32, prediction_type="epsilon")
    load_sd_components(tiny_sd, expect=expect)                         # the right folder loads
    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded weights of a wrong model")))
    with pytest.raises(ValueError) as err:
        load_sd_components(other, expect=expect)
    msg = str(err.value)
    assert str(other / "unet" / "config.json") in msg
    assert "expects cross_attention_dim 32, prediction_type epsilon" in msg
    assert "found cross_attention_dim 48, prediction_type v_prediction" in msg
    # a fine-tuned UNet of another model swapped into the right pipeline (evaluate)
    with pytest.raises(ValueError, match=r"sd-v/unet/config.json .*found cross_attention_dim 48, prediction_type epsilon"):
        check_sd_architecture(tiny_sd, expect, (other / "unet",))
    with pytest.raises(ValueError, match="found cross_attention_dim 48"):
        load_sd_pipeline(str(tiny_sd), str(other / "unet"), "cpu", expect=expect)
    # the real SD1.4 / SD2.1 pairs are named
    sd14 = SDExpectation(cross_attention_dim=768, prediction_type="epsilon")
    assert "Stable Diffusion 2.x 768-v" in sd14.describe((1024, "v_prediction"))


def test_a_missing_model_folder_is_named(tmp_path: Path, monkeypatch):
    from pipeline.models.stable_diffusion import load_sd_pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match="Stable Diffusion folder models/sd14 not found"):
        load_sd_components("models/sd14")
    with pytest.raises(FileNotFoundError, match="Stable Diffusion folder models/sd14 not found"):
        load_sd_pipeline("models/sd14", None, "cpu")
