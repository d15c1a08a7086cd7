"""Benchmark: what a heatmap step costs at SD1.4 shapes (the side work after a checkpoint).

    python -m bench.bench_side_work [--variant sd14] [--device auto] [--repeats 2]

The SD1.4 architecture with random weights (``pipeline.models.rehearsal``: UNet 859.5M, VAE,
CLIP ViT-L/14 text tower) at 512 px. Timed, as ``pipeline.train.side_work`` runs them:

- one heatmap caption: ``step.encode_batch`` (VAE encode + text encoder) and one UNet forward
  under ``AttentionCapture``, maps averaged with ``average_maps`` onto the CPU;
- one held-out image: ``grounding_totals``'s work, one VAE encode and 3 UNet forwards
  (timesteps 200/500/800) with capture.

A heatmap step costs ``heatmap_captions / processes`` of the first plus, with held-out images,
``holdout_images / processes`` of the second. Rows: median seconds of ``--repeats`` after a
warm-up, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pipeline.core.devices import resolve_device


def _models(variant: str, device: str):
    from pipeline.models import rehearsal as R

    torch.manual_seed(0)
    unet, vae, text = R.sd_unet(variant), R.sd_vae(variant), R.sd_text_encoder(variant)
    for m in (unet, vae, text):
        m.to(device).eval().requires_grad_(False)
    return unet, vae, text, R.sd_scheduler(variant)


def _median(fn, repeats: int, device: str) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(variant: str = "sd14", device: str = "auto", repeats: int = 2) -> list[dict]:
    from diffusers import DDPMScheduler

    from pipeline.train.attention import AttentionCapture, average_maps
    from pipeline.models.conditioning import TextConditioner
    from pipeline.train.step import encode_batch

    device = resolve_device(device)
    unet, vae, text, scheduler = _models(variant, device)
    scheduler = DDPMScheduler.from_config(scheduler.config)
    res = 512 if variant == "sd14" else 768
    batch = {"pixel_values": torch.rand(1, 3, res, res) * 2 - 1, "input_ids": torch.randint(0, 49407, (1, 77))}

    conditioner = TextConditioner(text)

    def heat_row():
        noisy, _, _, (states, _) = encode_batch(batch, [-1], 0, vae, conditioner, scheduler, device)
        t = torch.full((1,), 500, device=device, dtype=torch.long)
        with torch.no_grad(), AttentionCapture(unet) as capture:
            unet(noisy, t, states)
            average_maps(capture.groups(), device="cpu")

    def heldout_image():
        with torch.no_grad(), AttentionCapture(unet) as capture:
            latents = vae.encode(batch["pixel_values"].to(device)).latent_dist.mean * vae.config.scaling_factor
            states = text(batch["input_ids"].to(device))[0]
            for t in (200, 500, 800):
                unet(latents, torch.tensor([t], device=device), states)
                average_maps(capture.groups(), device="cpu")
                capture.clear()

    load = os.getloadavg()[0]
    note = f"{variant} random weights, {res} px, {device}, load {load:.1f}"
    return [
        {"group": "side work", "metric": "heatmap caption (encode + 1 UNet forward)",
         "value": round(_median(heat_row, repeats, device), 2), "unit": "s", "note": note},
        {"group": "side work", "metric": "held-out image (encode + 3 UNet forwards)",
         "value": round(_median(heldout_image, repeats, device), 2), "unit": "s", "note": note},
    ]


def main(argv: list[str] | None = None) -> None:
    from bench.common import to_markdown

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="sd14", choices=["sd14", "sd21"])
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    print(to_markdown(run(a.variant, a.device, a.repeats)))


if __name__ == "__main__":
    main()
