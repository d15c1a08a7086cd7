"""The box-to-noun rules of ``ground`` on hand-made Grounding DINO outputs, and the release's matching chain."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.core.config import from_dict
from pipeline.data.ground import GroundConfig, _boxes_without_noun, _rows_for_image, box_matches, image_phrases
from pipeline.data.phrase_boxes import (
    Detection,
    _detections,
    assign_official,
    build_prompts,
    match_official,
    match_official_step,
)
from pipeline.models.grounding_dino_tiny import build_tiny_bert


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(str(build_tiny_bert(tmp_path_factory.mktemp("bert"), seed=0)))


def _case(tokenizer):
    (prompt,) = build_prompts(["dog", "teddy bear"], tokenizer)
    ids = tokenizer(prompt.text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "dog", ".", "teddy", "bear", ".", "[SEP]"]
    CLS, DOG, SEP1, TEDDY, BEAR, _, SEP = range(7)
    probs = torch.zeros(6, 256)
    probs[0, DOG] = 0.6                          # plainly "dog"
    probs[1, [TEDDY, BEAR]] = torch.tensor([0.5, 0.4])  # plainly "teddy bear"
    probs[2, [TEDDY, BEAR]] = torch.tensor([0.5, 0.1])  # only "teddy" passes text_threshold
    probs[3, [SEP1, DOG]] = torch.tensor([0.9, 0.3])    # the separator holds the maximum
    probs[4, [DOG, TEDDY]] = torch.tensor([0.3, 0.3])   # spread over two phrases
    probs[5, [DOG, SEP]] = torch.tensor([0.2, 0.3])     # only [SEP] passes box_threshold
    boxes = torch.tensor([[0.1 * (q + 1), 0.5, 0.1, 0.2] for q in range(6)])  # cxcywh, one x per query
    return prompt, probs, boxes


def _by_query(dets):
    """Query q's box has centre x = 10 * (q + 1) px on a 100 px image."""
    return {round((d.box_xyxy[0] + d.box_xyxy[2]) / 20) - 1: (d.phrase_index, round(d.score, 4), d.phrase)
            for d in dets}


def test_best_phrase_rule(tokenizer):
    prompt, probs, boxes = _case(tokenizer)
    dets = _detections(probs, boxes, prompt, tokenizer, 0.25, 0.25, 100, 100, "best_phrase")
    assert _by_query(dets) == {
        0: (0, 0.6, "dog"),
        1: (1, 0.5, "teddy bear"),
        2: (1, 0.5, "teddy"),          # the best phrase's token score, whatever is decoded
        3: (0, 0.3, "dog"),            # the separator's 0.9 is not a phrase token
        4: (0, 0.3, "dog teddy"),      # tie: the first phrase
    }                                  # query 5: best phrase score 0.2 -> dropped


def test_exact_phrase_rule(tokenizer):
    prompt, probs, boxes = _case(tokenizer)
    dets = _detections(probs, boxes, prompt, tokenizer, 0.25, 0.25, 100, 100, "exact_phrase")
    assert _by_query(dets) == {
        0: (0, 0.6, "dog"),
        1: (1, 0.5, "teddy bear"),
        2: (-1, 0.5, "teddy"),         # decoded "teddy" is no phrase: a box without a noun
        3: (0, 0.9, "dog"),            # kept and scored by the separator's 0.9
        4: (-1, 0.3, "dog teddy"),
        5: (-1, 0.3, ""),              # kept by [SEP]; nothing passes text_threshold
    }
    higher = _detections(probs, boxes, prompt, tokenizer, 0.55, 0.25, 100, 100, "exact_phrase")
    assert sorted(_by_query(higher)) == [0, 3]


def test_official_rule_gives_the_release_nouns(tokenizer):
    """The same queries as the exact rule, decoded as the release does (every token but [CLS]):
    "teddy", "dog." and "dog teddy" get a noun, "[SEP]" none, and a later phrase on a noun
    takes it from an earlier one."""
    prompt, probs, boxes = _case(tokenizer)
    raw = _detections(probs, boxes, prompt, tokenizer, 0.25, 0.25, 100, 100, "official")
    assert [(d.query, d.phrase, round(d.score, 4)) for d in raw] == [
        (0, "dog", 0.6), (1, "teddy bear", 0.5), (2, "teddy", 0.5), (3, "dog.", 0.9), (4, "dog teddy", 0.3),
        (5, "[SEP]", 0.3)]
    assert all(d.phrase_index == -1 for d in raw)
    by_phrase = {d.phrase: (d.phrase_index, d.match) for d in assign_official(raw, ["dog", "teddy bear"])}
    assert by_phrase == {"dog": (-1, "replaced"),         # noun 0 goes to "dog." (query 3), then "dog teddy"
                         "dog.": (-1, "replaced"),
                         "dog teddy": (0, "word"),
                         "teddy bear": (-1, "replaced"),  # noun 1 goes to "teddy" (query 2, later)
                         "teddy": (1, "word"),
                         "[SEP]": (-1, "none")}
    # "later" is by query, not by list order or score
    late_first = [Detection(-1, (0, 0, 1, 1), 0.9, "horse", query=7), Detection(-1, (0, 0, 2, 2), 0.3, "top horse", query=2)]
    assert [(d.phrase_index, d.match) for d in assign_official(late_first, ["horse"])] == [(0, "exact"), (-1, "replaced")]
    empty_last = assign_official([*raw[:5], Detection(-1, (0, 0, 1, 1), 0.3, "", query=9)], ["dog", "teddy bear"])
    assert [(d.phrase_index, d.match) for d in empty_last if d.phrase in ("", "dog teddy")] == [(-1, "replaced"), (0, "substring")]


