"""SD's CLIP tokenizer built offline from open_clip's BPE vocabulary: real ids, padding, truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import CLIPTokenizer, CLIPTokenizerFast

from pipeline.models.clip_tokenizer import (
    BOS_ID,
    EOS_ID,
    NUM_MERGES,
    VOCAB_SIZE,
    build_clip_tokenizer,
    load_clip_tokenizer,
)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer")


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> CLIPTokenizer:
    return load_clip_tokenizer(tok_dir)


def test_files_and_tables(tok_dir: Path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        assert (tok_dir / name).is_file(), name
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == VOCAB_SIZE == 49408
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    lines = (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) - 1 == NUM_MERGES == 48894
    assert lines[1] == "i n"
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["do_lower_case"] is True
    assert config["tokenizer_class"] == "CLIPTokenizer"


def test_settings(tok: CLIPTokenizer):
    assert isinstance(tok, CLIPTokenizer)
    assert len(tok) == VOCAB_SIZE
    assert tok.model_max_length == 77
    assert tok.bos_token == "<|startoftext|>" and tok.bos_token_id == BOS_ID
    assert tok.eos_token == tok.pad_token == tok.unk_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id == EOS_ID


@pytest.mark.parametrize(
    "text, ids",
    [
        ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
        ("teddy bear", [49406, 11798, 4298, 49407]),
        ("dog", [49406, 1929, 49407]),
        (
            "a photo of an astronaut riding a horse on mars",
            [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407],
        ),
        ("the cat, and the dog.", [49406, 518, 2368, 267, 537, 518, 1929, 269, 49407]),
        ("A PHOTO  of\ta CAT", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ],
)
def test_known_ids(tok: CLIPTokenizer, text: str, ids: list[int]):
    assert tok(text).input_ids == ids


def test_padding_to_77(tok: CLIPTokenizer):
    enc = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length, truncation=True)
    assert len(enc.input_ids) == 77
    assert enc.input_ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert enc.input_ids[7:] == [EOS_ID] * 70
    assert enc.attention_mask == [1] * 7 + [0] * 70


def test_truncation_keeps_start_and_end(tok: CLIPTokenizer):
    enc = tok("cat " * 100, padding="max_length", max_length=tok.model_max_length, truncation=True)
    assert enc.input_ids == [BOS_ID] + [2368] * 75 + [EOS_ID]
    assert len(tok("cat " * 100, truncation=True).input_ids) == 77


def test_matches_openai_reference_tokenizer(tok: CLIPTokenizer, coco_mini: Path):
    """open_clip's SimpleTokenizer (OpenAI's implementation) gives the same ids on real captions."""
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    anns = json.loads((coco_mini / "annotations" / "captions_train2017.json").read_text())["annotations"]
    texts = [a["caption"] for a in anns] + ["Café crème on a table", "A naïve 🐶 dog", "東京 tower, 3 kittens!"]
    for text in texts:
        assert tok(text).input_ids[1:-1] == reference.encode(text), text


def test_fast_tokenizer_matches_slow(tok_dir: Path, tok: CLIPTokenizer):
    fast = load_clip_tokenizer(tok_dir, fast=True)
    assert isinstance(fast, CLIPTokenizerFast)
    texts = ["a photo of a cat", "An older woman holding a big white teddy bear.", "A naïve 🐶 dog", "x" * 300]
    for text in texts:
        assert fast(text, truncation=True).input_ids == tok(text, truncation=True).input_ids


def test_load_with_subfolder(tmp_path: Path):
    build_clip_tokenizer(tmp_path / "sd" / "tokenizer", save_fast=False)
    assert not (tmp_path / "sd" / "tokenizer" / "tokenizer.json").exists()
    tok = load_clip_tokenizer(tmp_path / "sd", subfolder="tokenizer")
    assert tok("teddy bear").input_ids == [49406, 11798, 4298, 49407]
    fast = load_clip_tokenizer(str(tmp_path / "sd"), subfolder="tokenizer", fast=True)
    assert fast("teddy bear").input_ids == [49406, 11798, 4298, 49407]


def test_load_missing_folder_is_an_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_clip_tokenizer(tmp_path / "empty")
