"""One micro-step of training: encode a micro-batch, run the UNet, L_LDM + the grounding losses.

Every random draw of example ``i`` (the VAE posterior sample, the noise, the timestep) comes
from a generator keyed by its global stream position (``order.seeded_generator``), drawn on
the CPU and moved to the device, so a step is the same function of (seed, positions) on any
device count and after a resume.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pipeline.models.conditioning import TextConditioner
from pipeline.train.config import TrainConfig
from pipeline.train.losses import grounding_losses, total_loss
from pipeline.train.order import seeded_generator


class TrainingDiverged(RuntimeError):
    """A non-finite loss: names the step and the examples; the last good checkpoint stays."""


def ldm_loss_per_example(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over all latent elements, one value per example: (B, C, h, w) -> (B,)."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)


def _draws(dist, positions: list[int], seed: int, num_timesteps: int, device):
    """Posterior samples (B, C, h, w), noise (B, C, h, w) and timesteps [B] of the positions."""
    latents, noise, timesteps = [], [], []
    for i, pos in enumerate(positions):
        g = seeded_generator(seed, pos, 0)
        eps = torch.randn(dist.mean[i].shape, generator=g)
        latents.append(dist.mean[i] + dist.std[i] * eps.to(device, dist.std.dtype))
        noise.append(torch.randn(dist.mean[i].shape, generator=g).to(device))
        timesteps.append(int(torch.randint(0, num_timesteps, (1,), generator=g)))
    return torch.stack(latents).float(), torch.stack(noise).float(), timesteps


@torch.no_grad()
def encode_batch(batch: dict, positions: list[int], seed: int, vae, text: TextConditioner, scheduler, device):
    """``(noisy, target, t, cond)`` of a micro-batch: (B, C, h, w), (B, C, h, w), [B], and
    ``cond = (hidden (B, 77, D), added_cond_kwargs or None)`` (``TextConditioner``)."""
    if "latent_mean" in batch:  # train.cache_latents: the posterior of each image, encoded once
        dist = SimpleNamespace(mean=batch["latent_mean"].to(device), std=batch["latent_std"].to(device))
    else:  # in the VAE's dtype: SDXL's VAE stays fp32 under fp16 (force_upcast)
        dist = vae.encode(batch["pixel_values"].to(device, dtype=vae.dtype)).latent_dist
    latents, noise, timesteps = _draws(dist, positions, seed, scheduler.config.num_train_timesteps, device)
    latents = latents * vae.config.scaling_factor
    t = torch.tensor(timesteps, device=device, dtype=torch.long)
    noisy = scheduler.add_noise(latents, noise, t)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
    return noisy, target, t, text(batch, device)


def micro_step(cfg: TrainConfig, batch: dict, positions: list[int], models, capture, device
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one micro-batch (a scalar with its graph) and its parts as floats.

    ``models``: an object with ``unet``, ``vae``, ``text`` (a ``TextConditioner``) and ``scheduler``;
    the capture must be active when ``cfg.supervise``.
    """
    noisy, target, t, (hidden, added) = encode_batch(batch, positions, cfg.seed, models.vae, models.text,
                                                     models.scheduler, device)
    pred = models.unet(noisy, t, hidden, added_cond_kwargs=added).sample
    groups = capture.groups() if cfg.supervise else {}
    ldm = ldm_loss_per_example(pred, target)
    if not torch.isfinite(ldm).all():  # diverged: reported by check_finite before BCE rejects NaN inputs
        return ldm.mean(), {"total": float("nan")}
    if cfg.supervise:
        masks = {r: m.to(device) for r, m in batch["masks"].items()}
        grounding = grounding_losses(groups, masks, batch["token_indices"].to(device),
                                     batch["token_valid"].to(device), batch["noun_valid"].to(device),
                                     mode=cfg.loss_mode)
    else:
        grounding = {"token": {}, "pixel": {}}
    loss, logged = total_loss(ldm, grounding, cfg.lambda_token, cfg.gamma_pixel)
    return loss, {k: float(v) for k, v in logged.items()}


def check_finite(accelerator, loss: torch.Tensor, step: int, batch: dict, run_folder: Path) -> None:
    """Raise :class:`TrainingDiverged` on every process when any process's loss is not finite,
    naming the newest checkpoint in ``run_folder`` (listed only then, not at every micro-step)."""
    flag = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")
    if float(flag) > 0:
        from pipeline.train.checkpoints import list_checkpoints

        ckpts = list_checkpoints(run_folder)
        last_good = ckpts[-1][1] if ckpts else None
        ids = batch["caption_ids"].tolist()
        raise TrainingDiverged(
            f"non-finite loss ({float(loss)}) at step {step + 1} on caption ids {ids} "
            f"(process {accelerator.process_index}); last good checkpoint: {last_good or 'none yet'}"
        )
