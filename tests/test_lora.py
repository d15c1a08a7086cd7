"""LoRA (``train.adapter: lora``): attention through the adapter, its files, and bad input.

The stage itself (train, checkpoint, resume, evaluate's loading) runs in tests/test_train.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.models.lora import LORA_WEIGHTS, entry_kind
from pipeline.models.stable_diffusion import TinySDConfig, _unet, build_tiny_sd, check_sd_architecture, load_sd_pipeline
from pipeline.train.adapter import check_lora_targets, load_trained, prepare_trainable, save_trained
from pipeline.train.attention import AttentionCapture
from pipeline.train.config import TrainConfig, trained_settings
from pipeline.train.runs import RunIdentity

LORA = TrainConfig(adapter="lora", lora_rank=4, lora_alpha=8.0, seed=3)


def tiny_unet():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _unet(TinySDConfig())


def inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 700]), torch.randn(2, 77, 32, generator=g))


def lora_unet(cfg: TrainConfig = LORA, scale: float = 0.3):
    """The tiny UNet with a LoRA whose up matrices are moved off zero (as training would)."""
    unet = tiny_unet()
    trainable = prepare_trainable(unet, cfg, "cpu", torch.float32)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return unet, trainable


def merged_unet(wrapped) -> torch.nn.Module:
    """A plain UNet whose Linear weights are W + (alpha / r) * B @ A of ``wrapped``'s LoRA layers."""
    plain = tiny_unet()
    state = plain.state_dict()
    scale = LORA.lora_alpha / LORA.lora_rank
    for name, module in wrapped.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            delta = module.lora_B["default"].weight @ module.lora_A["default"].weight
            state[f"{name}.weight"] = module.base_layer.weight + scale * delta
    plain.load_state_dict(state)
    return plain


def captured(unet) -> dict[str, torch.Tensor]:
    with torch.no_grad(), AttentionCapture(unet, blocks=("mid", "up")) as capture:
        unet(*inputs())
        return {m.name: m.probs.clone() for m in capture.maps}


def test_captured_maps_through_the_lora_equal_those_of_the_merged_unet():
    unet, trainable = lora_unet()
    merged = merged_unet(unet)
    a, b = captured(unet), captured(merged)
    assert a.keys() == b.keys() and len(a) == 5
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)  # float sums in another order
    assert max(float((a[n] - captured(tiny_unet())[n]).abs().max()) for n in a) > 1e-3  # the LoRA moved them
    # only the LoRA trains, in fp32; the base is frozen
    names = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names) and len(trainable) == len(names)
    assert all(p.dtype == torch.float32 for p in trainable)


def test_a_fresh_lora_is_the_base_model_and_its_init_follows_the_seed():
    base = tiny_unet()
    unet, _ = lora_unet(scale=0.0)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(unet(*x).sample, base(*x).sample, atol=0, rtol=0)
    again, _ = lora_unet(scale=0.0)
    other, _ = lora_unet(dataclasses.replace(LORA, seed=4), scale=0.0)
    a = {k: v for k, v in unet.state_dict().items() if "lora_A" in k}
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in a.items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in a.items())


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "sd", seed=0)


