"""The ``train`` stage: fine-tune the UNet with L_LDM + lambda * L_token + gamma * L_pixel.

One optimizer step consumes a *global batch* of ``G = train_batch_size * gradient_accumulation_steps
* num_processes`` examples. Which examples, and every random draw for each of them (VAE
posterior sample, noise, timestep), are functions of (seed, step, position in the global batch)
only, so:

- a run resumed from a checkpoint continues exactly as an uninterrupted run would;
- N processes with per-process batch b give the same updates as one process with batch N*b
  (or N-fold accumulation): the gradient is the mean over the same G per-example losses.

Example order: epoch ``e`` is ``randperm(num_examples)`` from a generator seeded by
``(seed, e)``; the global example stream is the concatenation of epochs; step ``s`` takes
positions ``[s*G, (s+1)*G)``; micro-batch ``a`` of process ``p`` takes the ``b`` positions
starting at ``s*G + (a*P + p)*b``.

Only the UNet trains (VAE and text encoder frozen, in the mixed-precision dtype), AdamW with a
constant learning rate and gradient clipping, as in the official code. Cross-attention maps
are captured only on the supervised layers (``attn_blocks``); every other layer keeps the fast
default processor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipeline.core.code import code_digest
from pipeline.core.config import ConfigError, fingerprint
from pipeline.core.devices import resolve_device
from pipeline.core.provenance import random_weights_flags
from pipeline.core.shards import inputs_digest
from pipeline.core.tables import read_table
from pipeline.models.stable_diffusion import (
    SDExpectation,
    load_sd_components,
    vae_scale_factor,
)
from pipeline.train.attention import AttentionCapture, layer_resolutions
from pipeline.train.attention_metrics import evaluate_grounding
from pipeline.train.checkpoints import (
    checkpoint_last_values,
    checkpoint_step,
    latest_checkpoint,
    load_optimizer,
    save_checkpoint,
)
from pipeline.train.dataset import MaskCoverage, TokenComposeDataset, build_examples, collate
from pipeline.train.losses import grounding_losses, total_loss

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A non-finite loss: names the step and the examples; the last good checkpoint stays."""


@dataclass(frozen=True)
class TrainConfig:
    """Section ``train`` of params.yaml. Steps count optimizer updates."""

    pretrained: str = "models/tiny/sd"        # diffusers folder or hub id (CompVis/stable-diffusion-v1-4)
    expect: SDExpectation | None = None        # the architecture pretrained must have (another one stops the stage)
    revision: str | None = None
    masks: str = "data/segment/masks"          # a masks table: segment's, or reference_masks'
    resolution: int = 64
    attn_blocks: tuple[str, ...] = ("mid", "up")
    lambda_token: float = 1e-3
    gamma_pixel: float = 5e-5
    loss_mode: Literal["official", "paper"] = "official"
    learning_rate: float = 5e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 4
    max_train_steps: int = 24000
    mixed_precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # not "no": YAML 1.1 reads it as false
    gradient_checkpointing: bool = True
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    heatmap_steps: int = 500
    heatmap_captions: int = 3
    holdout_images: int = 0                    # images kept out of training; attention share is measured on them
    max_mask_coverage: float = 0.9             # a mask covering more of an attention map is not supervised
    num_workers: int = 0                       # DataLoader worker processes decoding and resizing images
    checkpoint_optimizer: bool = True          # keep AdamW's state in checkpoints (SD1.4: 6.9 GB each)
    seed: int = 0
    device: str = "auto"
    out_dir: str = "data/train"

    def validate(self) -> None:
        bad = set(self.attn_blocks) - {"down", "mid", "up"}
        if bad or not self.attn_blocks:
            raise ConfigError(f"train.attn_blocks must be a non-empty subset of down, mid, up; got {self.attn_blocks}")
        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                     "checkpointing_steps", "checkpoints_total_limit", "heatmap_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lambda_token < 0 or self.gamma_pixel < 0 or self.learning_rate <= 0:
            raise ConfigError("train.lambda_token and gamma_pixel must be >= 0, learning_rate > 0")
        if not 0.0 < self.max_mask_coverage <= 1.0:
            raise ConfigError(f"train.max_mask_coverage must lie in (0, 1] (1 keeps every mask), "
                              f"got {self.max_mask_coverage}")


