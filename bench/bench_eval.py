"""Benchmark: images per second of batched against one-at-a-time generation and detection.

    python -m bench.bench_eval [--model tiny|sd14] [--images 8] [--batch 8] [--steps N] [--device auto]

The same pipeline, the same items (text, seed) and the same detector in one process:

- generation: ``pipeline.evaluate.generation.draw`` on one item at a time (the official MultiGen
  loop: ``pipe(prompt=[text])`` per image) against batches of ``--batch`` items;
- detection: ``Detector.detect`` on one image at a time (the official loop) against batches,
  each image queried with its own prompt's categories.

``--model tiny`` (the CPU default): the demo's tiny Stable Diffusion at 64 px, 20 steps, and
the tiny OWLv2, all built in a temporary folder. ``--model sd14``: Stable Diffusion 1.4's
component configs (UNet 320/640/1280/1280, CLIP ViT-L/14 text encoder, VAE) and OWLv2-large's
(ViT-L/14 at 960 px) with random weights, 512 px and 50 steps: the real cost, for a GPU.
The note reports how far batched images are from one-at-a-time ones (max abs pixel difference).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core.devices import resolve_device
from pipeline.evaluate.detection import Detector
from pipeline.evaluate.generation import GenerationConfig, GenItem, draw
from pipeline.evaluate.multigen import image_seed, make_prompts

from .common import row, to_markdown

CATEGORIES = ["cat", "dog", "bus", "cup", "kite", "clock", "pizza", "apple", "banana", "teddy bear"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _tiny(folder: Path, device: str):
    from diffusers import StableDiffusionPipeline

    from pipeline.models.clip_tokenizer import build_clip_tokenizer
    from pipeline.models.owl_tiny import build_tiny_owlv2
    from pipeline.models.stable_diffusion import build_tiny_sd

    tok = build_clip_tokenizer(folder / "tok")
    sd = build_tiny_sd(folder / "sd", seed=0, tokenizer_dir=tok)
    pipe = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    owl = build_tiny_owlv2(folder / "owlv2", 0, tok)
    return pipe.to(device), Detector.load(str(owl), "owlv2", device=device), 64, 20


def _sd14(folder: Path, device: str):
    """SD 1.4- and OWLv2-large-sized models with random weights (no download)."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorFast,
    )

    from pipeline.models.clip_tokenizer import build_clip_tokenizer
    from pipeline.models.owl_tiny import build_tiny_owlv2

    torch.manual_seed(0)
    tok = build_clip_tokenizer(folder / "tok")
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1, set_alpha_to_one=False)  # SD 1.4 scheduler_config.json
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(tok),
                                   unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # OWLv2-large's architecture: save a random one in the tiny detector's folder layout
    owl_dir = build_tiny_owlv2(folder / "owlv2", 0, tok)
    large = Owlv2Config(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 16},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "patch_size": 14, "image_size": 960},
        projection_dim=768)
    Owlv2ForObjectDetection(large).save_pretrained(owl_dir)
    Owlv2ImageProcessorFast(size={"height": 960, "width": 960}).save_pretrained(owl_dir)
    return pipe.to(device), Detector.load(str(owl_dir), "owlv2", device=device), 512, 50


def _rate(n: int, fn, device: str) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    fn_out = fn()
    _sync(device)
    return n / (time.perf_counter() - t0), fn_out


def run(model: str = "tiny", images: int = 8, batch: int = 8, steps: int | None = None,
        device: str = "auto") -> list[dict]:
    device = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, detector, resolution, default_steps = (_tiny if model == "tiny" else _sd14)(Path(tmp), device)
        cfg = GenerationConfig(steps=steps or default_steps, resolution=resolution, batch_size=batch)
        prompts = make_prompts(CATEGORIES, -(-images // 2), seed=0)
        items = [GenItem(f"{p.prompt_id}_{j}", p.text, image_seed(0, p.prompt_id, j)) for p in prompts
                 for j in range(2)][:images]
        queries = [list(prompts[int(it.key.split("_")[0])].categories) for it in items]
        draw(pipe, items[:1], cfg)  # warm-up
        one_rate, one = _rate(len(items), lambda: [draw(pipe, [it], cfg)[0] for it in items], device)
        batch_rate, many = _rate(len(items), lambda: [im for k in range(0, len(items), batch)
                                                      for im in draw(pipe, items[k:k + batch], cfg)], device)
        diff = max(int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) for a, b in zip(one, many))
        detector.detect(many[:1], queries[:1], 0.01)  # warm-up
        det_one, singles = _rate(len(items), lambda: [detector.detect([im], [q], 0.01)[0]
                                                      for im, q in zip(many, queries)], device)
        det_batch, batched = _rate(len(items), lambda: detector.detect(many, queries, 0.01, batch_size=batch), device)
        same = all([d.label for d in a] == [d.label for d in b] for a, b in zip(singles, batched))
    where = f"{model}, {resolution} px, {cfg.steps} steps, {device}"
    return [
        row("evaluate: generation", "one at a time", one_rate, "img/s", where),
        row("evaluate: generation", f"batches of {batch}", batch_rate, "img/s", f"x{batch_rate / one_rate:.2f}; "
            f"max pixel diff {diff}"),
        row("evaluate: detection", "one at a time", det_one, "img/s", f"OWLv2 ({model}), {device}"),
        row("evaluate: detection", f"batches of {batch}", det_batch, "img/s",
            f"x{det_batch / det_one:.2f}; same boxes kept: {same}"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "sd14"], default="tiny")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    print(to_markdown(run(a.model, a.images, a.batch, a.steps, a.device)))


if __name__ == "__main__":
    main()
