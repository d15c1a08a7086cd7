"""GPU report: the paper's models (rehearsal architectures, random weights built here) timed on one GPU.

    python -m bench --gpu            # or: make gpu-report; about 10 minutes on one GPU (estimated)
    python -m bench --gpu --quick    # tiny sizes on the CPU (the test suite runs this)

Rows (one Markdown table, the card and the command above it):
- SD1.4 UNet training step at 512 px (859.5M params, gradient checkpointing, AdamW): plain vs
  TokenCompose vs official-style (``bench.bench_train.run_mode``), fp32 batch 1 (the paper's) and
  bf16 autocast batch 4: median step time, CUDA peak memory.
- SD1.4 TokenCompose step, full fine-tuning vs LoRA rank 4, fp32 batch 1 and bf16 batch 4, 512 px;
  SDXL base 1.0 LoRA rank 128 (CoMat's: to_k/to_q/to_v/to_out.0, 185.8M params on the 2,567.5M
  UNet), bf16 batch 1 at 1024 px (latent 128): plain (L_LDM) vs TokenCompose (46 supervised mid + up
  cross-attention layers), each from cached latents and with the VAE encode of the image in the
  step. These run the train stage's own step (``pipeline.train.step.micro_step``: VAE or cached
  posterior, text conditioning with SDXL's two encoders, pooled embedding and time ids, the UNet,
  the project's losses) on models set up as ``setup.load_models`` / ``adapter.prepare_trainable``
  do (frozen parts in the mixed-precision dtype, LoRA in fp32, gradient checkpointing), then
  backward inside the attention capture, clipping and AdamW over the trained parameters as
  ``loop.optimizer_step``; bf16 is autocast around the micro-step. Each row that fails (out of
  memory, say) gives the reason, and the others still run. ``--quick``: the same layouts at tiny
  widths, 32 px.
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
import dataclasses
import functools
import gc
import json
import logging
import math
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


# ----------------------------------------------------------------------------- training steps of the train stage's code
# The rows below run ``pipeline.train.step.micro_step`` itself (VAE encode or cached latents, the text
# conditioning, the UNet, L_LDM + the grounding losses), set up as ``setup.load_models`` and
# ``adapter.prepare_trainable`` set up training, then backward inside the capture, clipping and AdamW
# as ``loop.optimizer_step``; bf16 is autocast around the micro-step, as accelerate's mixed precision.

#: CoMat's SDXL LoRA: rank 128 (alpha = rank) on to_k/to_q/to_v/to_out.0 (params.yaml's lora_target_modules)
SDXL_LORA_RANK = 128
SD_LORA_RANK = 4           # params.yaml's train.lora_rank
LORA_LR, FULL_LR = 1e-4, 5e-6
#: --quick: the release layouts at tiny widths (32 px; a 2-block VAE, 2 px per latent pixel)
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8)
TINY_UNET = {
    "sdxl": dict(sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                 transformer_layers_per_block=(1, 1, 1), attention_head_dim=(2, 4, 4), cross_attention_dim=64,
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=80),
    "sd14": dict(sample_size=16, block_out_channels=(32, 32, 64, 64), layers_per_block=1, cross_attention_dim=32),
}
QUICK_RESOLUTION = 32


def family_parts(family: str, quick: bool) -> dict:
    """The configs of a training step's models (``unet``, ``vae``, ``text``, SDXL's ``text_2``) and its
    image ``resolution``: SDXL base 1.0 at 1024 px or SD1.4 at 512 px (``pipeline.models.rehearsal``),
    or with ``quick`` the same layouts at tiny widths."""
    from pipeline.models import rehearsal as R

    if family == "sdxl":
        parts = dict(R.SDXL_PARTS, resolution=1024)
    else:
        parts = dict(unet=R.SD14_UNET, vae=dict(R.SD_VAE, sample_size=512), text=R.CLIP_L14_TEXT, resolution=512)
    if not quick:
        return parts
    tiny = {"unet": TINY_UNET[family], "vae": TINY_VAE, "text": TINY_TEXT, "text_2": TINY_TEXT}
    return {**{k: dict(v, **tiny[k]) for k, v in parts.items() if k in tiny}, "resolution": QUICK_RESOLUTION}


def build_step_models(parts: dict, seed: int = 0):
    """``setup.Models`` of ``parts``, random weights (seeded) on the CPU, SD's DDPM training scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pipeline.models.rehearsal import check_sdxl_parts, clip_text_encoder
    from pipeline.models.stable_diffusion import sd_noise_scheduler
    from pipeline.train.setup import Models

    if "text_2" in parts:
        check_sdxl_parts(parts)
    torch.manual_seed(seed)
    text_2 = clip_text_encoder(parts["text_2"], with_projection=True) if "text_2" in parts else None
    return Models(UNet2DConditionModel(**parts["unet"]), AutoencoderKL(**parts["vae"]),
                  clip_text_encoder(parts["text"]), sd_noise_scheduler(), tokenizer=None, text_encoder_2=text_2)


