"""Noun -> CLIP token indices in the caption's 77-token sequence.

Positions count the start token: ``<|startoftext|>`` is index 0, the caption's first BPE token
index 1; with SD's ``model_max_length`` of 77 the last content position is 75 (76 is the end
token). A noun owns every BPE token whose character span overlaps the noun's span ``[start,
end)`` in the original caption.

``CaptionTokenizer.encode`` reproduces ``CLIPTokenizer`` (slow, the one SD's training scripts
use) token for token, and also returns each token's character span in the original caption.
It follows the slow tokenizer's own steps: ``ftfy.fix_text``, whitespace clean-up, lower case,
the BPE pre-tokenisation regex, byte-level BPE (the tokenizer's own ``bpe`` cache and vocab).
Each step keeps a map back to the original characters: ftfy rarely changes a caption (curly
quotes, ligatures, mojibake), and where it does the map comes from a ``difflib`` alignment of
the two strings (a replaced run maps to the whole original run); whitespace clean-up is done
one character for one; lower-casing maps each output character to the character it came from.
``CLIPTokenizerFast`` skips ftfy, so its ids differ from these where ftfy changes a caption
("man’s", "ﬁsh"): the model's input ids must come from ``CLIPTokenizer`` (or
``CaptionEncoding.input_ids``) for the indices to line up.

Difference from the official TokenCompose rule (``official_token_indices``: the first
occurrence of the noun's own token sequence in the caption's tokens, +1): the span rule gives
every occurrence of a repeated noun its own positions; it points at the noun itself when the
same tokens appear earlier inside another phrase ("a tea cup full of tea": the official rule
gives "tea" the tokens of "tea cup"'s first word); and it never fails when a noun tokenised
alone differs from the noun tokenised inside the caption. Otherwise the two agree: on the 400
coco-mini captions, 1,298 of 1,304 (caption, noun) pairs, the 6 others all of the "tea cup" kind.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Sequence

import ftfy
from transformers import CLIPTokenizer

from pipeline.models.clip_tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_MAX_LENGTH,
)

_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class CaptionEncoding:
    """One caption's BPE tokens, untruncated and without start/end tokens.

    ids: token ids, length T. spans: ``(start, end)`` char span of each token in the original
    caption, length T. Token ``i`` sits at position ``i + 1`` of the model's input sequence.
    """

    ids: list[int]
    spans: list[tuple[int, int]]

    def input_ids(self, max_length: int = MODEL_MAX_LENGTH) -> list[int]:
        """The model's input ids: start + first ``max_length - 2`` tokens + end (unpadded)."""
        return [BOS_ID, *self.ids[: max_length - 2], EOS_ID]


