"""Stable Diffusion XL: its layout facts, its conditioning, the family check, and the stages on the tiny SDXL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from stagerun import link_workspace, run_stage

from pipeline.models.conditioning import TextConditioner
from pipeline.models.sdxl import add_time_ids, build_tiny_sdxl, encode_sdxl_text
from pipeline.models.stable_diffusion import (
    SDExpectation,
    build_tiny_sd,
    check_sd_architecture,
    load_sd_components,
    load_sd_pipeline,
    sdxl_marks,
)

SD = SDExpectation(cross_attention_dim=32, prediction_type="epsilon")
XL = SDExpectation(cross_attention_dim=64, prediction_type="epsilon", family="sdxl")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "sd", seed=0)


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "sdxl", seed=0)


def no_weights(monkeypatch):
    import diffusers

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded weights before the check")))


def test_the_family_check_names_the_folder_before_any_weight_loads(tiny_sd: Path, tiny_sdxl: Path, monkeypatch):
    no_weights(monkeypatch)
    with pytest.raises(ValueError, match=r"sdxl: a Stable Diffusion XL folder \(.*model_index.json names "
                                         r"StableDiffusionXLPipeline.*text_encoder_2.*text_time.*expects SD1.x/2.x"):
        load_sd_components(tiny_sdxl, expect=SD)
    with pytest.raises(ValueError, match=r"sd: the profile expects Stable Diffusion XL \(family sdxl\); the folder "
                                         r"is SD1.x/2.x"):
        load_sd_components(tiny_sd, expect=XL)
    with pytest.raises(ValueError, match=r"sdxl/unet/config.json: an SDXL UNet .*is a Stable Diffusion 1.x/2.x"):
        check_sd_architecture(tiny_sd, SD, (tiny_sdxl / "unet",))
    with pytest.raises(ValueError, match=r"sd/unet/config.json: a Stable Diffusion 1.x/2.x UNet; .* an SDXL"):
        check_sd_architecture(tiny_sdxl, XL, (tiny_sd / "unet",))
    with pytest.raises(ValueError, match="found cross_attention_dim 64"):
        load_sd_pipeline(str(tiny_sdxl), None, "cpu", expect=SDExpectation(2048, "epsilon", "sdxl"))
    assert "Stable Diffusion XL" in SD.describe((2048, "epsilon"))
    broken = Path(shutil.copytree(tiny_sdxl, tiny_sdxl.parent / "no-tokenizer-2"))
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(FileNotFoundError, match=r"no-tokenizer-2: an SDXL folder .* without \['tokenizer_2'\]"):
        load_sd_components(broken, expect=XL)


def test_sdxl_supervised_groups_at_1024_px_are_40_layers_at_32_and_6_at_64():
    from pipeline.models.sdxl import SDXL_RESOLUTION, VAE_FACTOR, meta_unet
    from pipeline.train.attention import layer_resolutions

    sides = layer_resolutions(meta_unet(), SDXL_RESOLUTION // VAE_FACTOR, ("mid", "up"))
    groups: dict[int, list[str]] = {}
    for name, side in sides.items():
        groups.setdefault(side, []).append(name)
    assert {side: len(names) for side, names in groups.items()} == {32: 40, 64: 6}
    assert sum(n.startswith("mid_block.") for n in groups[32]) == 10
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in groups[32] if n.startswith("up")} == {"up_blocks.0"}
    assert {n.split(".")[1] for n in groups[64]} == {"1"}
    assert not [n for n in layer_resolutions(meta_unet(), 128, ("down",)) if n.startswith("down_blocks.0.")]


def test_token_positions_of_the_vit_l_tokenizer_hold_for_openclip_bigg_on_coco_mini(coco_mini: Path, tmp_path: Path):
    """SDXL's two tokenizers agree on every position up to the end token; only the padding differs."""
    from pipeline.models.clip_tokenizer import build_clip_tokenizer, load_clip_tokenizer
    from pipeline.models.sdxl import bigg_position_mismatches

    captions = [a["caption"] for a in json.loads((coco_mini / "annotations/captions_train2017.json").read_text())
                ["annotations"]]
    tokenizer = load_clip_tokenizer(build_clip_tokenizer(tmp_path / "tok", save_fast=False))
    assert len(captions) >= 20
    assert bigg_position_mismatches(tokenizer, captions) == []
    assert bigg_position_mismatches(tokenizer, ["a cat"]) == []  # padding: 49407 (ViT-L) against 0 (bigG), both fine