def step_config(resolution: int, adapter: str, precision: str, batch: int, rank: int = SD_LORA_RANK):
    """The ``TrainConfig`` of a timed TokenCompose step: the official loss scales, LoRA alpha = rank."""
    from bench.bench_train import GAMMA_PIXEL, LAMBDA_TOKEN
    from pipeline.train.config import TrainConfig

    cfg = TrainConfig(resolution=resolution, adapter=adapter, lora_rank=rank, lora_alpha=float(rank),
                      mixed_precision=precision, learning_rate=LORA_LR if adapter == "lora" else FULL_LR,
                      lambda_token=LAMBDA_TOKEN, gamma_pixel=GAMMA_PIXEL, train_batch_size=batch,
                      global_batch_size=batch)
    cfg.validate()
    return cfg


def prepare_step_models(models, cfg, device: str) -> None:
    """As ``setup.load_models``: VAE and text encoder(s) by ``setup.place_frozen``, the UNet by
    ``prepare_trainable``; checkpointing on, train mode."""
    from pipeline.train.adapter import prepare_trainable
    from pipeline.train.setup import WEIGHT_DTYPES, place_frozen

    dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    place_frozen(models, device, dtype)
    models.trainable = prepare_trainable(models.unet, cfg, device, dtype)
    models.unet.enable_gradient_checkpointing()
    models.unet.train()


def _caption_ids(batch: int, g: torch.Generator, pad: int | None) -> torch.Tensor:
    """``(B, 77)`` token ids: start, 11 random tokens, end; then the end token again (``pad`` None, SD's
    tokenizer) or ``pad`` (OpenCLIP's "!" = 0, SDXL's second tokenizer)."""
    from pipeline.models.clip_tokenizer import BOS_ID, EOS_ID, MODEL_MAX_LENGTH

    ids = torch.full((batch, MODEL_MAX_LENGTH), EOS_ID if pad is None else pad)
    ids[:, 0], ids[:, 12] = BOS_ID, EOS_ID
    ids[:, 1:12] = torch.randint(1, BOS_ID, (batch, 11), generator=g)
    return ids


