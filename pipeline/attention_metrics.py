"""How well cross-attention lands on the masks: the quantity the TokenCompose losses optimise.

``attention_share``: for every supervised (noun, token), the share of the token's attention
(heads and a group's layers averaged) that falls inside the noun's mask, averaged per
resolution group. ``evaluate_attention_share`` runs a UNet over held-out examples at fixed
timesteps and noise and reports it per group and overall.
"""

from __future__ import annotations

import math

import torch

from .attention import AttentionCapture
from .data import collate


def attention_share(maps: dict[int, torch.Tensor], masks: dict[int, torch.Tensor], token_indices: torch.Tensor,
                    token_valid: torch.Tensor, noun_valid: torch.Tensor) -> dict[int, tuple[float, int]]:
    """Per group r: (sum of shares, count) over valid (noun, token) pairs.

    maps: {r: (B, r*r, 77)} head- and layer-averaged probabilities; masks: {r: (B, N, r, r)};
    token_indices/token_valid: (B, N, T); noun_valid: (B, N).
    """
    out = {}
    for r, m in maps.items():
        b, q, _ = m.shape
        idx = token_indices.clamp(0, m.shape[-1] - 1).flatten(1)  # (B, N*T)
        tok = torch.gather(m, 2, idx[:, None, :].expand(b, q, idx.shape[1])).view(b, q, *token_indices.shape[1:])
        mask = masks[r].flatten(2).transpose(1, 2)[..., None].to(tok.dtype)  # (B, Q, N, 1)
        inside = (tok * mask).sum(1) / tok.sum(1).clamp_min(1e-12)  # (B, N, T)
        valid = token_valid & noun_valid[..., None]
        out[r] = (float(inside[valid].sum()), int(valid.sum()))
    return out


@torch.no_grad()
def evaluate_attention_share(unet, vae, text_encoder, dataset, indices: list[int], blocks=("mid", "up"),
                             timesteps: tuple[int, ...] = (200, 500, 800), seed: int = 0,
                             scheduler=None) -> dict[str, float]:
    """Mean attention share inside the masks over ``indices`` of ``dataset``: {"r<r>": .., "mean": ..}."""
    device, dtype = unet.device, unet.dtype
    was_training = unet.training
    unet.eval()
    totals: dict[int, list[float]] = {}
    with AttentionCapture(unet, blocks=blocks) as capture:
        for idx in indices:
            batch = collate([dataset[idx]])
            if not batch["noun_valid"].any():
                continue
            latents = vae.encode(batch["pixel_values"].to(device, vae.dtype)).latent_dist.mean
            latents = latents.float() * vae.config.scaling_factor
            text = text_encoder(batch["input_ids"].to(device))[0].to(dtype)
            for t in timesteps:
                g = torch.Generator().manual_seed(seed * 1_000_003 + idx * 1009 + t)
                noise = torch.randn(latents.shape, generator=g).to(device)
                tt = torch.tensor([t], device=device)
                noisy = scheduler.add_noise(latents, noise, tt) if scheduler is not None else latents + noise
                unet(noisy.to(dtype), tt, text)
                maps = {r: torch.stack([p.float().mean(1) for p in ps]).mean(0) for r, ps in capture.groups().items()}
                share = attention_share(maps, batch["masks"], batch["token_indices"], batch["token_valid"],
                                        batch["noun_valid"])
                for r, (s, n) in share.items():
                    acc = totals.setdefault(r, [0.0, 0])
                    acc[0] += s
                    acc[1] += n
    unet.train(was_training)
    result = {f"r{r}": (s / n if n else math.nan) for r, (s, n) in sorted(totals.items())}
    counts = sum(n for _, n in totals.values())
    result["mean"] = sum(s for s, _ in totals.values()) / counts if counts else math.nan
    return result
