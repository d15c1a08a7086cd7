"""The model card beside the trained weights: diffusers' layout, what it tells, how to load them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from pipeline.train.config import TrainConfig
from pipeline.train.model_card import write_model_card

SUMMARY = {"run": "0123456789abcdef", "steps": 40, "global_batch": 4, "processes": 1, "captions": 96,
           "examples": 90, "rejected": 6, "input_nouns": 300, "supervised_nouns": 250, "train_examples": 74,
           "heldout_examples": 16, "heldout_supervised_nouns": 40, "base_heldout_attention_share": 0.05,
           "final_heldout_attention_share": 0.11, "base_heldout_attention_iou": 0.02,
           "final_heldout_attention_iou": 0.04, "flags": []}
DATASET = {"format": "coco", "captions": "data/coco/annotations/captions_train2017.json"}


def front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---")[1])


def test_a_full_fine_tune_card_loads_with_from_pretrained_and_tells_data_training_and_grounding(tmp_path: Path):
    cfg = TrainConfig(pretrained="CompVis/stable-diffusion-v1-4", out_dir=str(tmp_path))
    (tmp_path / "samples.png").write_bytes(b"")
    text = write_model_card(tmp_path, cfg, SUMMARY, DATASET).read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "CompVis/stable-diffusion-v1-4" and meta["library_name"] == "diffusers"
    assert "tokencompose" in meta["tags"] and "lora" not in meta["tags"]
    assert "# TokenCompose fine-tuned UNet of `CompVis/stable-diffusion-v1-4`" in text
    assert f'UNet2DConditionModel.from_pretrained("{tmp_path}")' in text
    assert 'StableDiffusionPipeline.from_pretrained("CompVis/stable-diffusion-v1-4", unet=unet)' in text
    assert "captions_train2017.json" in text and "| supervised_nouns | 250 |" in text
    assert "lambda_token: 0.001" in text and "lora_rank" not in text  # the train section as the run key has it
    assert "| share | 0.05 | 0.11 |" in text and "16 held-out images (40 nouns)" in text
    assert "Not evaluated yet" in text and "![samples](samples.png)" in text and "heatmap.png" not in text
    assert "Flags" not in text


def test_a_lora_card_loads_with_load_lora_weights_shows_metrics_and_flags(tmp_path: Path):
    cfg = TrainConfig(adapter="lora", lora_rank=8, lora_alpha=8.0, pretrained="models/tiny/sd", out_dir=str(tmp_path))
    summary = {**SUMMARY, "flags": ["random_weights: models/tiny/sd carry seeded random weights"]}
    metrics = {"multigen": {"MG2": 90.5, "MG3": 50.25}, "object_accuracy": 40.0, "fid": 21.5, "flagged": 1}
    text = write_model_card(tmp_path, cfg, summary, None, metrics).read_text()
    assert "lora" in front_matter(text)["tags"]
    assert "# TokenCompose LoRA (rank 8, alpha 8) of `models/tiny/sd`" in text
    assert f'pipe.load_lora_weights("{tmp_path}")' in text
    assert "> **Flags**" in text and "\n> - random_weights: models/tiny/sd carry seeded random weights\n" in text
    assert "| multigen.MG2 | 90.5 |" in text and "| fid | 21.5 |" in text and "flagged |" not in text
    assert "lora_rank: 8" in text and "adapter: lora" in text


def test_no_heldout_images_says_so(tmp_path: Path):
    summary = {k: v for k, v in SUMMARY.items() if "attention" not in k}
    text = write_model_card(tmp_path, dataclasses.replace(TrainConfig(), holdout_images=0), summary).read_text()
    assert "Not measured (no held-out image" in text


def test_evaluate_fills_the_evaluation_section_of_a_copy_and_keeps_the_pictures(tmp_path: Path):
    from pipeline.train.model_card import card_with_metrics

    cfg = TrainConfig(adapter="lora", pretrained="models/tiny/sd")
    weights = tmp_path / "data/train/unet"
    weights.mkdir(parents=True)
    (weights / "heatmap.png").write_bytes(b"")
    card = write_model_card(weights, cfg, SUMMARY).read_text()
    figures = tmp_path / "data/evaluate/tokencompose/figures"
    filled = card_with_metrics(card, {"multigen": {"MG2": 80.0}, "fid": 30.25, "attention": {"share": 0.2, "pairs": [1]}},
                               weights, figures)
    assert "Not evaluated yet" not in filled and "| multigen.MG2 | 80 |" in filled and "| fid | 30.25 |" in filled
    assert "| attention.share | 0.2 |" in filled and "pairs" not in filled
    assert "![heatmap](../../../train/unet/heatmap.png)" in filled
    assert filled.split("## Evaluation")[0] == card.split("## Evaluation")[0]


def test_card_samples_zero_draws_nothing_and_bad_counts_are_config_errors(tmp_path: Path):
    import pytest

    from pipeline.core.config import ConfigError
    from pipeline.train.model_card import draw_samples

    cfg = TrainConfig(pretrained=str(tmp_path / "nowhere"), card_samples=0)
    assert draw_samples(cfg, tmp_path, ["a cat"]) is None  # nothing loaded
    for bad in ({"card_samples": -1}, {"card_sample_steps": 0}):
        with pytest.raises(ConfigError, match="card_samples must be >= 0 and card_sample_steps >= 1"):
            dataclasses.replace(TrainConfig(), **bad).validate()
