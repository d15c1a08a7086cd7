"""Grounding losses: hand-computed values, padding, batching, a loop reference, resize_mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from pipeline.core.masks import resize_mask
from pipeline.train.losses import grounding_losses, pixel_loss, token_loss, total_loss

S = 77


def ln(x: float) -> float:
    return math.log(x)


def layer(columns: dict[int, list[list[float]]], heads: int = 2, q: int = 4) -> torch.Tensor:
    """``(1, heads, q, S)`` map, zero except the given token columns: ``{token: [per head: q values]}``."""
    p = torch.zeros(1, heads, q, S)
    for token, per_head in columns.items():
        p[0, :, :, token] = torch.tensor(per_head)
    return p


# Hand example, r = 2 (pixels in row-major order q0..q3), 2 heads.
# noun 0 "dog": token 2, mask {q0}; noun 1 "teddy bear": tokens 4, 5, mask {q0, q1};
# noun 2: token 3, empty mask (used by the empty-mask tests only).
L1 = layer(
    {
        2: [[0.4, 0.2, 0.1, 0.3], [0.1, 0.1, 0.1, 0.2]],
        4: [[0.3, 0.3, 0.2, 0.2], [0.5, 0.3, 0.1, 0.1]],
        5: [[0.1, 0.1, 0.1, 0.1], [0.0, 0.2, 0.1, 0.1]],
        3: [[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2]],
    }
)
L2 = layer({t: [[0.25] * 4, [0.25] * 4] for t in (2, 3, 4, 5)})
MASKS = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]]])            # (1, 2, 2, 2)
IDX = torch.tensor([[[2, 0], [4, 5]]])                                                 # (1, 2, 2)
TV = torch.tensor([[[True, False], [True, True]]])
NV = torch.tensor([[True, True]])

# Token loss by hand, layer L1:
#   dog: head ratios 0.4/1.0 = 0.4 and 0.1/0.5 = 0.2 -> mean 0.3 -> (1 - 0.3)^2 = 0.49 | paper 0.7
#   teddy: token 4: 0.6/1.0, 0.8/1.0 -> 0.7 -> 0.09 | 0.3; token 5: 0.2/0.4, 0.2/0.4 -> 0.5 -> 0.25 | 0.5
#          mean over its tokens 0.17 | 0.4
#   L1 = (0.49 + 0.17) / 2 = 0.33 | (0.7 + 0.4) / 2 = 0.55
# Layer L2 (uniform 0.25): dog ratio 0.25 -> 0.5625 | 0.75; teddy ratios 0.5 -> 0.25 | 0.5
#   L2 = (0.5625 + 0.25) / 2 = 0.40625 | (0.75 + 0.5) / 2 = 0.625
TOKEN_L1 = {"official": 0.33, "paper": 0.55}
TOKEN_L1_L2 = {"official": 0.33 + 0.40625, "paper": 0.55 + 0.625}

# Pixel loss by hand, layer L1 (heads averaged):
#   dog map [0.25, 0.15, 0.10, 0.25] vs mask [1, 0, 0, 0]
#   teddy map = token 4 [0.4, 0.3, 0.15, 0.15] + token 5 [0.05, 0.15, 0.1, 0.1] = [0.45, 0.45, 0.25, 0.25]
BCE_DOG_L1 = -(ln(0.25) + ln(0.85) + ln(0.90) + ln(0.75)) / 4
BCE_TEDDY_L1 = -(ln(0.45) + ln(0.45) + ln(0.75) + ln(0.75)) / 4
PIXEL_L1 = (BCE_DOG_L1 + BCE_TEDDY_L1) / 2
# Layers L1 and L2 averaged: dog [0.25, 0.2, 0.175, 0.25]; teddy [0.475, 0.475, 0.375, 0.375]
PIXEL_L1_L2 = (
    -(ln(0.25) + ln(0.8) + ln(0.825) + ln(0.75)) / 4
    - (ln(0.475) + ln(0.475) + ln(0.625) + ln(0.625)) / 4
) / 2


def close(a: torch.Tensor, expected: list[float] | float) -> None:
    expected = torch.tensor(expected if isinstance(expected, list) else [expected], dtype=torch.float32)
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_token_loss_by_hand(mode):
    close(token_loss([L1], MASKS, IDX, TV, NV, mode=mode), TOKEN_L1[mode])
    close(token_loss([L1, L2], MASKS, IDX, TV, NV, mode=mode), TOKEN_L1_L2[mode])


def test_official_and_paper_differ_by_the_square():
    one = dict(masks=MASKS[:, :1], token_indices=IDX[:, :1, :1], token_valid=TV[:, :1, :1], noun_valid=NV[:, :1])
    official = token_loss([L1], **one, mode="official")
    paper = token_loss([L1], **one, mode="paper")
    close(official, 0.49)
    close(paper, 0.7)
    torch.testing.assert_close(official, paper**2)


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_pixel_loss_by_hand(mode):
    close(pixel_loss([L1], MASKS, IDX, TV, NV, mode=mode), PIXEL_L1)
    close(pixel_loss([L1, L2], MASKS, IDX, TV, NV, mode=mode), PIXEL_L1_L2)


def with_empty_noun() -> dict:
    masks = torch.cat([MASKS, torch.zeros(1, 1, 2, 2)], dim=1)
    idx = torch.tensor([[[2, 0], [4, 5], [3, 0]]])
    tv = torch.tensor([[[True, False], [True, True], [True, False]]])
    return dict(masks=masks, token_indices=idx, token_valid=tv, noun_valid=torch.ones(1, 3, dtype=torch.bool))


def test_empty_mask_costs_one_per_token_without_gradient():
    inputs = with_empty_noun()
    # ratio 0 for the empty noun -> loss 1 in both modes: (0.49 + 0.17 + 1) / 3 | (0.7 + 0.4 + 1) / 3
    close(token_loss([L1], **inputs, mode="official"), (0.49 + 0.17 + 1.0) / 3)
    close(token_loss([L1], **inputs, mode="paper"), (0.7 + 0.4 + 1.0) / 3)

    probs = L1.clone().requires_grad_(True)
    only_empty = {k: v[:, 2:] for k, v in inputs.items()}
    loss = token_loss([probs], **only_empty)
    close(loss.detach(), 1.0)
    loss.sum().backward()
    assert torch.count_nonzero(probs.grad) == 0


def test_empty_mask_in_pixel_loss_pushes_attention_down():
    inputs = with_empty_noun()
    # empty noun map [0.1, 0.1, 0.2, 0.2] vs all-zero mask: -mean log(1 - A)
    bce_empty = -(2 * ln(0.9) + 2 * ln(0.8)) / 4
    close(pixel_loss([L1], **inputs), (BCE_DOG_L1 + BCE_TEDDY_L1 + bce_empty) / 3)

    probs = L1.clone().requires_grad_(True)
    pixel_loss([probs], **{k: v[:, 2:] for k, v in inputs.items()}).sum().backward()
    assert (probs.grad[0, :, :, 3] > 0).all()          # gradient descent lowers the empty noun's attention
    assert torch.count_nonzero(probs.grad[0, :, :, [2, 4, 5]]) == 0


@pytest.mark.parametrize("fn", [token_loss, pixel_loss])
def test_example_without_masked_noun_is_zero_without_gradient(fn):
    probs = torch.cat([L1, L1]).requires_grad_(True)
    masks = torch.cat([MASKS, MASKS])
    idx, tv = torch.cat([IDX, IDX]), torch.cat([TV, TV])
    nv = torch.tensor([[True, True], [False, False]])
    loss = fn([probs], masks, idx, tv, nv)
    assert torch.isfinite(loss).all()
    assert loss[1].item() == 0.0
    assert loss[0].item() > 0.0
    loss.sum().backward()
    assert torch.isfinite(probs.grad).all()
    assert torch.count_nonzero(probs.grad[1]) == 0
    assert torch.count_nonzero(probs.grad[0]) > 0


def test_no_nouns_at_all():
    masks = torch.zeros(2, 0, 2, 2)
    idx = torch.zeros(2, 0, 0, dtype=torch.long)
    tv = torch.zeros(2, 0, 0, dtype=torch.bool)
    nv = torch.zeros(2, 0, dtype=torch.bool)
    probs = torch.cat([L1, L1]).requires_grad_(True)
    for fn in (token_loss, pixel_loss):
        loss = fn([probs], masks, idx, tv, nv)
        assert loss.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_padding_never_changes_results(mode):
    # two padded nouns (garbage indices and masks) and a third token slot with garbage indices
    masks = torch.cat([MASKS, torch.ones(1, 2, 2, 2)], dim=1)
    idx = torch.tensor([[[2, -1, 999], [4, 5, 76], [7, 8, 9], [-5, 1000, 0]]])
    tv = torch.tensor([[[True, False, False], [True, True, False], [False] * 3, [False] * 3]])
    nv = torch.tensor([[True, True, False, False]])
    for fn, expected in ((token_loss, TOKEN_L1_L2[mode]), (pixel_loss, PIXEL_L1_L2)):
        close(fn([L1, L2], masks, idx, tv, nv, mode=mode), expected)
    # a padded-out but otherwise real noun (mask and tokens present, noun_valid False) is ignored too
    masks3, idx3, tv3 = with_empty_noun()["masks"], with_empty_noun()["token_indices"], with_empty_noun()["token_valid"]
    nv3 = torch.tensor([[True, True, False]])
    close(token_loss([L1, L2], masks3, idx3, tv3, nv3, mode=mode), TOKEN_L1_L2[mode])
    close(pixel_loss([L1, L2], masks3, idx3, tv3, nv3, mode=mode), PIXEL_L1_L2)


# ---------------------------------------------------------------- random inputs, loop reference

def random_maps(b: int, r: int, layers: int, heads: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(3 * torch.randn(b, heads, r * r, S, generator=g)).softmax(-1) for _ in range(layers)]


def random_example(n_tokens: list[int], supervised: list[bool], r: int, g: torch.Generator):
    """One example: per-noun token lists (distinct positions in 1..20), masks, supervised flags."""
    positions = torch.randperm(20, generator=g)[: sum(n_tokens)] + 1
    tokens, start = [], 0
    for k in n_tokens:
        tokens.append(positions[start : start + k].tolist())
        start += k
    masks = (torch.rand(len(n_tokens), r, r, generator=g) > 0.6).float()
    return tokens, masks, list(supervised)


def pad_batch(examples, r: int, n: int | None = None, t: int | None = None):
    """Examples -> padded ``masks (B, N, r, r)``, ``token_indices``, ``token_valid``, ``noun_valid``."""
    n = n if n is not None else max(len(e[0]) for e in examples)
    t = t if t is not None else max([len(tok) for e in examples for tok in e[0]] or [0])
    b = len(examples)
    masks = torch.full((b, n, r, r), 0.5)
    idx = torch.full((b, n, t), -7, dtype=torch.long)
    tv = torch.zeros(b, n, t, dtype=torch.bool)
    nv = torch.zeros(b, n, dtype=torch.bool)
    for i, (tokens, m, sup) in enumerate(examples):
        for j, tok in enumerate(tokens):
            masks[i, j] = m[j]
            idx[i, j, : len(tok)] = torch.tensor(tok)
            tv[i, j, : len(tok)] = True
            nv[i, j] = sup[j]
    return masks, idx, tv, nv


def reference_losses(probs_list, example, b: int, mode: str) -> tuple[float, float]:
    """The official per-example loops (loss_utils.get_grounding_loss_by_layer), batch item ``b``."""
    tokens, masks, sup = example
    nouns = [(tok, masks[j]) for j, tok in enumerate(tokens) if sup[j]]
    if not nouns:
        return 0.0, 0.0
    token = 0.0
    for p in probs_list:
        a = p[b]                                             # (H, Q, S)
        for tok, mask in nouns:
            obj = 0.0
            for s in tok:
                ca = a[:, :, s]                              # (H, Q)
                act = (ca * mask.flatten()).sum(-1) / ca.sum(-1)
                err = 1.0 - act.mean()
                obj += err**2 if mode == "official" else err
            token += obj / len(tok)
    token /= len(nouns)
    avg = torch.stack([p[b].mean(0) for p in probs_list]).sum(0) / len(probs_list)   # (Q, S)
    bce = nn.BCELoss()
    pixel = sum(bce(torch.stack([avg[:, s] for s in tok]).sum(0), mask.flatten()) for tok, mask in nouns)
    return float(token), float(pixel / len(nouns))


def batch_examples(r: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        random_example([1], [True], r, g),
        random_example([2, 1, 3], [True, True, True], r, g),
        random_example([2, 1], [True, False], r, g),
        random_example([], [], r, g),
    ]


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_vectorised_equals_loop_reference(mode):
    r = 4
    examples = batch_examples(r)
    probs = random_maps(len(examples), r, layers=3)
    masks, idx, tv, nv = pad_batch(examples, r)
    tok = token_loss(probs, masks, idx, tv, nv, mode=mode)
    pix = pixel_loss(probs, masks, idx, tv, nv, mode=mode)
    for b, ex in enumerate(examples):
        ref_tok, ref_pix = reference_losses(probs, ex, b, mode)
        assert tok[b].item() == pytest.approx(ref_tok, rel=1e-5, abs=1e-6)
        assert pix[b].item() == pytest.approx(ref_pix, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mode", ["official", "paper"])
def test_batch_equals_examples_one_by_one(mode):
    r = 4
    examples = batch_examples(r, seed=3)
    probs = random_maps(len(examples), r, layers=2, seed=5)
    batched = pad_batch(examples, r, n=5, t=4)             # extra padding on purpose
    for fn in (token_loss, pixel_loss):
        together = fn(probs, *batched, mode=mode)
        alone = torch.cat(
            [fn([p[b : b + 1] for p in probs], *pad_batch([ex], r), mode=mode) for b, ex in enumerate(examples)]
        )
        torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-7)
    # the batch mean of the per-example losses is what total_loss uses
    g = grounding_losses({r: probs}, {r: batched[0]}, *batched[1:], mode=mode)
    total, _ = total_loss(torch.zeros(len(examples)), g, 1.0, 0.0)
    torch.testing.assert_close(total, token_loss(probs, *batched, mode=mode).mean())


def test_gradients_finite():
    r = 4
    examples = batch_examples(r, seed=7)
    examples[1][1][0].zero_()                              # one empty mask
    probs = [p.requires_grad_(True) for p in random_maps(len(examples), r, layers=3, seed=2)]
    masks, idx, tv, nv = pad_batch(examples, r, n=4, t=4)
    for mode in ("official", "paper"):
        loss = (token_loss(probs, masks, idx, tv, nv, mode=mode) + pixel_loss(probs, masks, idx, tv, nv, mode=mode)).sum()
        loss.backward()
    for p in probs:
        assert torch.isfinite(p.grad).all()
        assert torch.count_nonzero(p.grad[3]) == 0        # the example without nouns
        assert torch.count_nonzero(p.grad[:3]) > 0


def test_low_precision_maps_under_autocast():
    r = 4
    examples = batch_examples(r)
    probs = [p.to(torch.bfloat16) for p in random_maps(len(examples), r, layers=2)]
    masks, idx, tv, nv = pad_batch(examples, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tok = token_loss(probs, masks, idx, tv, nv)
        pix = pixel_loss(probs, masks, idx, tv, nv)
    assert tok.dtype == pix.dtype == torch.float32
    ref = pixel_loss([p.float() for p in probs], masks, idx, tv, nv)
    torch.testing.assert_close(pix, ref)


# ---------------------------------------------------------------- grounding_losses / total_loss

def test_grounding_losses_per_group():
    examples = batch_examples(4, seed=11)
    groups = {4: random_maps(4, 4, layers=1, seed=1), 2: random_maps(4, 2, layers=2, seed=2)}
    masks4, idx, tv, nv = pad_batch(examples, 4)
    masks = {4: masks4, 2: resize_mask(masks4, 2), 8: resize_mask(masks4, 8)}
    out = grounding_losses(groups, masks, idx, tv, nv)
    assert set(out) == {"token", "pixel"}
    assert list(out["token"]) == [4, 2] and list(out["pixel"]) == [4, 2]
    for r in (4, 2):
        torch.testing.assert_close(out["token"][r], token_loss(groups[r], masks[r], idx, tv, nv))
        torch.testing.assert_close(out["pixel"][r], pixel_loss(groups[r], masks[r], idx, tv, nv))
        assert out["token"][r].shape == (4,)
    with pytest.raises(KeyError, match="resolution"):
        grounding_losses(groups, {4: masks4}, idx, tv, nv)
    with pytest.raises(ValueError, match="masks\\[2\\]"):
        grounding_losses(groups, {4: masks4, 2: masks4}, idx, tv, nv)
    with pytest.raises(ValueError, match="no attention groups"):
        grounding_losses({}, masks, idx, tv, nv)


def test_total_loss_by_hand():
    ldm = torch.tensor([1.0, 3.0], requires_grad=True)
    grounding = {
        "token": {8: torch.tensor([0.5, 0.0]), 16: torch.tensor([1.0, 2.0])},
        "pixel": {8: torch.tensor([0.2, 0.4]), 16: torch.tensor([0.0, 1.0])},
    }
    total, parts = total_loss(ldm, grounding, lambda_token=0.1, gamma_pixel=0.01)
    # example 0: 1 + 0.1 * 1.5 + 0.01 * 0.2 = 1.152; example 1: 3 + 0.1 * 2 + 0.01 * 1.4 = 3.214
    assert total.item() == pytest.approx((1.152 + 3.214) / 2)
    expected = {"total": 2.183, "ldm": 2.0, "token": 1.75, "pixel": 0.8,
                "token/8": 0.25, "token/16": 1.5, "pixel/8": 0.3, "pixel/16": 0.5}
    assert set(parts) == set(expected)
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value), key
        assert parts[key].ndim == 0 and not parts[key].requires_grad
    total.backward()
    torch.testing.assert_close(ldm.grad, torch.tensor([0.5, 0.5]))

    plain, parts = total_loss(ldm, {"token": {}, "pixel": {}}, 0.1, 0.01)
    assert plain.item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="\\(B,\\)"):
        total_loss(ldm[None], grounding, 0.1, 0.01)
    with pytest.raises(KeyError):
        total_loss(ldm, {"token": {}}, 0.1, 0.01)


# ---------------------------------------------------------------- input checks

def test_input_errors():
    with pytest.raises(ValueError, match="mode"):
        token_loss([L1], MASKS, IDX, TV, NV, mode="literal")
    with pytest.raises(ValueError, match="non-empty"):
        token_loss([], MASKS, IDX, TV, NV)
    with pytest.raises(ValueError, match="r \\* r"):
        token_loss([L1], torch.zeros(1, 2, 3, 3), IDX, TV, NV)
    with pytest.raises(ValueError, match="without any valid token"):
        pixel_loss([L1], MASKS, IDX, torch.tensor([[[True, False], [False, False]]]), NV)
    with pytest.raises(ValueError, match="\\[0, 77\\)"):
        token_loss([L1], MASKS, torch.tensor([[[77, 0], [4, 5]]]), TV, NV)
    with pytest.raises(TypeError, match="integer"):
        token_loss([L1], MASKS, IDX.float(), TV, NV)
    with pytest.raises(ValueError, match="share B, Q, S"):
        token_loss([L1, L1[..., :10]], MASKS, IDX, TV, NV)


# ---------------------------------------------------------------- resize_mask

def blob_masks(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, h, w)
    for i in range(n):
        y0, x0 = torch.randint(0, h - 2, (2,), generator=g).tolist()
        y1 = y0 + 1 + int(torch.randint(0, h - y0, (1,), generator=g))
        x1 = x0 + 1 + int(torch.randint(0, w - x0, (1,), generator=g))
        masks[i, y0:y1, x0:x1] = 1.0
    masks[0, :, w // 3] = 1.0                              # a thin line
    masks[1] = (torch.rand(h, w, generator=g) > 0.97).float()   # speckles
    return masks


@pytest.mark.parametrize("r", [4, 8, 16, 32, 64, 96])
@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_resize_mask_matches_torchvision(r, shape):
    masks = blob_masks(6, *shape)
    expected = (TF.resize(masks, [r, r], interpolation=InterpolationMode.BILINEAR, antialias=False) > 0).float()
    got = resize_mask(masks, r)
    assert got.shape == (6, r, r) and got.dtype == torch.float32
    assert torch.equal(got, expected)
    batched = resize_mask(masks.reshape(2, 3, *shape), r)
    assert torch.equal(batched, expected.reshape(2, 3, r, r))
    assert torch.equal(resize_mask(masks[0], r), expected[0])


def test_resize_mask_can_lose_small_objects():
    mask = torch.zeros(64, 64)
    mask[0, 0] = 1.0                   # bilinear at 8x8 samples between source pixels 3 and 4, 11 and 12, ...
    assert resize_mask(mask, 8).sum() == 0
    mask[3:5, 3:5] = 1.0
    assert resize_mask(mask, 8)[0, 0] == 1.0


def test_resize_mask_errors():
    with pytest.raises(TypeError, match="float"):
        resize_mask(torch.zeros(8, 8, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="H, W"):
        resize_mask(torch.zeros(8), 4)
    assert resize_mask(torch.zeros(2, 0, 8, 8), 4).shape == (2, 0, 4, 4)
