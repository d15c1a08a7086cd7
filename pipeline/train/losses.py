"""TokenCompose grounding losses on captured cross-attention maps (pure functions, batched).

Shapes: ``B`` batch, ``H`` heads of a layer, ``r`` a group's resolution, ``Q = r * r`` latent
positions, ``S`` text positions (77), ``N`` nouns per example (padded), ``T`` tokens per noun
(padded).

Inputs shared by the loss functions:

- ``probs_list``: the group's layers' maps, each ``(B, H, Q, S)`` post-softmax over ``S``
  (``H`` may differ between layers; ``B``, ``Q``, ``S`` may not).
- ``masks``: ``(B, N, r, r)`` float in {0, 1}, each noun's mask resized to ``r``
  (:func:`resize_mask`).
- ``token_indices``: ``(B, N, T)`` integer positions in the text sequence (start token = 0);
  padded entries may hold anything.
- ``token_valid``: ``(B, N, T)`` bool, which entries of ``token_indices`` are real tokens.
- ``noun_valid``: ``(B, N)`` bool, nouns that have a mask and are supervised; each must have
  at least one valid token.

Every loss is per example ``(B,)``, divided by ``N_b = noun_valid[b].sum()``; an example with
``N_b = 0`` gets exactly 0 and a zero gradient. Padding (invalid nouns and tokens, whatever
their indices and masks hold) never changes a result. Losses are computed in float32 with
autocast off, whatever the maps' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("official", "paper")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_inputs(
    probs_list: list[torch.Tensor],
    masks: torch.Tensor,
    token_indices: torch.Tensor,
    token_valid: torch.Tensor,
    noun_valid: torch.Tensor,
) -> tuple[int, int, int, int]:
    """Validate shapes, dtypes and index ranges; return ``(B, N, Q, S)``."""
    if not isinstance(probs_list, (list, tuple)) or len(probs_list) == 0:
        raise ValueError("probs_list must be a non-empty list of (B, H, Q, S) maps")
    for i, p in enumerate(probs_list):
        if p.ndim != 4:
            raise ValueError(f"probs_list[{i}] must be (B, H, Q, S), got shape {tuple(p.shape)}")
    b, _, q, s = probs_list[0].shape
    for i, p in enumerate(probs_list):
        if (p.shape[0], p.shape[2], p.shape[3]) != (b, q, s):
            raise ValueError(
                f"probs_list[{i}] has shape {tuple(p.shape)}; layers of a group must share B, Q, S "
                f"= {(b, q, s)}"
            )
    if masks.ndim != 4 or masks.shape[0] != b or masks.shape[2] * masks.shape[3] != q:
        raise ValueError(f"masks must be (B={b}, N, r, r) with r * r = {q}, got {tuple(masks.shape)}")
    n = masks.shape[1]
    if token_indices.ndim != 3 or token_indices.shape[:2] != (b, n):
        raise ValueError(f"token_indices must be (B={b}, N={n}, T), got {tuple(token_indices.shape)}")
    if token_indices.dtype.is_floating_point or token_indices.dtype == torch.bool:
        raise TypeError(f"token_indices must be an integer tensor, got {token_indices.dtype}")
    if token_valid.shape != token_indices.shape or token_valid.dtype != torch.bool:
        raise ValueError(
            f"token_valid must be a bool tensor of shape {tuple(token_indices.shape)}, "
            f"got {token_valid.dtype} {tuple(token_valid.shape)}"
        )
    if noun_valid.shape != (b, n) or noun_valid.dtype != torch.bool:
        raise ValueError(
            f"noun_valid must be a bool tensor of shape {(b, n)}, got {noun_valid.dtype} {tuple(noun_valid.shape)}"
        )
    out_of_range = token_valid & ((token_indices < 0) | (token_indices >= s))
    if bool(out_of_range.any()):
        raise ValueError(f"valid token indices must lie in [0, {s}); got {token_indices[out_of_range].tolist()}")
    tokenless = noun_valid & ~token_valid.any(dim=-1)
    if bool(tokenless.any()):
        raise ValueError(f"supervised nouns without any valid token at (example, noun) {tokenless.nonzero().tolist()}")
    return b, n, q, s


def _safe_indices(token_indices: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """``(B, N, T)`` long with padded entries set to 0 so that gathers stay in range."""
    return torch.where(token_valid, token_indices, torch.zeros_like(token_indices)).long()


def _noun_mean(per_noun: torch.Tensor, noun_valid: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` -> ``(B,)``: sum over supervised nouns / ``N_b``; 0 (and no gradient) if ``N_b = 0``."""
    kept = torch.where(noun_valid, per_noun, torch.zeros_like(per_noun))
    return kept.sum(dim=-1) / noun_valid.sum(dim=-1).clamp_min(1).to(per_noun.dtype)


