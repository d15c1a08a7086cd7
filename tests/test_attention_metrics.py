"""Attention grounding metrics: IoU on hand-computed maps, and the held-out evaluation on the tiny SD."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.masks import encode_rle
from pipeline.models.conditioning import TextConditioner
from pipeline.models.stable_diffusion import build_tiny_sd, load_sd_components
from pipeline.train.attention_metrics import (
    attention_iou,
    attention_share,
    eval_noise,
    evaluate_attention_share,
    evaluate_grounding,
)
from pipeline.train.dataset import Example, NounTarget, TokenComposeDataset

S = 77


def grid(values: dict[tuple[int, int], float], base: float = 0.0) -> torch.Tensor:
    """A 4 x 4 map flattened to (16,): ``base`` everywhere, ``values`` at (row, col)."""
    g = torch.full((4, 4), base)
    for (i, j), v in values.items():
        g[i, j] = v
    return g.flatten()


def block(cells: list[tuple[int, int]]) -> torch.Tensor:
    m = torch.zeros(4, 4)
    for i, j in cells:
        m[i, j] = 1.0
    return m


TOP_LEFT = [(0, 0), (0, 1), (1, 0), (1, 1)]
RIGHT_COLUMN = [(0, 3), (1, 3), (2, 3), (3, 3)]


@pytest.fixture
def example():
    """One caption, 4 nouns at r = 4 (B = 2: the second item has no valid noun).

    noun 0 "teddy bear", tokens 2, 3, mask = top-left 2 x 2:
        token 2: 0.2 inside the mask, 0 elsewhere             -> P = M, IoU 1
        token 3: 0.50 everywhere, 0.54 at (0,0) (0,1) (2,2), 0.51 at (1,0) (1,1): every raw value
                 is >= 0.5, but min-max gives 1 at the 0.54 cells, 0.25 at the 0.51 cells, 0 else
                 -> P = {(0,0), (0,1), (2,2)}: |P & M| = 2, |P | M| = 5, IoU 0.4
    noun 1 "dog", token 5 (one padded token slot), mask = right column:
        1.0 at (0,3) (1,3), 0.6 at (2,3), 0.4 at (3,0)       -> P = 3 of the column, IoU 3 / 4
    noun 2: not valid (noun_valid False), a perfect map      -> skipped
    noun 3: valid, token 6, but its mask is empty at r = 4   -> skipped by the IoU, share 0
    """
    maps = torch.zeros(2, 16, S)
    maps[0, :, 2] = 0.2 * block(TOP_LEFT).flatten()
    maps[0, :, 3] = grid({(0, 0): 0.54, (0, 1): 0.54, (2, 2): 0.54, (1, 0): 0.51, (1, 1): 0.51}, base=0.5)
    maps[0, :, 5] = grid({(0, 3): 1.0, (1, 3): 1.0, (2, 3): 0.6, (3, 0): 0.4})
    maps[0, :, 4] = block(TOP_LEFT).flatten()
    maps[0, :, 6] = grid({(3, 3): 1.0})
    maps[1] = maps[0]
    masks = torch.zeros(2, 4, 4, 4)
    masks[:, 0] = block(TOP_LEFT)
    masks[:, 1] = block(RIGHT_COLUMN)
    masks[:, 2] = block(TOP_LEFT)
    token_indices = torch.tensor([[[2, 3], [5, 0], [4, 0], [6, 0]]] * 2)
    token_valid = torch.tensor([[[True, True], [True, False], [True, False], [True, False]]] * 2)
    noun_valid = torch.tensor([[True, True, False, True], [False] * 4])
    return {4: maps}, {4: masks}, token_indices, token_valid, noun_valid


def test_iou_by_hand(example):
    total, count = attention_iou(*example)[4]
    assert count == 3
    assert math.isclose(total, 1.0 + 0.4 + 0.75, abs_tol=1e-6)


def test_iou_threshold(example):
    # threshold 0.2 also takes token 3's 0.25 cells: P = M + {(2,2)}, IoU 4 / 5; and the dog's
    # 0.4 cell (3,0) outside its column: 3 / 5
    total, count = attention_iou(*example, threshold=0.2)[4]
    assert count == 3
    assert math.isclose(total, 1.0 + 0.8 + 0.6, abs_tol=1e-6)
    with pytest.raises(ValueError, match="threshold"):
        attention_iou(*example, threshold=1.5)


def test_iou_ignores_scale_and_offset_but_not_shape(example):
    maps, masks, *rest = example
    shifted = {4: maps[4] * 7.0 + 3.0}
    assert attention_iou(shifted, masks, *rest)[4] == pytest.approx(attention_iou(maps, masks, *rest)[4])
    constant = {4: torch.full_like(maps[4], 0.3)}  # normalises to zeros: nothing predicted
    assert attention_iou(constant, masks, *rest)[4] == (0.0, 3)


def test_share_counts_the_empty_mask_pair_the_iou_skips(example):
    total, count = attention_share(*example)[4]
    assert count == 4
    token3 = (2 * 0.54 + 2 * 0.51) / (16 * 0.5 + 3 * 0.04 + 2 * 0.01)
    dog = 2.6 / 3.0
    assert math.isclose(total, 1.0 + token3 + dog + 0.0, abs_tol=1e-6)


def test_eval_noise_is_the_fixed_formula():
    shape = torch.Size([1, 4, 16, 16])
    g = torch.Generator().manual_seed(3 * 1_000_003 + 2 * 1009 + 500)
    assert torch.equal(eval_noise(shape, 3, 2, 500), torch.randn(shape, generator=g))


# ---------------------------------------------------------------- evaluation on the tiny SD

CAPTION = "a teddy bear and a dog near a pole"  # teddy 2, bear 3, dog 6, pole 9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    parts = load_sd_components(build_tiny_sd(root / "sd", seed=0))
    rng = np.random.default_rng(0)
    boxes = np.zeros((3, 64, 64), bool)
    boxes[0, 8:56, 4:30] = True    # teddy bear
    boxes[1, 30:60, 34:62] = True  # dog
    boxes[2, :, 1] = True          # pole: 1 px wide, only survives at r = 16
    examples = []
    for k in range(2):
        path = root / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        nouns = tuple(
            NounTarget(noun_id=10 * k + j, text=text, token_indices=tokens, rle=encode_rle(boxes[j]), height=64,
                       width=64)
            for j, (text, tokens) in enumerate([("teddy bear", (2, 3)), ("dog", (6,)), ("pole", (9,))])
        )
        examples.append(Example(caption_id=k, image_id=k, image_path=str(path), caption=CAPTION, height=64, width=64,
                                nouns=nouns))
    examples.append(Example(caption_id=2, image_id=0, image_path=str(root / "img0.png"), caption="nothing",
                            height=64, width=64, nouns=()))
    dataset = TokenComposeDataset(examples, parts.tokenizer, 64, [4, 8, 16])
    return parts, dataset


def run(parts, dataset, unet=None, **kw):
    return evaluate_grounding(unet or parts.unet, parts.vae, TextConditioner.of(parts), dataset, [0, 1, 2],
                              scheduler=parts.noise_scheduler, **kw)


def test_evaluate_grounding_on_the_tiny_sd(tiny):
    parts, dataset = tiny
    assert dataset[0]["masks"][4][2].sum() == 0 and dataset[0]["masks"][16][2].sum() > 0
    parts.unet.train()
    result = run(parts, dataset)
    assert parts.unet.training  # mode given back
    assert set(result) == {f"{m}_r{r}" for m in ("share", "iou") for r in (4, 8, 16)} | {"share", "iou", "pairs"}
    assert result["pairs"] == 2 * 4 * 3  # 2 captions with nouns x 4 (noun, token) pairs x 3 timesteps
    for key, value in result.items():
        if key != "pairs":
            assert 0.0 <= value <= 1.0, (key, value)
    assert run(parts, dataset) == result  # deterministic

    other = copy.deepcopy(parts.unet)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in other.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    changed = run(parts, dataset, unet=other)
    assert changed.keys() == result.keys()
    assert changed["share"] != result["share"] and changed["iou_r16"] != result["iou_r16"]
    assert parts.unet.attn_processors.keys() == other.attn_processors.keys()


def test_evaluate_attention_share_is_the_share_part(tiny):
    parts, dataset = tiny
    full = run(parts, dataset, timesteps=(300,))
    share = evaluate_attention_share(parts.unet, parts.vae, TextConditioner.of(parts), dataset, [0, 1, 2],
                                     timesteps=(300,), scheduler=parts.noise_scheduler)
    assert share == {"r4": full["share_r4"], "r8": full["share_r8"], "r16": full["share_r16"], "mean": full["share"]}
    assert full["pairs"] == 2 * 4


def test_no_supervised_noun_gives_nan(tiny):
    parts, dataset = tiny
    result = evaluate_grounding(parts.unet, parts.vae, TextConditioner.of(parts), dataset, [2])
    assert result["pairs"] == 0 and math.isnan(result["share"]) and math.isnan(result["iou"])
