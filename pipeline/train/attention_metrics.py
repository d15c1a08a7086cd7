"""How well cross-attention lands on the masks: the quantities the TokenCompose losses optimise.

Two per-(noun, token) scores, each averaged per resolution group ``r`` (a group's layers
and the heads averaged into one ``(r*r, 77)`` map per example first):

- ``attention_share``: the share of the token's attention that falls inside the noun's mask;
- ``attention_iou``: the IoU of the token's min-max normalised map, thresholded, with the mask.

``evaluate_grounding`` runs a UNet over held-out examples at fixed timesteps and noise and
reports both, per group and overall; ``evaluate_attention_share`` is its share-only view
(what the train stage logs).

Which pairs count: a pair is a (noun, token) with ``noun_valid`` and ``token_valid`` true.
The share counts every such pair, also at a resolution where the noun's mask has no pixel
left (``train/dataset.py`` downsamples masks with ``> 0`` after non-antialiased bilinear resizing, so
thin objects can vanish at small ``r`` while ``noun_valid`` stays true); its share there is 0,
as before. The IoU skips those pairs at that resolution: with an empty mask the IoU says
nothing about grounding (it is 0 for any non-empty prediction).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from einops import rearrange

from pipeline.train.attention import AttentionCapture, average_maps
from pipeline.train.dataset import collate

log = logging.getLogger(__name__)


def _token_maps(m: torch.Tensor, token_indices: torch.Tensor) -> torch.Tensor:
    """``(B, Q, S)`` maps, ``(B, N, T)`` token positions -> ``(B, Q, N, T)`` the tokens' maps.

    Positions are clamped into ``[0, S)`` (padding entries are 0, the start token; callers mask them).
    """
    b, q, s = m.shape
    idx = token_indices.to(m.device).clamp(0, s - 1).flatten(1)  # (B, N*T)
    tok = torch.gather(m, 2, idx[:, None, :].expand(b, q, idx.shape[1]))
    return tok.view(b, q, *token_indices.shape[1:])


def _pair_valid(token_valid: torch.Tensor, noun_valid: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``(B, N, T)`` bool: the (noun, token) pairs to score."""
    return (token_valid & noun_valid[..., None]).to(device)


def attention_share(maps: dict[int, torch.Tensor], masks: dict[int, torch.Tensor], token_indices: torch.Tensor,
                    token_valid: torch.Tensor, noun_valid: torch.Tensor) -> dict[int, tuple[float, int]]:
    """Per group r: (sum of shares, count) over valid (noun, token) pairs.

    ``share = sum_q A[q, tok] * M[q] / sum_q A[q, tok]`` with ``A`` the map and ``M`` the mask at r.

    maps: {r: (B, r*r, 77)} head- and layer-averaged probabilities; masks: {r: (B, N, r, r)};
    token_indices/token_valid: (B, N, T); noun_valid: (B, N).
    """
    out = {}
    for r, m in maps.items():
        tok = _token_maps(m, token_indices)  # (B, Q, N, T)
        mask = rearrange(masks[r].to(device=m.device, dtype=tok.dtype), "b n h w -> b (h w) n 1")
        inside = (tok * mask).sum(1) / tok.sum(1).clamp_min(1e-12)  # (B, N, T)
        valid = _pair_valid(token_valid, noun_valid, m.device)
        out[r] = (float(inside[valid].sum()), int(valid.sum()))
    return out