def _ftfy_char_map(original: str, fixed: str) -> list[tuple[int, int]]:
    """For each char of ``fixed``, the ``[start, end)`` span of ``original`` it came from."""
    if original == fixed:
        return [(i, i + 1) for i in range(len(fixed))]
    out: list[tuple[int, int]] = []
    matcher = difflib.SequenceMatcher(None, original, fixed, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.extend((i1 + k, i1 + k + 1) for k in range(j2 - j1))
        elif tag in ("replace", "insert"):
            out.extend((i1, i2) for _ in range(j2 - j1))
    return out


class CaptionTokenizer:
    """``CLIPTokenizer`` with character spans: ``encode(text)`` -> ids + spans per BPE token."""

    def __init__(self, tokenizer: CLIPTokenizer):
        if not isinstance(tokenizer, CLIPTokenizer):
            raise TypeError(f"expected a slow transformers.CLIPTokenizer, got {type(tokenizer).__name__}")
        if tokenizer.bos_token_id != BOS_ID or tokenizer.eos_token_id != EOS_ID:
            raise ValueError("not SD's CLIP tokenizer: unexpected start/end token ids")
        if getattr(tokenizer, "fix_text", None) is None:
            raise RuntimeError("CLIPTokenizer runs without ftfy here; install ftfy (a dependency of open-clip-torch)")
        self.tokenizer = tokenizer
        self._bpe = tokenizer.bpe
        self._pat = tokenizer.pat
        self._encoder = tokenizer.encoder
        self._byte_encoder = tokenizer.byte_encoder
        self._unk = tokenizer.encoder[tokenizer.unk_token]

    def encode(self, text: str) -> CaptionEncoding:
        """Tokenise ``text`` exactly as ``CLIPTokenizer`` does; see the module docstring."""
        fixed = ftfy.fix_text(text)
        fix_map = None if fixed == text else _ftfy_char_map(text, fixed)
        cleaned = _WHITESPACE.sub(" ", fixed)
        lowered = cleaned.lower()
        low_map = None
        if len(lowered) != len(cleaned):
            low_map = [i for i, ch in enumerate(cleaned) for _ in ch.lower()]

        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for m in self._pat.finditer(lowered):
            word = m.group()
            word_bytes = word.encode("utf-8")
            symbols = self._bpe("".join(self._byte_encoder[b] for b in word_bytes)).split(" ")
            if len(word_bytes) == len(word):
                char_of_byte = None
            else:
                char_of_byte = [ci for ci, ch in enumerate(word) for _ in ch.encode("utf-8")]
            b0 = 0
            last = len(symbols) - 1
            for k, sym in enumerate(symbols):
                ids.append(self._encoder.get(sym, self._unk))
                nbytes = len(sym) - 4 if k == last and sym.endswith("</w>") else len(sym)
                b1 = b0 + nbytes
                if char_of_byte is None:
                    c0, c1 = b0, b1
                else:
                    c0, c1 = char_of_byte[b0], char_of_byte[b1 - 1] + 1
                spans.append(self._to_original(m.start() + c0, m.start() + c1, low_map, fix_map))
                b0 = b1
        return CaptionEncoding(ids=ids, spans=spans)

    @staticmethod
    def _to_original(
        start: int, end: int, low_map: list[int] | None, fix_map: list[tuple[int, int]] | None
    ) -> tuple[int, int]:
        """Map a ``[start, end)`` span of the lower-cased text back to the original caption."""
        if low_map is not None:
            start, end = low_map[start], low_map[end - 1] + 1
        if fix_map is not None:
            start, end = fix_map[start][0], fix_map[end - 1][1]
        return start, end

    def encode_batch(self, texts: Sequence[str]) -> list[CaptionEncoding]:
        return [self.encode(t) for t in texts]


def span_token_indices(
    encoding: CaptionEncoding, start: int, end: int, max_length: int = MODEL_MAX_LENGTH
) -> tuple[list[int], bool]:
    """Positions (start token = 0) of the tokens overlapping chars ``[start, end)``.

    Returns ``(indices, truncated)``: indices within the ``max_length`` window (possibly empty),
    and whether any of the noun's tokens fall beyond it (position > ``max_length - 2``).
    """
    last = max_length - 2
    positions = [i + 1 for i, (a, b) in enumerate(encoding.spans) if a < end and b > start]
    inside = [p for p in positions if p <= last]
    return inside, len(inside) < len(positions)


def noun_token_indices(
    tokenizer: CaptionTokenizer,
    captions: Sequence[str],
    noun_spans: Sequence[Sequence[tuple[int, int]]],
    max_length: int = MODEL_MAX_LENGTH,
) -> list[list[tuple[list[int], bool]]]:
    """For a batch of captions and their nouns' char spans: ``[[(indices, truncated), ...], ...]``.

    Each caption is tokenised once, whatever its number of nouns.
    """
    if len(captions) != len(noun_spans):
        raise ValueError(f"{len(captions)} captions but {len(noun_spans)} noun span lists")
    out = []
    for caption, spans in zip(captions, noun_spans):
        if not spans:
            out.append([])
            continue
        enc = tokenizer.encode(caption)
        out.append([span_token_indices(enc, s, e, max_length) for s, e in spans])
    return out


def official_token_indices(tokenizer: CLIPTokenizer, caption: str, noun: str) -> list[int]:
    """The official TokenCompose rule: first occurrence of ``noun.lower()``'s token sequence in the
    caption's (untruncated) tokens, +1 for the start token. Raises ValueError when not found."""
    text_ids = tokenizer.encode(caption)[1:-1]
    noun_ids = tokenizer.encode(noun.lower())[1:-1]
    n = len(noun_ids)
    if n == 0:
        raise ValueError(f"noun {noun!r} has no tokens")
    for i in range(len(text_ids) - n + 1):
        if text_ids[i : i + n] == noun_ids:
            return [i + 1 + j for j in range(n)]
    raise ValueError(f"tokens of {noun!r} not found in the tokens of {caption!r}")