@pytest.mark.parametrize("phrase, nouns, expected", [
    ("dog", ["cat", "dog", "dog"], (1, "exact")),                        # the first equal noun
    ("tv", ["TV", "tv stand"], (0, "upper")),
    ("Dog", ["dog"], (0, "lower")),
    ("t - shirt", ["man", "t-shirt"], (1, "hyphen")),
    ("top horse", ["saddle", "horse"], (1, "word")),                     # the release's comment example
    ("horse", ["saddle", "top horse"], (1, "word")),
    ("tank birthday", ["table", "tank birthday cake"], (1, "substring")),  # a phrase inside a noun
    ("birthday cakes", ["cake", "birthday cake"], (0, "substring")),     # the first noun inside the phrase
    ("bear dog", ["dog", "teddy bear"], (0, "word")),                    # "dog" is a word of the phrase
    ("horse", ["horses", "top horse"], (0, "substring")),                # the word test's "top horse" overridden
    ("a red dump truck", ["a red and blue dump truck", "ardula", "a city street"], (0, "all_words")),
    ("red truck", ["tRuck red"], (0, "all_words")),
    ("", ["plate", "fork"], (0, "substring")),                           # the empty phrase: the first noun
    ("", [], (None, "none")),
    ("giraffe", ["zebra", "tree"], (None, "none")),
])
def test_match_official_chain(phrase, nouns, expected):
    assert match_official_step(phrase, nouns) == expected
    assert match_official(phrase, nouns) == expected[0]


def test_boxes_without_noun_are_recorded_rejects():
    nouns = [{"noun_id": 7000, "caption_id": 7, "image_id": 3, "text": "dog"},
             {"noun_id": 7001, "caption_id": 7, "image_id": 3, "text": "teddy bear"}]
    dets = [Detection(0, (1.0, 2.0, 3.0, 4.0), 0.6, "dog"), Detection(-1, (5.0, 6.0, 7.0, 8.0), 0.5, "teddy"),
            Detection(-1, (0.0, 0.0, 9.0, 9.0), 0.3, "")]
    rows = _rows_for_image(nouns, ["dog", "teddy bear"], dets)
    assert [(r["noun_id"], r["found"]) for r in rows] == [(7000, True), (7001, False)]
    rejects = _boxes_without_noun(3, dets)
    assert [(k, why) for k, why, _ in rejects] == [("3:box0", "phrase_matches_no_noun"),
                                                   ("3:box1", "phrase_matches_no_noun")]
    assert "'teddy'" in rejects[0][2] and "0.500" in rejects[0][2]


def test_phrase_rule_param():
    assert from_dict(GroundConfig, {"phrase_rule": "official"}, "ground").phrase_rule == "official"
    with pytest.raises(ValueError, match="phrase_rule"):
        from_dict(GroundConfig, {"phrase_rule": "nearest"}, "ground")


def test_official_prompt_order_rejects_and_match_counts():
    nouns = [{"noun_id": 7001, "text": "Teddy bear"}, {"noun_id": 7000, "text": "dog"},
             {"noun_id": 8000, "text": "teddy  bear"}]
    assert image_phrases(nouns, "official") == ["dog", "Teddy bear"]      # noun_id order, first spelling
    assert image_phrases(nouns, "best_phrase") == ["dog", "teddy bear"]
    dets = [Detection(-1, (0, 0, 1, 1), 0.5, "dog", match="replaced"), Detection(-1, (0, 0, 1, 1), 0.4, "cow", match="none")]
    assert [why for _, why, _ in _boxes_without_noun(3, dets)] == ["phrase_replaced", "phrase_matches_no_noun"]
    rows = [{"image_id": 3, "phrase": "teddy", "box_index": 0, "match": "word", "found": True},
            {"image_id": 3, "phrase": "teddy", "box_index": 0, "match": "word", "found": True},  # a 2nd occurrence
            {"image_id": 3, "phrase": "teddy", "box_index": 1, "match": "word", "found": True},
            {"image_id": 3, "phrase": None, "box_index": -1, "match": None, "found": False}]
    counts = box_matches(rows, unmatched=1, replaced=2)
    assert counts["word"] == 2 and counts["exact"] == 0 and (counts["none"], counts["replaced"]) == (1, 2)