def attention_iou(maps: dict[int, torch.Tensor], masks: dict[int, torch.Tensor], token_indices: torch.Tensor,
                  token_valid: torch.Tensor, noun_valid: torch.Tensor,
                  threshold: float = 0.5) -> dict[int, tuple[float, int]]:
    """Per group r: (sum of IoUs, count) over valid (noun, token) pairs whose mask at r is not empty.

    For a pair with the token's map ``A`` (``Q = r*r`` values) and the noun's mask ``M`` at r::

        Â = (A - min_q A) / max(max_q A - min_q A, 1e-12)      # min-max normalised, per map
        P = Â >= threshold                                     # predicted region
        IoU = |P ∩ M| / |P ∪ M|                                # M = mask > 0.5

    A constant map normalises to all zeros: P is empty for ``threshold > 0`` and the IoU is 0.
    Pairs whose mask has no pixel at r are skipped (see the module docstring); every counted
    pair has a non-empty union. Shapes as :func:`attention_share`: maps {r: (B, r*r, 77)},
    masks {r: (B, N, r, r)}, token_indices/token_valid (B, N, T), noun_valid (B, N).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    out = {}
    for r, m in maps.items():
        tok = _token_maps(m.float(), token_indices)  # (B, Q, N, T)
        lo, hi = tok.amin(1, keepdim=True), tok.amax(1, keepdim=True)
        pred = (tok - lo) / (hi - lo).clamp_min(1e-12) >= threshold
        mask = rearrange(masks[r].to(m.device) > 0.5, "b n h w -> b (h w) n 1")
        inter = (pred & mask).sum(1)  # (B, N, T)
        union = (pred | mask).sum(1)
        iou = inter.float() / union.clamp_min(1).float()
        valid = _pair_valid(token_valid, noun_valid, m.device) & mask.any(1)  # mask.any(1): (B, N, 1)
        out[r] = (float(iou[valid].sum()), int(valid.sum()))
    return out


@dataclass
class GroundingTotals:
    """Sums and counts behind the grounding means: ``{r: [sum, pairs]}`` for share and IoU.

    Totals of disjoint example sets add up (:meth:`merge`, or a sum over processes of
    :meth:`to_tensor`), so the held-out set can be split over processes and reduced.
    """

    shares: dict[int, list] = field(default_factory=dict)
    ious: dict[int, list] = field(default_factory=dict)
    pairs: int = 0

    def add(self, shares: dict[int, tuple[float, int]], ious: dict[int, tuple[float, int]], pairs: int) -> None:
        for totals, scores in ((self.shares, shares), (self.ious, ious)):
            for r, (s, n) in scores.items():
                acc = totals.setdefault(r, [0.0, 0])
                acc[0] += s
                acc[1] += n
        self.pairs += pairs

    def to_tensor(self, resolutions: list[int]) -> torch.Tensor:
        """``(4 * len(resolutions) + 1,)`` float64: share sum, share count, IoU sum, IoU count per r; pairs."""
        values = []
        for r in resolutions:
            values += [*self.shares.get(r, [0.0, 0]), *self.ious.get(r, [0.0, 0])]
        return torch.tensor(values + [self.pairs], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor, resolutions: list[int]) -> GroundingTotals:
        v = t.cpu().tolist()
        out = cls(pairs=int(v[-1]))
        for i, r in enumerate(resolutions):
            s_sum, s_n, i_sum, i_n = v[4 * i: 4 * i + 4]
            if s_n:
                out.shares[r] = [s_sum, int(s_n)]
            if i_n or s_n:
                out.ious[r] = [i_sum, int(i_n)]
        return out

    def means(self) -> dict[str, float]:
        """``{"share_r<r>", "iou_r<r>"}`` per group, ``"share"``/``"iou"`` pair-weighted, ``"pairs"``."""
        skipped = {r: self.shares[r][1] - self.ious[r][1] for r in self.shares
                   if r in self.ious and self.shares[r][1] != self.ious[r][1]}
        if skipped:
            log.info("attention IoU: skipped pairs whose mask is empty at that resolution: %s", skipped)
        return {**_means("share", self.shares), **_means("iou", self.ious), "pairs": self.pairs}


def _means(prefix: str, totals: dict[int, list]) -> dict[str, float]:
    """``{"<prefix>_r<r>": mean per group, "<prefix>": pair-weighted mean over groups}``."""
    out = {f"{prefix}_r{r}": (s / n if n else math.nan) for r, (s, n) in sorted(totals.items())}
    count = sum(n for _, n in totals.values())
    out[prefix] = sum(s for s, _ in totals.values()) / count if count else math.nan
    return out


def eval_noise(shape: torch.Size, seed: int, idx: int, t: int) -> torch.Tensor:
    """The fixed CPU noise of example ``idx`` at timestep ``t``: the same for every UNet evaluated."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + idx * 1009 + t)
    return torch.randn(shape, generator=g)