def test_the_loaded_sdxl_conditions_as_its_pipeline_does(tiny_sdxl: Path):
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image
    from torchvision.transforms import functional as TF

    assert len(sdxl_marks(tiny_sdxl)) == 4
    parts = load_sd_components(tiny_sdxl, expect=XL)
    assert parts.sdxl and parts.tokenizer_2.pad_token_id == 0 and parts.tokenizer.pad_token_id == 49407
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    caption = "a teddy bear next to an apple"
    ids = [t(caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
           for t in (parts.tokenizer, parts.tokenizer_2)]
    time_ids = torch.tensor([add_time_ids(640, 480, 64)], dtype=torch.float32)
    with torch.no_grad():
        embeds, pooled = encode_sdxl_text([pipe.text_encoder, pipe.text_encoder_2], ids)
        want, _, want_pooled, _ = pipe.encode_prompt(caption, device="cpu", do_classifier_free_guidance=False)
        hidden, added = TextConditioner.of(parts)({"input_ids": ids[0], "input_ids_2": ids[1], "time_ids": time_ids},
                                                  "cpu")
    assert embeds.shape == (1, 77, 64) and pooled.shape == (1, 32)
    torch.testing.assert_close(embeds, want)
    torch.testing.assert_close(pooled, want_pooled)
    torch.testing.assert_close(hidden, want)
    torch.testing.assert_close(added["text_embeds"], want_pooled)
    with pytest.raises(KeyError, match="input_ids_2"):
        TextConditioner.of(parts)({"input_ids": ids[0]}, "cpu")
    # add_time_ids as diffusers' SDXL script: original (h, w), the centre crop's (top, left), (R, R)
    resized = TF.resize(Image.new("RGB", (640, 480)), 512)
    assert resized.size == (682, 512)
    assert add_time_ids(640, 480, 512) == [480, 640, 0, 85, 512, 512]
    assert add_time_ids(480, 640, 512) == [640, 480, 85, 0, 512, 512]


def test_dataset_items_carry_sdxl_ids_and_time_ids_with_and_without_cached_latents(tiny_sdxl: Path, coco_mini: Path,
                                                                                   tmp_path: Path):
    """``time_ids`` of an item are diffusers' (original size, centre-crop offsets, R); the cached dataset,
    which opens no image, computes the same; ``input_ids_2`` pads with OpenCLIP's "!"."""
    from PIL import Image

    from pipeline.train.dataset import Example, TokenComposeDataset, collate
    from pipeline.train.latent_cache import CachedLatentsDataset, fill_cache

    parts = load_sd_components(tiny_sdxl, expect=XL)
    images = sorted((coco_mini / "train2017").glob("*.jpg"))[:3]
    examples = []
    for i, path in enumerate(images):
        w, h = Image.open(path).size
        examples.append(Example(caption_id=i, image_id=i, image_path=str(path), caption="a dog on a couch", width=w,
                                height=h, nouns=()))
    dataset = TokenComposeDataset(examples, parts.tokenizer, 64, [4, 8], tokenizer_2=parts.tokenizer_2)
    cache = fill_cache(tmp_path / "latents", dataset, parts.vae, "cpu")
    cached = CachedLatentsDataset(dataset, cache)
    for i, ex in enumerate(examples):
        item, fast = dataset[i], cached[i]
        assert item["time_ids"].tolist() == add_time_ids(ex.width, ex.height, 64)
        assert torch.equal(fast["time_ids"], item["time_ids"]) and torch.equal(fast["input_ids_2"], item["input_ids_2"])
        end = item["input_ids"].tolist().index(49407)
        assert torch.equal(item["input_ids_2"][:end + 1], item["input_ids"][:end + 1])
        assert set(item["input_ids_2"][end + 1:].tolist()) == {0}
    batch = collate([dataset[0], dataset[1]])
    assert batch["input_ids_2"].shape == (2, 77) and batch["time_ids"].shape == (2, 6)


def sdxl_ws(src: Path, dst: Path, **train) -> Path:
    """The demo workspace's data and models (linked) with train and evaluate on the tiny SDXL."""
    params = yaml.safe_load((src / "params.yaml").read_text())
    xl = {"pretrained": "models/tiny/sdxl", "expect": {"cross_attention_dim": 64, "prediction_type": "epsilon",
                                                      "family": "sdxl"}}
    params["train"].update(xl, masks="data/reference_masks/masks", max_train_steps=2, global_batch_size=2,
                           train_batch_size=2, checkpointing_steps=1, heatmap_steps=1, heatmap_captions=2,
                           holdout_images=2, card_samples=1, card_sample_steps=2, **train)
    ev = params["evaluate"]
    ev.update(xl, models={"tokencompose": "data/train/unet"})
    ev["generation"].update(steps=2)
    ev["multigen"].update(num_prompts=2, images_per_prompt=1, heatmap_prompts=1)
    ev["object_accuracy"].update(num_prompts=2)
    ev["fid"].update(num_images=4)
    ev["attention"].update(holdout_images=2)
    return link_workspace(src, dst, params)


def test_train_and_evaluate_a_tokencompose_lora_on_the_tiny_sdxl(workspace: Path, tmp_path: Path):
    """The whole SDXL path on the stage scripts: LoRA, cached latents and text, bf16, heatmaps, held-out grounding,
    a checkpoint and its resume, the card; then evaluate with the LoRA on the SDXL pipeline."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open
    from safetensors.torch import load_file

    run_stage(workspace, "stages.reference_masks")
    ws = sdxl_ws(workspace, tmp_path / "ws", adapter="lora", lora_rank=4, cache_latents=True, cache_text=True,
                 mixed_precision="bf16", learning_rate=1e-2)
    run_stage(ws, "stages.train")
    out = ws / "data/train"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["side_work_errors"] == [] and summary["steps"] == 2
    assert summary["attention_resolutions"] == [4, 8] and summary["supervised_nouns"] > 0
    assert 0 < summary["final_heldout_attention_share"] < 1 and summary["final_token"] > 0
    assert any(f.startswith("random_weights") for f in summary["flags"])
    assert sorted(p.name for p in (out / "unet").iterdir()) == [
        "README.md", "adapter.json", "heatmap.png", "pytorch_lora_weights.safetensors", "samples.png"]
    card = (out / "unet/README.md").read_text()
    assert "StableDiffusionXLPipeline.from_pretrained" in card and "stable-diffusion-xl" in card
    assert list((out / "latents").rglob("part-*.safetensors"))
    with safe_open(str(next((out / "text").rglob("part-*.safetensors"))), "pt") as f:
        rows = len(json.loads(f.metadata()["captions"]))
        assert f.get_tensor("hidden").shape == (rows, 77, 64) and f.get_tensor("pooled").shape == (rows, 32)
        assert f.get_tensor("hidden").dtype == torch.bfloat16
    # a rerun resumes the final checkpoint: nothing to train, the same LoRA
    lora = load_file(str(out / "unet/pytorch_lora_weights.safetensors"))
    log = run_stage(ws, "stages.train", "--log-level", "INFO").stderr
    assert "resuming from" in log
    again = load_file(str(out / "unet/pytorch_lora_weights.safetensors"))
    assert all(torch.equal(lora[k], again[k]) for k in lora)
    # the user's way and evaluate's
    pipe = StableDiffusionXLPipeline.from_pretrained(ws / "models/tiny/sdxl")
    pipe.load_lora_weights(out / "unet")
    with pytest.raises(ValueError, match=r"was trained on .*another architecture.*cross_attention_dim: LoRA 64, base 32"):
        check_sd_architecture(ws / "models/tiny/sd", None, (out / "unet",))
    run_stage(ws, "stages.evaluate", "--model", "tokencompose")
    metrics = json.loads((ws / "data/evaluate/tokencompose/metrics.json").read_text())
    assert metrics["attention"]["pairs"] > 0 and 0 < metrics["attention"]["share"] < 1
    assert set(metrics["multigen"]) >= {"MG2", "MG5"} and metrics["flagged"] >= 1
    assert (ws / "data/evaluate/tokencompose/figures/heatmaps.png").is_file()


def test_the_sdxl_lora_profile_is_the_paper_recipe_on_sdxl_with_a_lora():
    from stages.profiles import resolve

    configs = Path(__file__).resolve().parents[1] / "configs"
    paper, xl = resolve(configs / "paper-sd14.yaml"), resolve(configs / "sdxl-lora.yaml")
    assert {k for k in paper if paper[k] != xl[k]} == {"train", "evaluate"}
    t = xl["train"]
    changed = {k for k in t if t[k] != paper["train"].get(k)}
    assert changed == {"pretrained", "expect", "resolution", "adapter", "lora_rank", "lora_alpha", "learning_rate",
                       "mixed_precision", "cache_latents", "cache_text"}
    assert (t["lambda_token"], t["gamma_pixel"], t["global_batch_size"]) == (1e-3, 5e-5, 4)
    assert (t["lora_rank"], t["mixed_precision"], t["resolution"]) == (128, "bf16", 1024)
    g = xl["evaluate"]["generation"]
    assert (g["steps"], g["guidance_scale"], g["resolution"]) == (50, 5.0, 1024)
    assert t["expect"] == xl["evaluate"]["expect"] == {"cross_attention_dim": 2048, "prediction_type": "epsilon",
                                                       "family": "sdxl"}


def test_processes_fill_one_cache_side_by_side_and_a_rerun_encodes_nothing(tiny_sdxl: Path, coco_mini: Path,
                                                                          tmp_path: Path):
    """Each process encodes its share (``rank::world``) into shards named by their keys; together they hold
    what one process writes, row for row."""
    from PIL import Image

    from pipeline.train.dataset import Example, TokenComposeDataset
    from pipeline.train.latent_cache import fill_cache, read_cache
    from pipeline.train.text_cache import fill_text_cache

    parts = load_sd_components(tiny_sdxl, expect=XL)
    paths = sorted((coco_mini / "train2017").glob("*.jpg"))[:3]
    examples = [Example(i, i, str(p), f"caption {i % 2}", Image.open(p).size[1], Image.open(p).size[0], ())
                for i, p in enumerate(paths)]
    dataset = TokenComposeDataset(examples, parts.tokenizer, 64, [4, 8], tokenizer_2=parts.tokenizer_2)
    text = TextConditioner.of(parts)
    one = fill_cache(tmp_path / "one", dataset, parts.vae, "cpu")
    fill_text_cache(tmp_path / "one-text", dataset, text, "cpu")
    for rank in (0, 1):
        fill_cache(tmp_path / "two", dataset, parts.vae, "cpu", rank, 2)
        fill_text_cache(tmp_path / "two-text", dataset, text, "cpu", rank, 2)
    two = read_cache(tmp_path / "two")
    assert len(list((tmp_path / "two").glob("part-*.safetensors"))) == 2 and set(two.index) == set(one.index)
    for key in one.index:
        a, b = one.get(key, ("mean", "std")), two.get(key, ("mean", "std"))
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert len(list((tmp_path / "two-text").glob("part-*.safetensors"))) == 2  # 2 distinct captions, 1 each
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "two").iterdir())
    fill_cache(tmp_path / "two", dataset, parts.vae, "cpu")
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "two").iterdir()) == before


def test_a_full_sdxl_step_uses_the_pooled_embedding_and_the_time_ids(tiny_sdxl: Path, coco_mini: Path):
    """One micro-step of the full fine-tune on the tiny SDXL: the loss reaches SDXL's added-conditioning
    layers, and other time ids (another crop) change the prediction."""
    from PIL import Image

    from pipeline.train.attention import AttentionCapture
    from pipeline.train.config import TrainConfig
    from pipeline.train.dataset import Example, TokenComposeDataset, collate
    from pipeline.train.setup import Models
    from pipeline.train.step import encode_batch, micro_step

    parts = load_sd_components(tiny_sdxl, expect=XL)
    models = Models(parts.unet, parts.vae, parts.text_encoder, parts.noise_scheduler, parts.tokenizer,
                    list(parts.unet.parameters()), parts.tokenizer_2, parts.text_encoder_2)
    path = sorted((coco_mini / "train2017").glob("*.jpg"))[0]
    w, h = Image.open(path).size
    dataset = TokenComposeDataset([Example(0, 0, str(path), "a dog on a couch", h, w, ())], parts.tokenizer, 64,
                                  [4, 8], tokenizer_2=parts.tokenizer_2)
    batch = collate([dataset[0]])
    cfg = TrainConfig(pretrained=str(tiny_sdxl), resolution=64)
    with AttentionCapture(parts.unet) as capture:
        loss, logged = micro_step(cfg, batch, [0], models, capture, "cpu")
        loss.backward()
    assert torch.isfinite(loss) and logged["total"] > 0
    for layer in (parts.unet.add_embedding.linear_1, parts.unet.add_embedding.linear_2):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    noisy, _, t, (hidden, added) = encode_batch(batch, [0], 0, parts.vae, models.text, parts.noise_scheduler, "cpu")
    other = {**added, "time_ids": added["time_ids"] + torch.tensor([0.0, 0.0, 16.0, 0.0, 0.0, 0.0])}
    with torch.no_grad():
        a = parts.unet(noisy, t, hidden, added_cond_kwargs=added).sample
        b = parts.unet(noisy, t, hidden, added_cond_kwargs=other).sample
    assert not torch.allclose(a, b)


def test_held_out_grounding_encodes_with_an_fp32_copy_of_an_fp16_sdxl_vae(tiny_sdxl: Path, tiny_sd: Path):
    """SDXL's VAE overflows in fp16: evaluate encodes the held-out images with an fp32 copy and leaves the
    pipeline's own VAE (which the pipeline upcasts for decoding itself) as it is."""
    from pipeline.models.stable_diffusion import encoding_vae

    pipe = load_sd_pipeline(str(tiny_sdxl), None, "cpu", dtype="fp16", expect=XL)
    vae = encoding_vae(pipe)
    assert vae is not pipe.vae and vae.dtype == torch.float32 and pipe.vae.dtype == torch.float16
    for a, b in zip(vae.state_dict().values(), pipe.vae.state_dict().values()):
        assert torch.equal(a, b.float())
    sd = load_sd_pipeline(str(tiny_sd), None, "cpu", dtype="fp16", expect=SD)
    assert encoding_vae(sd) is sd.vae  # SD1.x/2.x: as it is
    assert encoding_vae(load_sd_pipeline(str(tiny_sdxl), None, "cpu", expect=XL)).dtype == torch.float32