#: settings that do not change the trained weights: they may differ between a run and its resume
_RESUMABLE = ("max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "heatmap_steps",
              "heatmap_captions", "num_workers", "checkpoint_optimizer", "expect", "device", "out_dir")


def run_fingerprint(cfg: TrainConfig, captions_path: str | Path, nouns_path: str | Path) -> str:
    """Settings, input bytes and training code: a checkpoint resumes only the run that wrote it.

    Inputs: the captions, nouns and masks tables, every image the captions name, the pretrained
    model (its folder's bytes, or a hub id and ``revision``); code: every project module training
    runs (``pipeline.core.code``), so a fixed loss or mask resize retrains from scratch.
    """
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE}
    images = sorted(set(read_table(captions_path, columns=["path"]).column("path").to_pylist()))
    inputs = inputs_digest(captions_path, nouns_path, cfg.masks, cfg.pretrained, *images)
    return fingerprint(fields, inputs, code_digest(__name__))


class MicroBatchSampler(torch.utils.data.Sampler):
    """Dataset indices of each micro-batch this process trains on, from ``start_step`` to the end.

    Yields, for step in [start_step, max_train_steps) and micro in [0, accumulation), the list
    ``[order(p) for p in example_positions(step, micro, rank, cfg, world)]``: the very examples,
    in the very order, that the loop pairs with its random draws.
    """

    def __init__(self, order, cfg: TrainConfig, start_step: int, rank: int, world: int) -> None:
        self.order, self.cfg, self.start, self.rank, self.world = order, cfg, start_step, rank, world

    def __iter__(self):
        for step in range(self.start, self.cfg.max_train_steps):
            for micro in range(self.cfg.gradient_accumulation_steps):
                yield [self.order(p) for p in example_positions(step, micro, self.rank, self.cfg, self.world)]

    def __len__(self) -> int:
        return max(0, self.cfg.max_train_steps - self.start) * self.cfg.gradient_accumulation_steps


def micro_batch_loader(dataset, order, cfg: TrainConfig, start_step: int, rank: int, world: int):
    """A DataLoader of collated micro-batches; ``cfg.num_workers`` processes decode and resize images.

    The dataset is deterministic (centre crop), so any number of workers gives the same batches.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=MicroBatchSampler(order, cfg, start_step, rank, world), collate_fn=collate,
        num_workers=cfg.num_workers, persistent_workers=False,
        prefetch_factor=2 if cfg.num_workers > 0 else None,
    )


def _generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and integer keys (stable across runs and layouts)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def example_positions(step: int, micro: int, rank: int, cfg: TrainConfig, world_size: int) -> list[int]:
    """Global stream positions of one process's micro-batch of optimizer step ``step``."""
    b = cfg.train_batch_size
    g = b * cfg.gradient_accumulation_steps * world_size
    start = step * g + (micro * world_size + rank) * b
    return list(range(start, start + b))


def split_holdout(examples: list, n_images: int, seed: int, *, name: str = "train.holdout_images",
                  keep_training: bool = True) -> tuple[list, list]:
    """Keep ``n_images`` images (all their captions) out of training, chosen by a seeded permutation.

    ``keep_training=False`` (evaluation) allows holding out every image; the choice is the same.
    """
    if n_images <= 0:
        return list(examples), []
    images = sorted({e.image_id for e in examples})
    if n_images > len(images) or (keep_training and n_images == len(images)):
        left = "leaves no training image" if n_images == len(images) else "asks for more images than there are"
        raise ConfigError(f"{name}={n_images} {left} (there are {len(images)})")
    perm = torch.randperm(len(images), generator=_generator(seed, -2)).tolist()
    held = {images[i] for i in perm[:n_images]}
    return [e for e in examples if e.image_id not in held], [e for e in examples if e.image_id in held]