def step_batch(models, resolution: int, batch: int, cached: bool, device: str) -> dict:
    """A collated training batch as ``TokenComposeDataset`` gives it: images in [-1, 1] (or, ``cached``, their
    VAE posterior as ``train.cache_latents`` stores it), token ids, SDXL's second ids and time ids, masks."""
    from bench.bench_train import SEED, noun_targets
    from pipeline.models.sdxl import add_time_ids
    from pipeline.models.stable_diffusion import vae_scale_factor

    g = torch.Generator().manual_seed(SEED + 2)
    pixels = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    ids = _caption_ids(batch, g, None)
    out = {"input_ids": ids, "caption_ids": torch.arange(batch),
           **noun_targets(models.unet, resolution, resolution // vae_scale_factor(models.vae), batch, g)}
    if models.text_encoder_2 is not None:
        out["input_ids_2"] = torch.where(torch.arange(ids.shape[1]) > 12, 0, ids)
        out["time_ids"] = torch.tensor([add_time_ids(resolution, resolution, resolution)] * batch)
    if cached:
        with torch.no_grad():
            dist = models.vae.encode(pixels.to(device, models.vae.dtype)).latent_dist
        out.update(latent_mean=dist.mean, latent_std=dist.std)
    else:
        out["pixel_values"] = pixels
    return out


def train_step(models, cfg, batch: dict, capture, device: str):
    """A function making one optimizer step of ``loop.optimizer_step``'s code over one micro-batch."""
    from pipeline.train.step import micro_step

    optimizer = torch.optim.AdamW(models.trainable, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    positions = list(range(len(batch["input_ids"])))
    bf16 = cfg.mixed_precision == "bf16"

    def step() -> None:
        with capture.active(cfg.supervise):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss, logged = micro_step(cfg, batch, positions, models, capture, device)
            loss.backward()
        capture.clear()
        if not math.isfinite(logged["total"]):
            raise FloatingPointError(f"non-finite loss {logged}")
        torch.nn.utils.clip_grad_norm_(models.trainable, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed_step(models, cfg, cached: bool, device: str, quick: bool) -> tuple[float, float, int]:
    """(median s/step, CUDA peak GiB, supervised layers) of ``cfg``'s step on a fresh batch and optimizer."""
    from pipeline.train.attention import AttentionCapture

    batch = step_batch(models, cfg.resolution, cfg.train_batch_size, cached, device)
    capture = AttentionCapture(models.unet, blocks=cfg.attn_blocks)
    try:
        with capture.active(cfg.supervise):  # held across the steps, as ``loop.train_steps`` holds it
            s, peak = _timed(train_step(models, cfg, batch, capture, device), device, 2 if quick else 3)
    finally:  # a failed step leaves no gradients behind for the next row
        for p in models.trainable:
            p.grad = None
    return s, peak, len(capture.layers) if cfg.supervise else 0


def _guarded(what: str, row) -> tuple:
    """``row()``, or a row that gives the reason it failed (out of memory, a library's error)."""
    try:
        return row()
    except Exception as e:  # noqa: BLE001  the other rows still run
        log.warning("%s failed: %r", what, e)
        return (what, "failed", "", f"{type(e).__name__}: {str(e)[:120]}")
    finally:
        _free()


def _mb(params) -> float:
    return sum(p.numel() for p in params) / 1e6


def sdxl_lora_rows(device: str, quick: bool) -> list[tuple]:
    """SDXL LoRA steps: plain vs TokenCompose, each with cached latents and with the VAE encode in the step."""
    parts = family_parts("sdxl", quick)
    cfg = step_config(parts["resolution"], "lora", "bf16", 1, rank=SDXL_LORA_RANK)
    models = build_step_models(parts)
    prepare_step_models(models, cfg, device)
    lora, unet = _mb(models.trainable), _mb(models.unet.parameters()) - _mb(models.trainable)
    name = "SDXL (tiny)" if quick else "SDXL"
    plain = dataclasses.replace(cfg, lambda_token=0.0, gamma_pixel=0.0)
    note = f"{parts['resolution']} px; {lora:.2f}M LoRA params on a {unet:.1f}M UNet; "
    rows = []
    for cached in (True, False):
        for c in (plain, cfg):
            what = (f"{name} LoRA r{SDXL_LORA_RANK} train step {'tokencompose' if c.supervise else 'plain'}, "
                    f"{'cached latents' if cached else 'VAE encode in the step'}, bf16 batch 1")
            rows.append(_guarded(what, functools.partial(_sdxl_row, what, note, models, c, cached, device, quick)))
    del models
    _free()
    return rows


def _sdxl_row(what: str, note: str, models, cfg, cached: bool, device: str, quick: bool) -> tuple:
    s, peak, layers = timed_step(models, cfg, cached, device, quick)
    losses = f"{layers} supervised layers" if layers else "L_LDM only"
    return (what, f"{s:.3f} s/step", f"{peak:.1f} GiB", note + losses)


def sd14_adapter_rows(device: str, quick: bool) -> list[tuple]:
    """SD1.4 TokenCompose steps: full fine-tuning vs LoRA, fp32 batch 1 and bf16 batch 4, VAE encode in the step."""
    parts = family_parts("sd14", quick)
    name = "SD1.4 (tiny)" if quick else "SD1.4"
    rows = []
    for precision, batch in (("fp32", 1), ("bf16", 4)):
        for adapter in ("full", "lora"):
            kind = f"LoRA r{SD_LORA_RANK}" if adapter == "lora" else "full"
            what = f"{name} {kind} train step tokencompose, {precision} batch {batch}"
            rows.append(_guarded(what, functools.partial(_sd14_row, what, parts, adapter, precision, batch, device,
                                                         quick)))
    return rows


def _sd14_row(what: str, parts: dict, adapter: str, precision: str, batch: int, device: str, quick: bool) -> tuple:
    cfg = step_config(parts["resolution"], adapter, precision, batch)
    models = build_step_models(parts)
    prepare_step_models(models, cfg, device)
    trained = _mb(models.trainable)
    s, peak, layers = timed_step(models, cfg, False, device, quick)
    return (what, f"{s:.3f} s/step", f"{peak:.1f} GiB", f"{parts['resolution']} px; {trained:.2f}M trained params; "
            f"{layers} supervised layers; VAE encode + text encoder in the step")


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


#: in the order they run, the most wanted first: a call cut short by its time limit keeps the rows done
PARTS = {"train": train_rows, "sdxl_lora": sdxl_lora_rows, "sd14_adapters": sd14_adapter_rows,
         "grounding_dino": grounding_dino_rows, "sam": sam_rows,
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


def _table(rows: list[tuple], device: str, quick: bool) -> str:
    card = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.machine()})"
    head = [f"card: {card}; torch {torch.__version__}; command: python -m bench --gpu{' --quick' if quick else ''}"
            + ("" if device.startswith("cuda") else f"; load average {os.getloadavg()[0]:.2f}"),
            "", "| what | speed | peak memory | note |", "|---|---:|---:|---|"]
    return "\n".join(head + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows])


def report(quick: bool = False, device: str | None = None, parts: list[str] | None = None,
           out: str | Path | None = None) -> str:
    """The table of ``parts`` (all of :data:`PARTS` by default, in its order); with ``out``, the table so
    far is rewritten to ``out/gpu_report.md`` after every part, so a run stopped by a time limit keeps it."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not quick and not device.startswith("cuda"):
        raise SystemExit("the GPU report needs a GPU (use --quick on a CPU)")
    unknown = sorted(set(parts or []) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown report parts {unknown}; known: {list(PARTS)}")
    rows = []
    for name in [n for n in PARTS if parts is None or n in parts]:
        t0 = time.perf_counter()
        site = os.environ.get(PART_SITES.get(name, ""), "")
        try:
            rows += part_in_subprocess(name, device, quick, site) if site else PARTS[name](device, quick)
        except Exception as e:  # a library missing on the lent machine: the row says why
            log.warning("%s failed: %r", name, e)
            rows.append((name, "skipped", "", f"{type(e).__name__}: {str(e)[:120]}"))
        log.info("%s: %.0f s", name, time.perf_counter() - t0)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            tmp = Path(out) / ".gpu_report.md.tmp"
            tmp.write_text(_table(rows, device, quick) + "\n")
            tmp.replace(Path(out) / "gpu_report.md")
    return _table(rows, device, quick)


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