def test_saved_lora_loads_back_and_into_the_pipeline_with_load_lora_weights(tiny_sd: Path, tmp_path: Path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    cfg = dataclasses.replace(LORA, pretrained=str(tiny_sd))
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    prepare_trainable(unet, cfg, "cpu", torch.float32)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    folder = save_trained(unet, tmp_path / "lora", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", LORA_WEIGHTS]
    marker = json.loads((folder / "adapter.json").read_text())
    assert marker["rank"] == 4 and marker["alpha"] == 8.0 and marker["base"] == str(tiny_sd)
    assert entry_kind(folder) == "lora" and entry_kind(folder / LORA_WEIGHTS) == "lora"
    assert entry_kind(tiny_sd / "unet") == "unet"
    x = inputs()
    with torch.no_grad():
        want = unet(*x).sample
        # resume: into a freshly prepared UNet
        fresh = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
        prepare_trainable(fresh, dataclasses.replace(cfg, seed=9), "cpu", torch.float32)
        load_trained(fresh, folder, cfg)
        torch.testing.assert_close(fresh(*x).sample, want, atol=1e-6, rtol=1e-5)
        # the user's way: the base pipeline + load_lora_weights (alpha != rank comes from the metadata)
        pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
        pipe.load_lora_weights(folder)
        torch.testing.assert_close(pipe.unet(*x).sample, want, atol=1e-6, rtol=1e-5)
        # evaluate's loader takes the folder or the file as a model entry
        for entry in (folder, folder / LORA_WEIGHTS):
            pipe = load_sd_pipeline(str(tiny_sd), str(entry), "cpu")
            torch.testing.assert_close(pipe.unet(*x).sample, want, atol=1e-6, rtol=1e-5)
    # the reverse: a LoRA where a UNet folder is expected (and a UNet where a LoRA is)
    with pytest.raises(ValueError, match=r"train.adapter is full, so a UNet folder was expected; found a LoRA"):
        load_trained(UNet2DConditionModel.from_pretrained(tiny_sd / "unet"), folder, TrainConfig())
    with pytest.raises(ValueError, match=r"train.adapter is lora, so a LoRA .* was expected; found a UNet folder"):
        load_trained(fresh, tiny_sd / "unet", cfg)


def test_bad_lora_input_is_named_before_any_weight_loads(tiny_sd: Path, tmp_path: Path, monkeypatch):
    import diffusers
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    cfg = dataclasses.replace(LORA, pretrained=str(tiny_sd))
    prepare_trainable(unet, cfg, "cpu", torch.float32)
    mine = save_trained(unet, tmp_path / "mine", cfg)
    # a LoRA trained on another base model (text width 48): with and without adapter.json
    other_sd = build_tiny_sd(tmp_path / "other", seed=0, config=TinySDConfig(text_hidden_size=48))
    other = UNet2DConditionModel.from_pretrained(other_sd / "unet")
    prepare_trainable(other, dataclasses.replace(cfg, pretrained=str(other_sd)), "cpu", torch.float32)
    foreign = save_trained(other, tmp_path / "foreign", dataclasses.replace(cfg, pretrained=str(other_sd)))
    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded weights before the check")))
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded weights before the check")))
    with pytest.raises(ValueError, match=r"foreign/pytorch_lora_weights.safetensors was trained on .*other.*"
                                         r"cross_attention_dim: LoRA 48, base 32"):
        load_sd_pipeline(str(tiny_sd), str(foreign), "cpu")
    (foreign / "adapter.json").unlink()  # a LoRA made elsewhere: the cross-attention widths tell
    with pytest.raises(ValueError, match=r"attn2.to_k.* takes 48-wide text features; the base .* has "
                                         r"cross_attention_dim 32"):
        check_sd_architecture(tiny_sd, None, (foreign,))
    # a LoRA (or a UNet folder) where the base pipeline folder is expected
    with pytest.raises(FileNotFoundError, match=r"mine is not a Stable Diffusion pipeline folder.*it is a LoRA or a UNet"):
        load_sd_pipeline(str(mine), None, "cpu")
    # a pipeline folder, or a UNet's weights file, where a UNet folder or LoRA is expected
    with pytest.raises(ValueError, match=r"expected a UNet folder .* or a LoRA .*found a whole pipeline folder"):
        load_sd_pipeline(str(tiny_sd), str(tiny_sd), "cpu")
    with pytest.raises(ValueError, match=r"found the file diffusion_pytorch_model.safetensors.*give the UNet folder"):
        entry_kind(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")
    # a target module the UNet does not have
    with pytest.raises(ValueError, match=r"train.lora_target_modules \(UNet .*unet/config.json\): the UNet has no "
                                         r"Linear/Conv2d module \['to_qkv'\].*'to_q'"):
        check_lora_targets(dataclasses.replace(cfg, lora_target_modules=("to_q", "to_qkv")))


@pytest.mark.parametrize("key,value,message", [
    ("lora_rank", 0, "train.lora_rank must be >= 1, got 0"),
    ("lora_alpha", 0.0, "train.lora_alpha must be > 0"),
    ("lora_dropout", 1.0, r"train.lora_dropout must lie in \[0, 1\)"),
    ("lora_target_modules", (), "train.lora_target_modules must name UNet layers"),
])
def test_bad_lora_settings_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(LORA, **{key: value}).validate()


def test_lora_settings_key_a_lora_run_and_leave_a_full_run_key_as_it_was():
    full = trained_settings(TrainConfig())
    assert not any(k.startswith("lora") or k == "adapter" for k in full)
    lora = trained_settings(LORA)
    assert lora["adapter"] == "lora" and lora["lora_rank"] == 4 and lora["lora_target_modules"] == [
        "to_k", "to_q", "to_v", "to_out.0"]
    keys = {RunIdentity.of(c, "d", "c").key for c in (TrainConfig(), LORA, dataclasses.replace(LORA, lora_rank=8))}
    assert len(keys) == 3


def test_the_paper_lora_profile_is_the_paper_recipe_with_a_lora():
    from stages.profiles import resolve

    configs = Path(__file__).resolve().parents[1] / "configs"
    paper, lora = resolve(configs / "paper-sd14.yaml"), resolve(configs / "paper-sd14-lora.yaml")
    assert {k for k in paper if paper[k] != lora[k]} == {"train"}
    changed = {k for k in lora["train"] if lora["train"][k] != paper["train"].get(k)}
    assert changed == {"adapter", "learning_rate", "cache_latents"}
    assert lora["train"]["lambda_token"] == 1e-3 and lora["train"]["gamma_pixel"] == 5e-5