class ExampleOrder:
    """Stream position -> dataset index, epoch by epoch (cached permutations)."""

    def __init__(self, n: int, seed: int):
        if n == 0:
            raise ValueError("no training examples")
        self.n, self.seed, self._perms = n, seed, {}

    def __call__(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(self.n, generator=_generator(self.seed, -1, epoch)).tolist()
        return self._perms[epoch][i]


def ldm_loss_per_example(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over all latent elements, one value per example: (B, C, h, w) -> (B,)."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)


def run_train(cfg: TrainConfig, captions_path: str | Path, nouns_path: str | Path) -> dict | None:
    """Train; returns a summary on the main process (None on the others)."""
    from accelerate import Accelerator

    from pipeline.train.live import TrainLogger

    device = resolve_device(cfg.device)
    accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(cfg.mixed_precision, cfg.mixed_precision),
                              cpu=device == "cpu")
    world, rank = accelerator.num_processes, accelerator.process_index
    out = Path(cfg.out_dir)
    fp = run_fingerprint(cfg, captions_path, nouns_path)

    parts = load_sd_components(cfg.pretrained, revision=cfg.revision, expect=cfg.expect)
    latent = cfg.resolution // vae_scale_factor(parts.vae)
    resolutions = sorted(set(layer_resolutions(parts.unet, latent, cfg.attn_blocks).values()))
    coverage = MaskCoverage(cfg.resolution, tuple(resolutions), cfg.max_mask_coverage)
    examples, rejects, data_summary = build_examples(captions_path, nouns_path, cfg.masks, tokenizer=parts.tokenizer,
                                                     coverage=coverage)
    examples, heldout = split_holdout(examples, cfg.holdout_images, cfg.seed)
    weight_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    unet, vae, text_encoder, scheduler = parts.unet, parts.vae, parts.text_encoder, parts.noise_scheduler
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
        frozen.to(accelerator.device) if weight_dtype == torch.float32 else frozen.to(accelerator.device, weight_dtype)

    capture = AttentionCapture(unet, blocks=cfg.attn_blocks)
    dataset = TokenComposeDataset(examples, parts.tokenizer, cfg.resolution, resolutions)
    heldout_set = TokenComposeDataset(heldout, parts.tokenizer, cfg.resolution, resolutions) if heldout else None
    order = ExampleOrder(len(dataset), cfg.seed)
    heldout_nouns = sum(len(e.nouns) for e in heldout)
    if heldout and not heldout_nouns:
        log.warning("no held-out caption has a supervised noun: the held-out attention share is not measured")
    measure = heldout_set is not None and heldout_nouns > 0
    # the pretrained UNet on the held-out images: what training should improve on
    base = _heldout_grounding(cfg, unet.to(accelerator.device), vae, text_encoder, heldout_set, scheduler) \
        if measure and accelerator.is_main_process else {}

    resume = latest_checkpoint(out / "checkpoints", fp) if accelerator.is_main_process else None
    resume = _broadcast_path(accelerator, resume)
    start_step, last = 0, {}
    if resume is not None:
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(resume / "unet").state_dict())
        start_step = checkpoint_step(resume)
        last = checkpoint_last_values(resume)
        log.info("resuming from %s (step %d)", resume, start_step)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
    )
    unet, optimizer = accelerator.prepare(unet, optimizer)
    inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    if resume is not None and not load_optimizer(resume, inner):
        log.warning("%s holds no optimizer state (train.checkpoint_optimizer was false): AdamW's moments "
                    "restart from zero at step %d, so this run will not equal an uninterrupted one",
                    resume, start_step)
    batches = iter(micro_batch_loader(dataset, order, cfg, start_step, rank, world))

    logger = TrainLogger(out, enabled=accelerator.is_main_process, resume_step=start_step)
    if base and start_step == 0:
        logger.log_heldout(0, base)
    heat_examples = [i for i, e in enumerate(examples) if e.nouns][: cfg.heatmap_captions]
    bar = tqdm(total=cfg.max_train_steps, initial=start_step, desc="train", unit="step",
               disable=None if accelerator.is_main_process else True)
    supervise = cfg.lambda_token > 0 or cfg.gamma_pixel > 0
    t0 = time.perf_counter()
    # the capture is held across steps: swapping processors every micro-step costs time
    with capture.active(supervise):
        for step in range(start_step, cfg.max_train_steps):
            parts_sum: dict[str, float] = {}
            for micro in range(cfg.gradient_accumulation_steps):
                positions = example_positions(step, micro, rank, cfg, world)
                batch = next(batches)
                final_micro = micro == cfg.gradient_accumulation_steps - 1
                ctx = accelerator.no_sync(unet) if not final_micro else contextlib.nullcontext()
                # backward inside the capture: gradient checkpointing recomputes the supervised layers
                with ctx, capture.active(supervise):
                    loss, logged = _micro_step(cfg, batch, positions, unet, vae, text_encoder, scheduler, capture,
                                               accelerator, weight_dtype)
                    _check_finite(accelerator, loss, step, batch, out)
                    accelerator.backward(loss / cfg.gradient_accumulation_steps)
                capture.clear()
                for k, v in logged.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.gradient_accumulation_steps
            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last = _mean_over_processes(accelerator, parts_sum)
            last["grad_norm"] = float(grad_norm)
            done = step + 1
            logger.log_step(done, last)
            bar.update(1)
            bar.set_postfix(loss=f"{last['total']:.4f}")
            if accelerator.is_main_process and (done % cfg.heatmap_steps == 0 or done == cfg.max_train_steps):
                logger.log_heatmaps(done, _heatmap_rows(cfg, dataset, heat_examples, accelerator.unwrap_model(unet),
                                                        vae, text_encoder, scheduler, capture, weight_dtype))
                if measure:
                    grounding = _heldout_grounding(cfg, accelerator.unwrap_model(unet), vae, text_encoder,
                                                   heldout_set, scheduler)
                    logger.log_heldout(done, grounding)
                    last.update({f"heldout_attention_{k}": v for k, v in grounding.items()})
            if done % cfg.checkpointing_steps == 0 or done == cfg.max_train_steps:
                if accelerator.is_main_process:
                    save_checkpoint(out / "checkpoints", done, accelerator.unwrap_model(unet),
                                    optimizer if cfg.checkpoint_optimizer else None,
                                    fp, cfg.checkpoints_total_limit, last=last)
                accelerator.wait_for_everyone()
    bar.close()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    final = accelerator.unwrap_model(unet)
    final.save_pretrained(out / "unet", safe_serialization=True)
    summary = {
        "steps": cfg.max_train_steps,
        "resumed_from_step": start_step,
        "processes": world,
        "global_batch": cfg.train_batch_size * cfg.gradient_accumulation_steps * world,
        "attention_resolutions": resolutions,
        "train_examples": len(examples),
        "heldout_examples": len(heldout),
        "heldout_supervised_nouns": heldout_nouns,
        **{f"base_heldout_attention_{k}": v for k, v in base.items() if k in ("share", "iou")},
        # per-group loss values are in the dvclive curves; the summary keeps the headline ones
        **{f"final_{k}": v for k, v in last.items() if "/" not in k},
        **data_summary,
        "flags": _flags(cfg, data_summary, heldout, heldout_nouns),
    }
    summary["flagged"] = len(summary["flags"])  # a number, so `dvc metrics show` / `dvc exp show` list it
    logger.finish(summary, rejects)
    log.info("trained %d steps in %.1f s", cfg.max_train_steps - start_step, time.perf_counter() - t0)
    return summary