def _fp32(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def token_loss(
    probs_list: list[torch.Tensor],
    masks: torch.Tensor,
    token_indices: torch.Tensor,
    token_valid: torch.Tensor,
    noun_valid: torch.Tensor,
    mode: str = "official",
) -> torch.Tensor:
    """L_token of one resolution group -> ``(B,)``.

    For layer ``l``, example ``b``, noun ``n`` with tokens ``t`` (positions ``s_t``) and head ``h``::

        ratio[l, b, h, n, t] = sum_q A[l, b, h, q, s_t] * M[b, n, q] / sum_q A[l, b, h, q, s_t]
        ratio_bar            = mean_h ratio
        official: e[l, b, n, t] = (1 - ratio_bar) ** 2        (the official code)
        paper:    e[l, b, n, t] =  1 - ratio_bar              (the paper's equation: no square)
        L_token[b] = (1 / N_b) * sum_{n supervised} sum_l mean_{t of n} e[l, b, n, t]

    The modes differ only in the square: official weights a token's error quadratically
    (gradient 2 (1 - ratio_bar), vanishing as the ratio nears 1), paper linearly (constant
    gradient). The official code's mean over ``b * heads`` is a mean over heads here, since
    its batch was 1. A noun with an empty mask has ratio 0, so every token costs 1 in both
    modes and gets no gradient from this term.
    """
    _check_mode(mode)
    b, n, _, _ = _check_inputs(probs_list, masks, token_indices, token_valid, noun_valid)
    t = token_indices.shape[-1]
    device = probs_list[0].device
    with _fp32(device):
        m = masks.float().flatten(2)                                       # (B, N, Q)
        idx = _safe_indices(token_indices, token_valid)                    # (B, N, T)
        tv = token_valid.float()
        n_tokens = tv.sum(dim=-1).clamp_min(1)                             # (B, N)
        per_noun = torch.zeros(b, n, device=device)
        for probs in probs_list:
            p = probs.float()
            h = p.shape[1]
            inside = torch.einsum("bhqs,bnq->bhns", p, m)                  # (B, H, N, S)
            total = p.sum(dim=2)                                           # (B, H, S)
            inside_t = inside.gather(-1, idx.unsqueeze(1).expand(b, h, n, t))        # (B, H, N, T)
            total_t = total.gather(-1, idx.reshape(b, 1, n * t).expand(b, h, n * t))
            total_t = total_t.reshape(b, h, n, t)
            total_t = torch.where(token_valid.unsqueeze(1), total_t, torch.ones_like(total_t))
            ratio = (inside_t / total_t).mean(dim=1)                       # (B, N, T)
            err = 1.0 - ratio
            if mode == "official":
                err = err**2
            per_noun = per_noun + (err * tv).sum(dim=-1) / n_tokens        # (B, N)
        return _noun_mean(per_noun, noun_valid)


def pixel_loss(
    probs_list: list[torch.Tensor],
    masks: torch.Tensor,
    token_indices: torch.Tensor,
    token_valid: torch.Tensor,
    noun_valid: torch.Tensor,
    mode: str = "official",
) -> torch.Tensor:
    """L_pixel of one resolution group -> ``(B,)``.

    ::

        A_bar[b, q, s]  = mean_l mean_h A[l, b, h, q, s]               (heads, then layers)
        P[b, n, q]      = sum_{t of n} A_bar[b, q, s_t]                 (a noun's tokens summed)
        bce[b, n]       = -mean_q [M log P + (1 - M) log(1 - P)]        (logs clamped at -100,
                                                                          as torch's BCELoss)
        L_pixel[b]      = (1 / N_b) * sum_{n supervised} bce[b, n]

    ``P`` is clamped to [0, 1] before the BCE (a sum of softmax probabilities is at most 1;
    the clamp only absorbs float rounding, which BCELoss would reject). A noun with an empty
    mask is a valid target: its loss is ``-mean_q log(1 - P)``, pushing that noun's attention
    towards 0 everywhere. ``mode="paper"`` is the same computation: the paper writes the
    pixel term as this per-pixel BCE between a noun's map and its mask, and the only known
    departure of the official code from the paper's equations is the square in L_token.
    """
    _check_mode(mode)
    b, n, _, s = _check_inputs(probs_list, masks, token_indices, token_valid, noun_valid)
    device = probs_list[0].device
    with _fp32(device):
        m = masks.float().flatten(2)                                       # (B, N, Q)
        idx = _safe_indices(token_indices, token_valid)                    # (B, N, T)
        avg = torch.stack([p.float().mean(dim=1) for p in probs_list]).mean(dim=0)   # (B, Q, S)
        weights = torch.zeros(b, n, s, device=device).scatter_add_(-1, idx, token_valid.float())
        noun_maps = torch.einsum("bqs,bns->bnq", avg, weights).clamp(0.0, 1.0)       # (B, N, Q)
        bce = F.binary_cross_entropy(noun_maps, m, reduction="none").mean(dim=-1)   # (B, N)
        return _noun_mean(bce, noun_valid)


def grounding_losses(
    groups: dict[int, list[torch.Tensor]],
    masks: dict[int, torch.Tensor],
    token_indices: torch.Tensor,
    token_valid: torch.Tensor,
    noun_valid: torch.Tensor,
    mode: str = "official",
) -> dict[str, dict[int, torch.Tensor]]:
    """Both losses for every group -> ``{"token": {r: (B,)}, "pixel": {r: (B,)}}``.

    ``groups``: ``{r: [(B, H, r * r, S) per layer]}`` (``AttentionCapture.groups()``);
    ``masks``: ``{r: (B, N, r, r)}`` holding at least every ``r`` of ``groups``.
    """
    _check_mode(mode)
    if not groups:
        raise ValueError("no attention groups given; was the UNet run inside AttentionCapture?")
    missing = sorted(set(groups) - set(masks))
    if missing:
        raise KeyError(f"no masks at resolution(s) {missing}; masks are given for {sorted(masks)}")
    out: dict[str, dict[int, torch.Tensor]] = {"token": {}, "pixel": {}}
    for r, probs_list in groups.items():
        if tuple(masks[r].shape[-2:]) != (r, r):
            raise ValueError(f"masks[{r}] must be (B, N, {r}, {r}), got {tuple(masks[r].shape)}")
        args = (probs_list, masks[r], token_indices, token_valid, noun_valid)
        out["token"][r] = token_loss(*args, mode=mode)
        out["pixel"][r] = pixel_loss(*args, mode=mode)
    return out


def total_loss(
    ldm_per_example: torch.Tensor,
    grounding: dict[str, dict[int, torch.Tensor]],
    lambda_token: float,
    gamma_pixel: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mean_b [ldm[b] + lambda * sum_r token[r][b] + gamma * sum_r pixel[r][b]]`` and its parts.

    ``ldm_per_example``: ``(B,)``; ``grounding``: :func:`grounding_losses` output (empty dicts
    for a run without grounding). Returns the scalar to backpropagate and detached scalar
    batch means for logging: ``total``, ``ldm``, ``token``, ``pixel`` (sums over groups,
    unweighted) and ``token/<r>``, ``pixel/<r>``.
    """
    if ldm_per_example.ndim != 1:
        raise ValueError(f"ldm_per_example must be (B,), got shape {tuple(ldm_per_example.shape)}")
    for kind in ("token", "pixel"):
        if kind not in grounding:
            raise KeyError(f"grounding has no {kind!r} entry; expected grounding_losses() output")
        for r, value in grounding[kind].items():
            if value.shape != ldm_per_example.shape:
                raise ValueError(
                    f"{kind}/{r} has shape {tuple(value.shape)}, expected {tuple(ldm_per_example.shape)}"
                )
    ldm = ldm_per_example.float()
    token_sum = sum(grounding["token"].values(), torch.zeros_like(ldm))
    pixel_sum = sum(grounding["pixel"].values(), torch.zeros_like(ldm))
    total = (ldm + lambda_token * token_sum + gamma_pixel * pixel_sum).mean()
    parts = {
        "total": total.detach(),
        "ldm": ldm.mean().detach(),
        "token": token_sum.mean().detach(),
        "pixel": pixel_sum.mean().detach(),
    }
    for kind in ("token", "pixel"):
        for r, value in grounding[kind].items():
            parts[f"{kind}/{r}"] = value.mean().detach()
    return total, parts
