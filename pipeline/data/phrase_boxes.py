"""Noun phrases -> boxes with Grounding DINO (the ``ground`` stage's inference).

Prompts. All distinct phrases of one image go into one lower-cased prompt
``"p1 . p2 . p3 ."``, the form the official pipeline and TokenCompose use (groundingdino's
``preprocess_caption`` turns ``"p1 . p2 . p3"`` into ``"p1 . p2 . p3."``, which BERT
tokenises identically). Inside a phrase, ``.`` and ``?`` (Grounding DINO's sub-sentence
separators) become spaces and runs of whitespace one space. Grounding DINO reads at most
``max_text_len`` = 256 tokens ([CLS] and [SEP] included) and silently truncates longer
prompts; an image whose phrases need more is given several prompts instead, phrases packed
greedily in their order, each prompt a forward of its own (the image is repeated in the batch).

Mapping boxes back to phrases. For each query the model gives a box and sigmoid
probabilities over the prompt's tokens. The tokenizer's offsets mapping gives each phrase's
token positions in the prompt. A phrase's score for a query is the maximum probability over
its tokens; the query is assigned to the phrase with the highest score (the first on ties),
and kept iff that score is > ``box_threshold`` (groundingdino's box rule, max token probability
> box threshold, restricted to phrase tokens) and > ``text_threshold``. No non-maximum
suppression is applied, as in the official pipeline, so several boxes per phrase are normal.
``Detection.phrase`` is what groundingdino's own ``get_phrases_from_posmap(prob >
text_threshold)`` decodes for the query, with [CLS], [SEP] and separators left out (as
upstream's later ``left_idx``/``right_idx`` arguments do), for inspection. This is
``phrase_rule="best_phrase"``.

``phrase_rule="official"`` is the rule of TokenCompose's data preparation (the release's
``preprocess_data/gen_mask.py``): a query is kept iff its maximum probability over ALL the
prompt's tokens ([CLS], [SEP] and the `` . `` separators included, as
``prediction_logits.max(dim=1)`` does) is > ``box_threshold``, and that maximum is its score;
its phrase is what the release's ``get_phrases_from_posmap(prob > text_threshold)`` decodes
(every prompt token but [CLS]: a separator or [SEP] above the threshold is part of the phrase,
"dog." or "dog [SEP]", as there). The boxes of one image with the same decoded phrase form
one group (the release unites their masks), and each decoded phrase is mapped to a noun of the
image's list by ``match_official``'s chain: equal; its upper case; its lower case; ``" - "`` ->
``"-"``; the first noun whose lower case is one of the phrase's words or that has the phrase as
one of its words, overridden by the first noun that contains the phrase or is contained in it
(lower case substrings; an empty phrase matches the first noun); else the first noun containing
every word of the phrase. When two phrases map to one noun the later one (by its first query)
keeps it, as the release's mask file of the later phrase overwrites the earlier one's. Boxes of
a phrase that maps to nothing, or whose noun went to a later phrase, are returned with
``phrase_index = -1`` (``match`` says which: ``none`` | ``replaced``); ``ground`` records them as
rejects. ``Detection.match`` names the step that matched (``MATCH_STEPS``).

``phrase_rule="exact_phrase"`` keeps and scores queries as ``official``, decodes their phrase
with special tokens and ``.`` left out and whitespace collapsed, and gives a box only to the
prompt phrase whose own tokens decode to exactly that text ("teddy bear" matches a
decoded "teddy bear"; a query spread over "teddy" and "dog" decodes to "teddy dog" and matches
nothing): fewer nouns get a box than in the release.

Batching. Images are preprocessed exactly as groundingdino's ``load_image`` (resize to
``image_size`` on the shorter side, capped at ``max_size`` on the longer, ToTensor, ImageNet
normalisation). Up to ``batch_size`` prompts share a forward, padded by groundingdino's
``nested_tensor_from_tensor_list`` -- but only prompts whose images have the same resized
size: Swin's windowed attention and the deformable attention's sampling see padding pixels,
so an image padded to a larger neighbour gets different boxes and scores than alone. Bucketing
by size keeps batched results equal to one-image results (COCO's images mostly share a few
sizes, so batches stay full there). Prompts of different lengths share a batch safely once
``fix_text_mask_batching`` (applied by ``load_grounding_dino``) has fixed the head/batch
order of groundingdino's text-enhancer attention mask.

Shapes: ``pred_logits`` (B, num_queries, 256), ``pred_boxes`` (B, num_queries, 4) as
normalised cxcywh relative to each image's unpadded size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from PIL import Image

from pipeline.core.images import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.grounding_dino import DEFAULT_MAX_TEXT_LEN, quiet_groundingdino


PHRASE_RULES: tuple[str, ...] = ("best_phrase", "exact_phrase", "official")
#: the steps of ``match_official``'s chain, in order, and what an unmatched box is
MATCH_STEPS: tuple[str, ...] = ("exact", "upper", "lower", "hyphen", "word", "substring", "all_words")
NO_MATCH, REPLACED = "none", "replaced"


@dataclass(frozen=True)
class Detection:
    """One box for one of an image's phrases; ``box_xyxy`` in original image pixels.

    ``phrase_index`` is -1 for a box whose decoded phrase matches none of the image's phrases
    (``exact_phrase`` and ``official`` rules). ``query``: the query's position in the image's
    model outputs (prompt-major); ``match``: ``official``'s step (``MATCH_STEPS``, ``none``,
    ``replaced``), "" under the other rules.
    """

    phrase_index: int
    box_xyxy: tuple[float, float, float, float]
    score: float
    phrase: str
    query: int = -1
    match: str = ""


@dataclass(frozen=True)
class Prompt:
    """One text prompt: ``text`` holds the phrases ``phrase_indices`` at ``char_spans``."""

    text: str
    phrase_indices: tuple[int, ...]
    char_spans: tuple[tuple[int, int], ...]


# ----------------------------------------------------------------------------- prompts

_SEPARATORS = re.compile(r"[.?]")


def normalize_phrase(phrase: str) -> str:
    """Lower-case, separators (``.``, ``?``) to spaces, single spaces; empty is an error."""
    text = " ".join(_SEPARATORS.sub(" ", phrase.lower()).split())
    if not text:
        raise ValueError(f"phrase {phrase!r} is empty after normalisation")
    return text


def build_prompts(phrases: Sequence[str], tokenizer, max_text_len: int = DEFAULT_MAX_TEXT_LEN) -> list[Prompt]:
    """Pack an image's phrases into as few ``"p1 . p2 ."`` prompts as fit ``max_text_len`` tokens."""
    cleaned = [normalize_phrase(p) for p in phrases]
    prompts: list[Prompt] = []
    budget = max_text_len - 2  # [CLS], [SEP]
    current: list[int] = []
    used = 0
    for i, text in enumerate(cleaned):
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens == 0:
            raise ValueError(f"phrase {phrases[i]!r} has no tokens")
        cost = n_tokens + 1  # the phrase and its " ."
        if cost > budget:
            raise ValueError(f"phrase {phrases[i]!r} alone needs {cost + 2} > {max_text_len} tokens")
        if used + cost > budget:
            prompts.append(_make_prompt(cleaned, current))
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        prompts.append(_make_prompt(cleaned, current))
    return prompts