def _heldout_grounding(cfg, unet, vae, text_encoder, heldout_set, scheduler) -> dict[str, float]:
    """Attention share (overall and per group) and IoU (overall) on every held-out example."""
    g = evaluate_grounding(unet, vae, text_encoder, heldout_set, list(range(len(heldout_set))), cfg.attn_blocks,
                           seed=cfg.seed, scheduler=scheduler)
    return {k: v for k, v in g.items() if k == "iou" or k.startswith("share")}


def _flags(cfg: TrainConfig, data: dict, heldout: list, heldout_nouns: int) -> list[str]:
    """Why the run's grounding numbers cannot be read as success; empty when there is nothing to flag."""
    flags = random_weights_flags([cfg.pretrained])
    if data["supervised_nouns"] == 0 and (cfg.lambda_token > 0 or cfg.gamma_pixel > 0):
        flags.append("no_supervised_nouns: L_token and L_pixel were 0 throughout")
    if heldout and heldout_nouns == 0:
        flags.append("heldout_without_supervised_nouns: no held-out attention share was measured")
    masked = data["supervised_nouns"] + data["full_image_masks"]
    if masked and data["full_image_masks"] > masked / 2:
        flags.append(f"full_image_masks: {data['full_image_masks']} of {masked} masks cover more than "
                     f"train.max_mask_coverage={cfg.max_mask_coverage} of an attention map and were not supervised")
    for flag in flags:
        log.warning("train: %s", flag)
    return flags


