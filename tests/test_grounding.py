"""Grounding DINO: the tiny builder, the real loader, prompts and batched inference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.config import ConfigError, from_dict, load_section
from pipeline.core.devices import resolve_device
from pipeline.data.ground import GroundConfig
from pipeline.data.phrase_boxes import (
    build_prompts,
    ground_images,
    normalize_phrase,
    phrase_token_positions,
    preprocess_image,
)
from pipeline.models.grounding_dino import (
    load_grounding_dino,
    read_checkpoint,
    resolve_config_path,
)
from pipeline.models.grounding_dino_tiny import (
    build_tiny_grounding_dino,
    english_words_from_clip_bpe,
)

REPO = Path(__file__).resolve().parents[1]
NOUNS = ["teddy", "bear", "traffic", "light", "banana", "umbrella", "giraffe", "dog", "person"]


@pytest.fixture(scope="session")
def tiny_gd(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("tiny_gd"), seed=0)


@pytest.fixture(scope="session")
def model(tiny_gd):
    return load_grounding_dino(tiny_gd["config"], tiny_gd["checkpoint"], str(tiny_gd["bert"]), "cpu")


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """Flat rectangles on a flat background."""
    rng = np.random.default_rng(seed)
    a = np.empty((height, width, 3), np.uint8)
    a[:] = rng.integers(0, 256, 3)
    for _ in range(5):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        a[y0 : y0 + rng.integers(10, height // 2), x0 : x0 + rng.integers(10, width // 2)] = rng.integers(0, 256, 3)
    return Image.fromarray(a)


def same_detections(a, b, atol: float = 1e-3) -> None:
    assert [len(x) for x in a] == [len(x) for x in b]
    for da, db in zip(a, b):
        key = lambda d: (d.phrase_index, round(d.box_xyxy[0]), round(d.box_xyxy[1]), -d.score)  # noqa: E731
        for x, y in zip(sorted(da, key=key), sorted(db, key=key)):
            assert x.phrase_index == y.phrase_index
            assert math.isclose(x.score, y.score, abs_tol=1e-4)
            np.testing.assert_allclose(x.box_xyxy, y.box_xyxy, atol=atol)


# ----------------------------------------------------------------------------- tiny BERT


def test_tiny_bert_loads_and_tokenises_whole_words(tiny_gd):
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(tiny_gd["bert"])
    bert = BertModel.from_pretrained(tiny_gd["bert"])
    assert tok.is_fast and bert.config.hidden_size == 64
    for word in NOUNS:
        assert tok.tokenize(word) == [word]
    assert tok.tokenize("Teddy bear. Traffic light?") == ["teddy", "bear", ".", "traffic", "light", "?"]
    ids = tok.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])
    assert tok.unk_token_id not in ids and len(set(ids)) == 4
    assert "[UNK]" not in tok.tokenize("xylophonist")  # unknown words split into pieces
    out = bert(**tok(["a dog ."], return_tensors="pt"))
    assert out.last_hidden_state.shape == (1, 5, 64)  # [CLS] a dog . [SEP]


def test_vocab_words_are_deterministic_english():
    words = english_words_from_clip_bpe()
    assert words == english_words_from_clip_bpe()
    assert 20_000 < len(words) < 60_000
    assert all(w.isascii() and w.isalpha() and w.islower() for w in words)
    assert {"teddy", "giraffe", "umbrella"} <= set(words)


# ----------------------------------------------------------------------------- loading


def test_tiny_checkpoint_loads_strictly(tiny_gd, model):
    state = read_checkpoint(tiny_gd["checkpoint"])
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert model.num_queries == 50 and not model.training
    assert resolve_config_path("GroundingDINO_SwinT_OGC.py").is_file()


def test_missing_files_give_clear_errors(tiny_gd, tmp_path):
    bert = str(tiny_gd["bert"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_grounding_dino(tiny_gd["config"], tmp_path / "nope.pth", bert, "cpu")
    with pytest.raises(FileNotFoundError, match="config not found"):
        load_grounding_dino(tmp_path / "nope.py", tiny_gd["checkpoint"], bert, "cpu")
    with pytest.raises(FileNotFoundError, match="text encoder folder not found"):
        load_grounding_dino(tiny_gd["config"], tiny_gd["checkpoint"], str(tmp_path / "bert"), "cpu")


def test_checkpoint_keys_benign_extra_ok_missing_raises(tiny_gd, tmp_path):
    state = read_checkpoint(tiny_gd["checkpoint"])
    extra = dict(state)
    extra["label_enc.weight"] = torch.zeros(2001, 256)
    extra["bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save({"model": extra}, tmp_path / "extra.pth")
    load_grounding_dino(tiny_gd["config"], tmp_path / "extra.pth", str(tiny_gd["bert"]), "cpu")

    broken = {k: v for k, v in state.items() if k != "feat_map.weight"}
    broken["something.else"] = torch.zeros(1)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match=r"missing keys \['feat_map.weight'\].*something.else"):
        load_grounding_dino(tiny_gd["config"], tmp_path / "broken.pth", str(tiny_gd["bert"]), "cpu")

    torch.save(state, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="official format"):
        read_checkpoint(tmp_path / "bare.pth")


def test_builds_are_seeded(tiny_gd, tmp_path):
    reference = read_checkpoint(tiny_gd["checkpoint"])
    again = read_checkpoint(build_tiny_grounding_dino(tmp_path / "s0", seed=0)["checkpoint"])
    other = read_checkpoint(build_tiny_grounding_dino(tmp_path / "s1", seed=1)["checkpoint"])
    assert reference.keys() == again.keys() == other.keys()
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)


# ----------------------------------------------------------------------------- prompts


def test_phrase_spans_map_to_token_positions(model):
    prompts = build_prompts(["Teddy Bear", "traffic  light"], model.tokenizer)
    assert len(prompts) == 1
    prompt = prompts[0]
    assert prompt.text == "teddy bear . traffic light ."
    positions = phrase_token_positions(model.tokenizer, prompt.text, prompt.char_spans)
    assert positions == [[1, 2], [4, 5]]
    tokens = model.tokenizer.convert_ids_to_tokens(model.tokenizer(prompt.text)["input_ids"])
    assert [tokens[p] for p in positions[1]] == ["traffic", "light"]


def test_normalize_phrase():
    assert normalize_phrase("  St. Bernard ") == "st bernard"
    assert normalize_phrase("Dog?") == "dog"
    with pytest.raises(ValueError, match="empty"):
        normalize_phrase(" . ")


def test_long_phrase_lists_are_split(model):
    words = english_words_from_clip_bpe()[1000:1300]
    phrases = [f"{a} {b}" for a, b in zip(words[::2], words[1::2])]  # 150 two-word phrases
    prompts = build_prompts(phrases, model.tokenizer)
    assert len(prompts) >= 2
    covered = [i for p in prompts for i in p.phrase_indices]
    assert covered == list(range(len(phrases)))
    for p in prompts:
        assert len(model.tokenizer(p.text)["input_ids"]) <= 256
    image = synthetic_image(160, 120, 0)
    (dets,) = ground_images(model, [image], [phrases], 0.0, 0.0, 128, 256, "cpu")
    assert len(dets) == model.num_queries * len(prompts)  # threshold 0 keeps every query
    found = {d.phrase_index for d in dets}
    assert all(0 <= i < len(phrases) for i in found)
    for p in prompts:
        assert found & set(p.phrase_indices)


# ----------------------------------------------------------------------------- inference


def test_preprocess_matches_groundingdino_load_image(tmp_path):
    from groundingdino.util.inference import load_image

    image = synthetic_image(250, 180, 3)
    image.save(tmp_path / "x.png")
    _, expected = load_image(str(tmp_path / "x.png"))
    got = preprocess_image(image, 800, 1333)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_ground_images_thresholds_and_bounds(model):
    images = [synthetic_image(640, 480, 1), synthetic_image(300, 400, 2), synthetic_image(500, 333, 4)]
    phrases = [["teddy bear", "traffic light", "dog"], ["banana", "umbrella"], ["giraffe", "person", "car"]]
    low = ground_images(model, images, phrases, 0.25, 0.25, 320, 533, "cpu")
    high = ground_images(model, images, phrases, 0.3, 0.25, 320, 533, "cpu")
    assert len(low) == len(high) == 3
    for image, ps, dets in zip(images, phrases, low):
        w, h = image.size
        for d in dets:
            x0, y0, x1, y1 = d.box_xyxy
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
            assert d.score > 0.25 and 0 <= d.phrase_index < len(ps)
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for lo, hi in zip(low, high):
        assert {(d.phrase_index, d.box_xyxy) for d in hi} <= {(d.phrase_index, d.box_xyxy) for d in lo}
        assert all(d.score > 0.3 for d in hi)
    n_low, n_high = sum(map(len, low)), sum(map(len, high))
    assert n_low > 0 and n_high < n_low
    assert ground_images(model, [images[0]], [[]], 0.25, 0.25, 320, 533, "cpu") == [[]]


def test_batched_equals_one_at_a_time(model):
    images = [synthetic_image(320, 240, s) for s in (5, 6, 7)] + [synthetic_image(200, 300, 8)]
    phrases = [["teddy bear", "dog"], ["banana", "a red umbrella", "giraffe"], ["person"], ["traffic light"]]
    args = (0.2, 0.2, 240, 400, "cpu")
    single = [ground_images(model, [im], [ps], *args)[0] for im, ps in zip(images, phrases)]
    batched = ground_images(model, images, phrases, *args, batch_size=3)
    assert sum(map(len, single)) > 0
    same_detections(single, batched)


def test_agrees_with_groundingdino_predict(model):
    from groundingdino.util.inference import predict

    image = synthetic_image(320, 240, 9)
    phrases = ["teddy bear", "dog", "umbrella"]
    (dets,) = ground_images(model, [image], [phrases], 0.25, 0.25, 240, 400, "cpu")
    tensor = preprocess_image(image, 240, 400)
    boxes, scores, _ = predict(model, tensor, "teddy bear . dog . umbrella .", 0.25, 0.25, device="cpu")
    cx, cy, w, h = boxes.unbind(-1)
    official = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([320, 240, 320, 240])
    official[:, 0::2] = official[:, 0::2].clamp(0, 320)
    official[:, 1::2] = official[:, 1::2].clamp(0, 240)
    for d in dets:  # our rule (phrase tokens only) keeps a subset of the official boxes
        match = (official - torch.tensor(d.box_xyxy)).abs().max(dim=1).values < 1e-3
        assert match.any()
        assert d.score <= float(scores[match].max()) + 1e-6


# ----------------------------------------------------------------------------- config, devices


def test_ground_config_from_params():
    cfg = load_section("ground", GroundConfig, REPO / "params.yaml")
    assert cfg.box_threshold == 0.25 and cfg.image_size == 320
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(GroundConfig, {"box_treshold": 0.3}, "ground")
    with pytest.raises(ValueError, match="max_size"):
        from_dict(GroundConfig, {"image_size": 800, "max_size": 600}, "ground")


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="not available"):
            resolve_device("cuda:0")