def _make_prompt(cleaned: list[str], indices: list[int]) -> Prompt:
    text, spans = "", []
    for i in indices:
        if text:
            text += " "
        spans.append((len(text), len(text) + len(cleaned[i])))
        text += cleaned[i] + " ."
    return Prompt(text=text, phrase_indices=tuple(indices), char_spans=tuple(spans))


def phrase_token_positions(tokenizer, text: str, char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions (in ``tokenizer(text)``, [CLS] = 0) covered by each character span."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("phrase spans need a fast tokenizer (offsets mapping); got a slow one")
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    positions = []
    for start, end in char_spans:
        pos = [k for k, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]
        if not pos:
            raise ValueError(f"no tokens for span {text[start:end]!r} in prompt {text!r}")
        positions.append(pos)
    return positions


# ----------------------------------------------------------------------------- the release's matching


def _word_step(phrase: str, nouns: Sequence[str]) -> tuple[int | None, str]:
    """Steps 5-6: a word of the other, then (winning whenever it matches) a substring of the other."""
    low = phrase.lower()
    words = low.split(" ")
    found: int | None = None
    for k, noun in enumerate(nouns):
        if noun.lower() in words or low in noun.lower().split(" "):
            found = k
            break
    for k, noun in enumerate(nouns):
        if noun.lower() in low or low in noun.lower():
            return k, "word" if k == found else "substring"
    return found, "word"


def match_official_step(phrase: str, nouns: Sequence[str]) -> tuple[int | None, str]:
    """``match_official`` and the step of the chain that matched (``MATCH_STEPS``; ``none``)."""
    for step, candidate in (("exact", phrase), ("upper", phrase.upper()), ("lower", phrase.lower()),
                            ("hyphen", phrase.replace(" - ", "-"))):
        if candidate in nouns:
            return list(nouns).index(candidate), step
    found, step = _word_step(phrase, nouns)
    if found is not None:
        return found, step
    tokens = phrase.split(" ")
    for k, noun in enumerate(nouns):
        if all(t.lower() in noun.lower() for t in tokens):
            return k, "all_words"
    return None, NO_MATCH


def match_official(phrase: str, nouns: Sequence[str]) -> int | None:
    """The noun (its index in ``nouns``, the image's noun list) that TokenCompose's data preparation
    gives a decoded Grounding DINO ``phrase``, or None.

    The chain (``gen_mask.py``): the phrase itself; its upper case; its lower case; ``" - "``
    replaced by ``"-"``; otherwise the first noun whose lower case is one of the phrase's words
    (split on single spaces) or that has the phrase as one of its words, then overridden by the
    first noun that contains the phrase or is contained in it (lower case; an empty phrase
    matches the first noun); otherwise the first noun that contains every word of the phrase.
    """
    return match_official_step(phrase, nouns)[0]


def assign_official(detections: Sequence[Detection], nouns: Sequence[str]) -> list[Detection]:
    """One image's detections -> the same detections with ``phrase_index`` and ``match`` set.

    Detections are grouped by decoded phrase (ordered by their first ``query``); each phrase is
    matched with ``match_official``; when two phrases match one noun the later one keeps it and
    the earlier one's boxes become ``replaced`` (``phrase_index = -1``).
    """
    order = sorted(detections, key=lambda d: d.query)
    phrases = list(dict.fromkeys(d.phrase for d in order))
    matched = {p: match_official_step(p, nouns) for p in phrases}
    owner: dict[int, str] = {}
    for p in phrases:
        if matched[p][0] is not None:
            owner[matched[p][0]] = p
    out = []
    for d in detections:
        index, step = matched[d.phrase]
        if index is None:
            out.append(replace(d, phrase_index=-1, match=NO_MATCH))
        elif owner[index] != d.phrase:
            out.append(replace(d, phrase_index=-1, match=REPLACED))
        else:
            out.append(replace(d, phrase_index=index, match=step))
    return out


# ----------------------------------------------------------------------------- inference


def preprocess_image(image: Image.Image, image_size: int, max_size: int) -> torch.Tensor:
    """groundingdino's ``load_image`` transform on a PIL image: (3, H, W) float, normalised."""
    import groundingdino.datasets.transforms as T

    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise ValueError(f"expected an RGB PIL image, got {getattr(image, 'mode', type(image).__name__)}")
    resized, _ = T.resize(image, None, image_size, max_size)
    tensor, _ = T.Compose([T.ToTensor(), T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])(resized, None)
    return tensor


def _batches(shapes: list[tuple[int, int]], batch_size: int | None) -> list[list[int]]:
    """Job indices grouped by image shape (first-seen order), chunked to ``batch_size``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(j)
    size = batch_size or len(shapes)
    return [idx[k : k + size] for idx in groups.values() for k in range(0, len(idx), size)]


@torch.inference_mode()
def ground_images(
    model: torch.nn.Module,
    images: Sequence[Image.Image],
    phrases: Sequence[Sequence[str]],
    box_threshold: float,
    text_threshold: float,
    image_size: int,
    max_size: int,
    device: str,
    batch_size: int | None = None,
    phrase_rule: str = "best_phrase",
) -> list[list[Detection]]:
    """Boxes for each image's phrases; ``result[i]`` lists image i's detections, best score first.

    ``phrases[i]`` are image i's distinct phrases; ``Detection.phrase_index`` indexes them.
    ``batch_size`` caps the prompts per forward (default: all that share an image size).
    ``phrase_rule``: ``best_phrase`` | ``exact_phrase`` | ``official`` (see the module docstring);
    under ``official`` the decoded phrases are matched to ``phrases[i]`` as given (case kept, as
    the release matches against its noun list), while the prompt holds them normalised.
    """
    from groundingdino.util.misc import nested_tensor_from_tensor_list

    if phrase_rule not in PHRASE_RULES:
        raise ValueError(f"phrase_rule must be one of {PHRASE_RULES}, got {phrase_rule!r}")
    if len(images) != len(phrases):
        raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
    tokenizer = model.tokenizer
    max_text_len = getattr(model, "max_text_len", DEFAULT_MAX_TEXT_LEN)

    tensors = [preprocess_image(im, image_size, max_size) for im in images]
    jobs: list[tuple[int, int, Prompt]] = [
        (i, k, prompt) for i, ps in enumerate(phrases) if ps
        for k, prompt in enumerate(build_prompts(ps, tokenizer, max_text_len))
    ]
    results: list[list[Detection]] = [[] for _ in images]
    shapes = [tuple(tensors[i].shape[-2:]) for i, _, _ in jobs]
    for batch in _batches(shapes, batch_size):
        samples = nested_tensor_from_tensor_list([tensors[jobs[j][0]] for j in batch]).to(device)
        captions = [jobs[j][2].text for j in batch]
        with quiet_groundingdino():
            out = model(samples, captions=captions)
        probs = out["pred_logits"].float().sigmoid().cpu()  # (B, nq, 256)
        boxes = out["pred_boxes"].float().cpu()  # (B, nq, 4) cxcywh in [0, 1]
        for b, j in enumerate(batch):
            i, k, prompt = jobs[j]
            width, height = images[i].size
            dets = _detections(probs[b], boxes[b], prompt, tokenizer, box_threshold, text_threshold, width, height,
                               phrase_rule)
            results[i].extend(replace(d, query=d.query + k * probs.shape[1]) for d in dets)
    if phrase_rule == "official":
        results = [assign_official(dets, ps) for dets, ps in zip(results, phrases)]
    for dets in results:
        dets.sort(key=lambda d: -d.score)
    return results


def _detections(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    prompt: Prompt,
    tokenizer,
    box_threshold: float,
    text_threshold: float,
    width: int,
    height: int,
    phrase_rule: str = "best_phrase",
) -> list[Detection]:
    """One prompt's queries -> kept detections. ``probs`` (nq, 256), ``boxes`` (nq, 4) cxcywh."""
    from groundingdino.util.utils import get_phrases_from_posmap

    positions = phrase_token_positions(tokenizer, prompt.text, prompt.char_spans)
    tokenized = tokenizer(prompt.text)
    if phrase_rule == "best_phrase":
        phrase_scores = torch.stack([probs[:, pos].max(dim=1).values for pos in positions], dim=1)  # (nq, P)
        best_score, best = phrase_scores.max(dim=1)
        keep = (best_score > box_threshold) & (best_score > text_threshold)
    else:
        best_score = probs.max(dim=1).values  # (nq,) over every prompt token, specials included
        keep = best_score > box_threshold
    if phrase_rule == "exact_phrase":
        own = {_decoded(tokenizer, [tokenized["input_ids"][k] for k in pos]): j for j, pos in enumerate(positions)}
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * scale
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    detections = []
    special = set(tokenizer.all_special_ids)
    words = torch.zeros(probs.shape[-1], dtype=torch.bool)
    words[: len(tokenized["input_ids"])] = torch.tensor([t not in special for t in tokenized["input_ids"]])
    in_text = torch.zeros(probs.shape[-1], dtype=torch.bool)
    in_text[1: len(tokenized["input_ids"])] = True  # the release's decode: every token but [CLS]
    for q in keep.nonzero().flatten().tolist():
        if phrase_rule == "official":
            text = get_phrases_from_posmap((probs[q] > text_threshold) & in_text, tokenized, tokenizer)
        else:
            posmap = (probs[q] > text_threshold) & words
            text = " ".join(get_phrases_from_posmap(posmap, tokenized, tokenizer).replace(".", "").split())
        if phrase_rule == "best_phrase":
            phrase_index = prompt.phrase_indices[int(best[q])]
        elif phrase_rule == "exact_phrase":
            j = own.get(text, -1) if text else -1
            phrase_index = prompt.phrase_indices[j] if j >= 0 else -1
        else:  # official: matched per image by assign_official
            phrase_index = -1
        box = tuple(float(v) for v in xyxy[q])
        detections.append(Detection(phrase_index, box, float(best_score[q]), text, query=q))
    return detections


def _decoded(tokenizer, token_ids: list[int]) -> str:
    """What ``get_phrases_from_posmap`` makes of these tokens, normalised as the decoded phrases."""
    return " ".join(tokenizer.decode(token_ids).replace(".", "").split())
