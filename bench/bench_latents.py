"""Benchmark: what ``train.cache_latents`` and ``train.cache_text`` save in every training step, per example.

    python -m bench.bench_latents [--sizes 512,1024] [--repeats 2] [--device auto] [--no-text]

Without the cache a step VAE-encodes each example's image; with it the step reads the
posterior's mean and std from a safetensors shard (``pipeline.train.latent_cache``). Measured
here, per image: (a) the encode of Stable Diffusion's VAE (SD1.x/2.x and SDXL share its
architecture: block_out_channels 128/256/512/512, 2 layers per block, 4 latent channels; random
weights, fp32 as SDXL's VAE must run) at 512 px (SD1.4) and 1024 px (SDXL), batch 1; (b) reading
one image's mean and std back from a 256-image shard; (c) the bytes each image takes in the cache.
The step time saved is (a) - (b) per example of the micro-batch.

``train.cache_text``: (d) the text conditioning of one caption (77 tokens, batch 1, fp32, random
weights of the released shapes): SD1.4's CLIP ViT-L/14 text tower, and SDXL's ViT-L/14 + OpenCLIP
ViT-bigG/14 (penultimate states and the pooled projection; ``conditioning.TextConditioner``),
against (e) reading one caption's cached rows back (``text_cache``), and (f) their bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .common import row, to_markdown

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def _median_seconds(fn, repeats: int, device: str) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def encode_seconds(vae, size: int, repeats: int, device: str) -> float:
    """Median seconds of one ``vae.encode`` of a (1, 3, size, size) image, after one warm-up."""
    x = torch.randn(1, 3, size, size, device=device)
    return _median_seconds(lambda: vae.encode(x).latent_dist.mean.to("cpu"), repeats, device)


def read_seconds(size: int, repeats: int = 50) -> tuple[float, int]:
    """Seconds to read one image's (mean, std) from a 256-image shard, and its bytes in the cache."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shape = (256, 4, size // 8, size // 8)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "part-00000.safetensors"
        save_file({"mean": torch.randn(shape), "std": torch.rand(shape)}, str(shard))
        t0 = time.perf_counter()
        for i in range(repeats):
            with safe_open(str(shard), "pt") as f:
                f.get_slice("mean")[i:i + 1], f.get_slice("std")[i:i + 1]
        seconds = (time.perf_counter() - t0) / repeats
    return seconds, 2 * 4 * (size // 8) ** 2 * 4


def text_rows(repeats: int, device: str) -> list[dict]:
    """SD1.4's and SDXL's text conditioning of one caption against reading it from a text-cache shard."""
    from pipeline.models import rehearsal as R
    from pipeline.models.conditioning import TextConditioner
    from pipeline.train.tensor_shards import ShardStore

    ids = torch.randint(0, 49406, (1, 77))
    batch = {"input_ids": ids, "input_ids_2": ids, "time_ids": torch.zeros(1, 6)}
    rows = []
    for model, build in (("SD1.4", lambda: TextConditioner(R.sd_text_encoder("sd14").to(device).eval())),
                         ("SDXL", lambda: TextConditioner(R.sdxl_text_encoder().to(device).eval(),
                                                          R.sdxl_text_encoder_2().to(device).eval()))):
        torch.manual_seed(0)
        text = build()
        enc = _median_seconds(lambda: text(batch, device), repeats, device)
        hidden, added = text(batch, device)
        row_tensors = {"hidden": hidden[0].cpu()} | ({"pooled": added["text_embeds"][0].cpu()} if added else {})
        nbytes = sum(t.numel() * t.element_size() for t in row_tensors.values())
        with tempfile.TemporaryDirectory() as tmp:
            store = ShardStore.read(tmp, "captions").append([(str(i),) for i in range(64)], lambda k: row_tensors)
            names = tuple(row_tensors)
            t0 = time.perf_counter()
            for i in range(64):
                store.get((str(i),), names)
            read = (time.perf_counter() - t0) / 64
        del text
        rows += [row("text", f"text conditioning per caption ({model})", enc * 1e3, "ms", f"batch 1, fp32, {device}"),
                 row("text", f"cache read per caption ({model})", read * 1e3, "ms", "from a 64-caption shard"),
                 row("text", f"step time saved per example ({model})", (enc - read) * 1e3, "ms", "encode - read"),
                 row("text", f"cache bytes per caption ({model})", nbytes, "bytes", "fp32; half in bf16")]
    return rows


def run(sizes: tuple[int, ...] = (512, 1024), repeats: int = 2, device: str = "auto", text: bool = True) -> list[dict]:
    from diffusers import AutoencoderKL

    from pipeline.core.devices import resolve_device

    device = resolve_device(device)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE).to(device).eval()
    rows = []
    for size in sizes:
        model = {512: "SD1.4", 1024: "SDXL"}.get(size, f"{size} px")
        enc = encode_seconds(vae, size, repeats, device)
        read, nbytes = read_seconds(size)
        note = f"{model} VAE, {size} px, batch 1, fp32, {device}"
        rows += [row("latents", f"VAE encode per image ({model})", enc * 1e3, "ms", note),
                 row("latents", f"cache read per image ({model})", read * 1e3, "ms", "mean + std from a 256-image shard"),
                 row("latents", f"step time saved per example ({model})", (enc - read) * 1e3, "ms", "encode - read"),
                 row("latents", f"cache bytes per image ({model})", nbytes, "bytes", "fp32 mean + std")]
    return rows + (text_rows(repeats, device) if text else [])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024", help="image sides in px, comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="timed encodes per size, after 1 warm-up")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-text", action="store_true", help="leave out the text encoders' rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run(tuple(int(s) for s in args.sizes.split(",")), args.repeats, args.device, not args.no_text)
    print(json.dumps(rows) if args.json else to_markdown(rows))


if __name__ == "__main__":
    main()
