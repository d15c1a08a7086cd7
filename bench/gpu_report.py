"""GPU report: the paper's models (rehearsal architectures, random weights built here) timed on one GPU.

    python -m bench --gpu            # or: make gpu-report; about 8 minutes on one GPU
    python -m bench --gpu --quick    # tiny sizes on the CPU (the test suite runs this)

Rows (one Markdown table, the card and the command above it):
- SD1.4 UNet training step at 512 px (859.5M params, gradient checkpointing, AdamW): plain vs
  TokenCompose vs official-style (``bench.bench_train.run_mode``), fp32 batch 1 (the paper's) and
  bf16 autocast batch 4: median step time, CUDA peak memory.
- Grounding DINO SwinT-OGC (packaged config, bert-base-uncased's shape) at 800 x 1066 px: images/s.
- SAM ViT-H: image encoder at 1024 px + batched box decoding of 8 boxes: images/s, masks/s.
- SD1.4 generation, 50 steps, guidance 7.5, 512 px, batch 8, fp16: images/s.
- OWLv2 large patch14 at 960 px, 5 queries, batch 4: images/s.
A model whose library does not import gives a row with the reason instead. groundingdino-py
needs transformers < 5: with ``GPU_REPORT_GDINO_SITE`` naming a folder that holds
transformers 4.57 (``bench/gpu_run.sh`` installs one from ``.whl/gdino``), its part runs in a
child process with that folder first on ``PYTHONPATH``; the row's note names the version used.
Models are built from configs with random weights (speed and memory do not depend on the
values); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("bench.gpu_report")
REPO = Path(__file__).resolve().parents[1]
#: part -> environment variable naming a site folder put first on the path of a child process
PART_SITES = {"grounding_dino": "GPU_REPORT_GDINO_SITE"}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """(median seconds of ``repeats`` calls after one warm-up, peak CUDA GiB or nan)."""
    fn()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return statistics.median(times), peak


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_rows(device: str, quick: bool) -> list[tuple]:
    from bench.bench_train import MODES, run_mode

    model = "quick" if quick else "sd14"
    settings = [("fp32", 1)] + ([] if quick else [("bf16", 4)])
    rows = []
    for dtype, batch in settings:
        for mode in MODES:
            ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext())
            with ctx:
                r = run_mode(mode, model=model, steps=2 if quick else 3, device=device, batch_size=batch)
            mem = f"{r['peak_mb'] / 1024:.1f} GiB" + ("" if device.startswith("cuda") else " (RSS growth)")
            rows.append((f"SD1.4 train step {mode}, {dtype} batch {batch}", f"{r['step_s']:.3f} s/step", mem,
                         f"{r['params'] / 1e6:.1f}M params"))
            _free()
    return rows


def grounding_dino_rows(device: str, quick: bool) -> list[tuple]:
    import transformers

    if quick:
        return [("Grounding DINO SwinT-OGC", "skipped", "",
                 f"--quick: the full model only; transformers {transformers.__version__}")]
    from groundingdino.models import build_model  # noqa: F401  (ImportError -> a skip row)
    from groundingdino.util.misc import nested_tensor_from_tensor_list
    from groundingdino.util.slconfig import SLConfig

    from pipeline.models.grounding_dino import quiet_groundingdino, resolve_config_path
    from pipeline.models.rehearsal import build_bert

    with tempfile.TemporaryDirectory() as tmp, quiet_groundingdino():
        bert = build_bert(Path(tmp), 0)
        args = SLConfig.fromfile(str(resolve_config_path("GroundingDINO_SwinT_OGC.py")))
        args.device, args.text_encoder_type = device, str(bert)
        args.use_checkpoint = args.use_transformer_ckpt = False
        model = build_model(args).to(device).eval()
    image = torch.randn(3, 800, 1066, device=device)
    prompt = "dog . teddy bear . traffic light . umbrella . giraffe ."

    def step():
        with torch.inference_mode():
            model(nested_tensor_from_tensor_list([image]), captions=[prompt])

    s, peak = _timed(step, device, 5)
    del model
    _free()
    return [("Grounding DINO SwinT-OGC, 800 x 1066 px, batch 1", f"{1 / s:.2f} images/s", f"{peak:.1f} GiB",
             f"5 phrases; transformers {transformers.__version__}")]


def sam_rows(device: str, quick: bool) -> list[tuple]:
    from pipeline.models.rehearsal import sam_vit_h
    from pipeline.models.sam import SamArchitecture, build_sam

    sam = (build_sam(SamArchitecture()) if quick else sam_vit_h()).to(device).eval()
    size = sam.image_encoder.img_size
    image = torch.randn(1, 3, size, size, device=device)
    boxes = torch.tensor([[10.0, 20.0, size / 2, size / 2]] * 8, device=device)

    def step():
        with torch.inference_mode():
            emb = sam.image_encoder(image)
            sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                             multimask_output=False)

    s, peak = _timed(step, device, 2 if quick else 5)
    name = "SAM tiny" if quick else "SAM ViT-H"
    del sam
    _free()
    return [(f"{name}, {size} px, 8 boxes per image", f"{1 / s:.2f} images/s, {8 / s:.1f} masks/s",
             f"{peak:.1f} GiB", "")]


def generation_rows(device: str, quick: bool) -> list[tuple]:
    from diffusers import StableDiffusionPipeline

    from pipeline.models import rehearsal as R
    from pipeline.models.stable_diffusion import build_tiny_sd

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    steps, batch, res = (2, 2, 64) if quick else (50, 8, 512)
    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            pipe = StableDiffusionPipeline.from_pretrained(build_tiny_sd(Path(tmp) / "sd", 0), safety_checker=None)
        else:
            from pipeline.models.clip_tokenizer import load_clip_tokenizer, build_clip_tokenizer

            tok = load_clip_tokenizer(build_clip_tokenizer(Path(tmp) / "tok", save_fast=False))
            pipe = StableDiffusionPipeline(
                vae=R.sd_vae("sd14"), text_encoder=R.sd_text_encoder("sd14"), tokenizer=tok,
                unet=R.sd_unet("sd14"), scheduler=R.sd_scheduler("sd14"), safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a dog, a cat, a car, a tree, and a cup."] * batch

    def step():
        with torch.inference_mode():
            pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, height=res, width=res, output_type="np")

    s, peak = _timed(step, device, 1)
    del pipe
    _free()
    name = "tiny SD" if quick else "SD1.4"
    return [(f"{name} generation, {steps} steps, {res} px, batch {batch}, {str(dtype).split('.')[-1]}",
             f"{batch / s:.3f} images/s", f"{peak:.1f} GiB", "guidance 7.5")]


def owl_rows(device: str, quick: bool) -> list[tuple]:
    from pipeline.models.rehearsal import owl_model

    if quick:
        from transformers import Owlv2Config, Owlv2ForObjectDetection

        model = Owlv2ForObjectDetection(Owlv2Config(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=64, patch_size=16), projection_dim=32))
    else:
        model = owl_model("owlv2")
    model = model.to(device).eval()
    side, batch = model.config.vision_config.image_size, 4
    pixels = torch.randn(batch, 3, side, side, device=device)
    ids = torch.randint(1, 1000, (batch * 5, 16), device=device)

    def step():
        with torch.inference_mode():
            model(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids))

    s, peak = _timed(step, device, 2 if quick else 5)
    del model
    _free()
    name = "OWLv2 tiny" if quick else "OWLv2 large patch14"
    return [(f"{name}, {side} px, batch {batch}, 5 queries", f"{batch / s:.2f} images/s", f"{peak:.1f} GiB", "")]


PARTS = {"train": train_rows, "grounding_dino": grounding_dino_rows, "sam": sam_rows,
         "generation": generation_rows, "owl": owl_rows}


def part_in_subprocess(name: str, device: str, quick: bool, site: str | Path) -> list[tuple]:
    """Rows of part ``name`` from ``python -m bench.gpu_report --part`` with ``site`` first on its path."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    cmd = [sys.executable, "-m", "bench.gpu_report", "--part", name, "--device", device] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} in a child process with {site} first on its path failed "
                           f"(exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def report(quick: bool = False, device: str | None = None) -> str:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not quick and not device.startswith("cuda"):
        raise SystemExit("the GPU report needs a GPU (use --quick on a CPU)")
    rows = []
    for name, part in PARTS.items():
        t0 = time.perf_counter()
        site = os.environ.get(PART_SITES.get(name, ""), "")
        try:
            rows += part_in_subprocess(name, device, quick, site) if site else part(device, quick)
        except Exception as e:  # a library missing on the lent machine: the row says why
            log.warning("%s failed: %r", name, e)
            rows.append((name, "skipped", "", f"{type(e).__name__}: {str(e)[:120]}"))
        log.info("%s: %.0f s", name, time.perf_counter() - t0)
    card = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.machine()})"
    head = [f"card: {card}; torch {torch.__version__}; command: python -m bench --gpu{' --quick' if quick else ''}"
            + ("" if device.startswith("cuda") else f"; load average {os.getloadavg()[0]:.2f}"),
            "", "| what | speed | peak memory | note |", "|---|---:|---:|---|"]
    return "\n".join(head + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def main(argv: list[str] | None = None) -> None:
    """One part, its rows as JSON on the last line of stdout (the child of ``part_in_subprocess``)."""
    p = argparse.ArgumentParser(description="one part of the GPU report, rows as JSON")
    p.add_argument("--part", required=True, choices=sorted(PARTS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.part == "grounding_dino":
        from bench.gpu_smoke import add_shims

        add_shims()   # groundingdino-py imports cv2 and matplotlib for plotting only
    print(json.dumps(PARTS[args.part](args.device, args.quick)))


if __name__ == "__main__":
    main()