def _encode(batch, positions, cfg, vae, text_encoder, scheduler, device, weight_dtype):
    """Latents, noisy latents, target, timesteps and text states for a micro-batch.

    Every random draw of example ``i`` comes from a generator keyed by its stream position.
    """
    with torch.no_grad():
        pixels = batch["pixel_values"].to(device, dtype=weight_dtype)
        dist = vae.encode(pixels).latent_dist
        latents, noise, timesteps = [], [], []
        for i, pos in enumerate(positions):
            g = _generator(cfg.seed, pos, 0)
            eps = torch.randn(dist.mean[i].shape, generator=g)
            latents.append(dist.mean[i] + dist.std[i] * eps.to(device, dist.std.dtype))
            noise.append(torch.randn(dist.mean[i].shape, generator=g).to(device))
            timesteps.append(int(torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=g)))
        latents = torch.stack(latents).float() * vae.config.scaling_factor
        noise = torch.stack(noise).float()
        t = torch.tensor(timesteps, device=device, dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, t)
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        elif scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
        text = text_encoder(batch["input_ids"].to(device))[0]
    return noisy, target, t, text


def _micro_step(cfg, batch, positions, unet, vae, text_encoder, scheduler, capture, accelerator, weight_dtype):
    device = accelerator.device
    noisy, target, t, text = _encode(batch, positions, cfg, vae, text_encoder, scheduler, device, weight_dtype)
    supervise = cfg.lambda_token > 0 or cfg.gamma_pixel > 0
    pred = unet(noisy, t, text).sample
    groups = capture.groups() if supervise else {}
    ldm = ldm_loss_per_example(pred, target)
    if not torch.isfinite(ldm).all():  # diverged: report it (_check_finite) before BCE rejects NaN inputs
        return ldm.mean(), {"total": float("nan")}
    if supervise:
        masks = {r: m.to(device) for r, m in batch["masks"].items()}
        grounding = grounding_losses(groups, masks, batch["token_indices"].to(device), batch["token_valid"].to(device),
                                     batch["noun_valid"].to(device), mode=cfg.loss_mode)
    else:
        grounding = {"token": {}, "pixel": {}}
    loss, logged = total_loss(ldm, grounding, cfg.lambda_token, cfg.gamma_pixel)
    return loss, {k: float(v) for k, v in logged.items()}


def _check_finite(accelerator, loss: torch.Tensor, step: int, batch: dict, out: Path) -> None:
    flag = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if float(flag) > 0:
        from pipeline.train.checkpoints import list_checkpoints

        ckpts = list_checkpoints(out / "checkpoints")
        good = str(ckpts[-1][1]) if ckpts else "none yet"
        ids = batch["caption_ids"].tolist()
        raise TrainingDiverged(
            f"non-finite loss ({float(loss)}) at step {step + 1} on caption ids {ids} "
            f"(process {accelerator.process_index}); last good checkpoint: {good}"
        )


def _mean_over_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def _broadcast_path(accelerator, path: Path | None) -> Path | None:
    if accelerator.num_processes == 1:
        return path
    from accelerate.utils import broadcast_object_list

    box = [str(path) if path else None]
    broadcast_object_list(box, from_process=0)
    return Path(box[0]) if box[0] else None


def _heatmap_rows(cfg, dataset, indices, unet, vae, text_encoder, scheduler, capture, weight_dtype):
    """For a few fixed examples: image, nouns, and each noun's head/layer-averaged map per group."""
    rows = []
    was_training = unet.training
    unet.eval()
    device = unet.device
    for idx in indices:
        item = dataset[idx]
        batch = collate([item])
        positions = [-(idx + 1)]  # fixed draws, independent of training positions
        noisy, _, _, text = _encode(batch, positions, cfg, vae, text_encoder, scheduler, device, weight_dtype)
        t = torch.full((1,), scheduler.config.num_train_timesteps // 2, device=device, dtype=torch.long)
        with torch.no_grad(), capture.active(True):
            unet(noisy, t, text)
            groups = {r: torch.stack([m.float().mean(1) for m in maps]).mean(0)[0]  # (Q, 77)
                      for r, maps in capture.groups().items()}
        capture.clear()
        example = dataset.examples[idx]
        rows.append({"item": item, "maps": groups, "caption": example.caption, "nouns": [n.text for n in example.nouns]})
    unet.train(was_training)
    return rows

