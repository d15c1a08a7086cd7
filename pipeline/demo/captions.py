"""Captions of an image's objects drawn from templates, with the span of every noun."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.demo.backgrounds import SCENES
from pipeline.demo.scene import _Group
from pipeline.demo.sprite import _pick


@dataclass(frozen=True)
class _Noun:
    """A noun in a caption under construction; it becomes a recorded mention."""

    word: str
    group: _Group


Segment = str | _Noun

_NUMBERS = {2: ("two", "two", "a pair of"), 3: ("three", "three", "a few", "some")}
_CROWD = ("a pile of", "a bunch of", "a heap of", "lots of", "many")

# Placeholders: {ALL} every group; {A} {B} two groups and {REST} the others; {REL} where A
# is relative to B; {BE_A} / {BE_REST} / {THERE_BE} agree in number; [...] is dropped when a
# placeholder inside it is empty. {SCENE} may be empty, {SCENE_CAP} never is.
TEMPLATES: tuple[str, ...] = (
    "{ALL}[ {SCENE}].",
    "A photo of {ALL}[ {SCENE}].",
    "{THERE_BE} {ALL}[ {SCENE}].",
    "An image showing {ALL}[ {SCENE}].",
    "{SCENE_CAP}, {ALL} can be seen.",
    "Close-up of {ALL}.",
    "{ALL} sit together[ {SCENE}].",
    "A picture with {ALL}[ {SCENE}].",
    "Someone left {ALL}[ {SCENE}].",
    "A still life with {ALL}.",
    "Here we see {ALL}[ {SCENE}].",
    "{A} {REL} {B}[, along with {REST}].",
    "{A} {BE_A} {REL} {B}[, and {REST} {BE_REST} nearby].",
    "{A} and {B}[ {SCENE}][, plus {REST}].",
    "{A} {REL} {B}[ {SCENE}].",
    "There {BE_A} {A} {REL} {B}[, with {REST}].",
    "In this picture, {A} {BE_A} {REL} {B}[, next to {REST}].",
    "A simple drawing of {ALL}.",
)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _noun_phrase(g: _Group, rng: np.random.Generator) -> list[Segment]:
    adjs: list[str] = []
    if g.size_adj and rng.random() < 0.6:
        adjs.append(g.size_adj)
    if g.variant.adjectives and rng.random() < 0.65:
        adjs.append(_pick(rng, g.variant.adjectives))
    noun = g.kind.plural if g.plural else g.kind.singular
    first = adjs[0] if adjs else noun
    if g.crowd:
        det = _pick(rng, _CROWD)
    elif g.count == 1:
        det = "one" if rng.random() < 0.08 else _article(first)
    else:
        det = _pick(rng, _NUMBERS.get(g.count, ("several",)))
    return [" ".join([det, *adjs]) + " ", _Noun(noun, g)]


def _join(phrases: list[list[Segment]], rng: np.random.Generator) -> list[Segment]:
    out: list[Segment] = []
    for i, p in enumerate(phrases):
        if i == len(phrases) - 1 and i > 0:
            out.append(", and " if len(phrases) > 2 and rng.random() < 0.5 else " and ")
        elif i > 0:
            out.append(", ")
        out.extend(p)
    return out


def _relation(a: _Group, b: _Group, shape: tuple[int, int], rng: np.random.Generator) -> str:
    (ax, ay), (bx, by) = a.centroid(), b.centroid()
    dx, dy = (ax - bx) / shape[1], (ay - by) / shape[0]
    if max(abs(dx), abs(dy)) < 0.12 or rng.random() < 0.3:
        return _pick(rng, ("next to", "beside", "near"))
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return _pick(rng, ("above", "over") if dy < 0 else ("below", "under", "beneath"))


def _render_template(template: str, values: dict[str, list[Segment]]) -> list[Segment]:
    """Fill placeholders; an optional ``[...]`` chunk disappears if any placeholder in it is empty."""
    out: list[Segment] = []
    for chunk in re.split(r"(\[[^\]]*\])", template):
        optional = chunk.startswith("[")
        body = chunk[1:-1] if optional else chunk
        parts = re.split(r"(\{[A-Z_]+\})", body)
        names = [p[1:-1] for p in parts if p.startswith("{")]
        if optional and any(not values[n] for n in names):
            continue
        for p in parts:
            if p.startswith("{"):
                out.extend(values[p[1:-1]])
            elif p:
                out.append(p)
    return out


def make_caption(groups: list[_Group], scene: str, shape: tuple[int, int], template: str,
                 rng: np.random.Generator) -> tuple[str, list[dict[str, Any]]]:
    """One caption of ``groups`` from ``template``: ``(text, mentions)``.

    A mention is ``{"category", "category_id", "word", "start", "end", "count", "crowd"}``
    where ``text[start:end] == word`` is the noun (or compound noun) naming the category.
    """
    order = [groups[i] for i in rng.permutation(len(groups))]
    phrases = [_noun_phrase(g, rng) for g in order]
    a, b, rest = order[0], order[1], order[2:]
    scene_text = _pick(rng, SCENES[scene])
    values: dict[str, list[Segment]] = {
        "ALL": _join(phrases, rng),
        "A": phrases[0],
        "B": phrases[1],
        "REST": _join(phrases[2:], rng) if rest else [],
        "REL": [_relation(a, b, shape, rng)],
        "SCENE": [scene_text] if rng.random() < 0.75 else [],
        "SCENE_CAP": [scene_text[0].upper() + scene_text[1:]],
        "BE_A": ["are" if a.plural else "is"],
        "BE_REST": ["are" if len(rest) > 1 or (rest and rest[0].plural) else "is"],
        "THERE_BE": ["There are" if order[0].plural else "There is"],
    }
    segments = _render_template(template, values)
    text, mentions = "", []
    for seg in segments:
        if isinstance(seg, _Noun):
            start = len(text)
            text += seg.word
            g = seg.group
            mentions.append({
                "category": g.kind.category, "category_id": g.kind.coco_id, "word": seg.word,
                "start": start, "end": len(text), "count": None if g.crowd else g.count,
                "crowd": g.crowd,
            })
        else:
            text += seg
    if not text[0].isupper():
        text = text[0].upper() + text[1:]
    return text, mentions