@torch.no_grad()
def grounding_totals(unet, vae, text, dataset, indices: list[int], blocks=("mid", "up"),
                     timesteps: tuple[int, ...] = (200, 500, 800), seed: int = 0, scheduler=None,
                     iou_threshold: float = 0.5) -> GroundingTotals:
    """Share and IoU sums over ``indices`` of ``dataset`` (see :func:`evaluate_grounding`)."""
    device, dtype = unet.device, unet.dtype
    was_training = unet.training
    unet.eval()
    totals = GroundingTotals()
    try:
        with AttentionCapture(unet, blocks=blocks) as capture:
            for idx in indices:
                batch = collate([dataset[idx]])
                if not batch["noun_valid"].any():
                    continue
                latents = vae.encode(batch["pixel_values"].to(device, vae.dtype)).latent_dist.mean
                latents = latents.float() * vae.config.scaling_factor
                hidden, added = text(batch, device, dtype)
                for t in timesteps:
                    noise = eval_noise(latents.shape, seed, idx, t).to(device)
                    tt = torch.tensor([t], device=device)
                    noisy = scheduler.add_noise(latents, noise, tt) if scheduler is not None else latents + noise
                    unet(noisy.to(dtype), tt, hidden, added_cond_kwargs=added)
                    maps = average_maps(capture.groups(), device="cpu")  # {r: (1, r*r, 77)}
                    capture.clear()
                    args = (maps, batch["masks"], batch["token_indices"], batch["token_valid"], batch["noun_valid"])
                    totals.add(attention_share(*args), attention_iou(*args, threshold=iou_threshold),
                               int((batch["token_valid"] & batch["noun_valid"][..., None]).sum()))
    finally:
        unet.train(was_training)
    return totals


def evaluate_grounding(unet, vae, text, dataset, indices: list[int], blocks=("mid", "up"),
                       timesteps: tuple[int, ...] = (200, 500, 800), seed: int = 0, scheduler=None,
                       iou_threshold: float = 0.5) -> dict[str, float]:
    """Attention share and IoU on ``indices`` of ``dataset`` (items as ``TokenComposeDataset``'s).

    ``text``: a ``TextConditioner`` (SD1.x/2.x or SDXL) of the model's text encoder(s).

    For each example with a supervised noun and each timestep ``t``: the VAE latent mean
    (scaled), noised with :func:`eval_noise` ``(seed, idx, t)`` through ``scheduler.add_noise``
    (``latents + noise`` without a scheduler), one UNet forward with the caption, maps averaged
    over heads and a group's layers -> :func:`attention_share` and :func:`attention_iou`.

    Returns ``{"share_r<r>", "iou_r<r>"}`` per group, ``"share"`` and ``"iou"`` (means weighted
    by pairs over all groups) and ``"pairs"``: the number of (noun, token, timestep) pairs
    scored (the share's count per group; the IoU skips pairs with an empty mask at r, see the
    module docstring). Without any supervised noun: only NaN ``share``/``iou`` and 0 pairs.
    The UNet runs in eval mode and gets its training mode back.
    """
    return grounding_totals(unet, vae, text, dataset, indices, blocks, timesteps, seed, scheduler,
                            iou_threshold).means()


def evaluate_attention_share(unet, vae, text, dataset, indices: list[int], blocks=("mid", "up"),
                             timesteps: tuple[int, ...] = (200, 500, 800), seed: int = 0,
                             scheduler=None) -> dict[str, float]:
    """Mean attention share inside the masks over ``indices`` of ``dataset``: {"r<r>": .., "mean": ..}.

    The share part of :func:`evaluate_grounding` (same noise, same pairs).
    """
    result = evaluate_grounding(unet, vae, text, dataset, indices, blocks, timesteps, seed, scheduler)
    out = {key.removeprefix("share_"): v for key, v in result.items() if key.startswith("share_r")}
    out["mean"] = result["share"]
    return out
