"""The training dataset: captions + nouns + masks tables -> batches for TokenCompose training.

``build_examples`` joins the tables into one ``Example`` per caption with its supervised
nouns; ``TokenComposeDataset`` turns an example into tensors; ``collate`` pads a batch of
examples with different noun and token counts.

Which nouns are supervised (each noun occurrence of the nouns table lands in exactly one
count of the summary, and ``input_nouns`` is their sum):

- ``nouns_of_rejected_captions``: the caption was rejected (its image is missing or unreadable);
- ``truncated_nouns``: the noun has tokens past position 75, the last one SD's 77-token window
  keeps (``truncated`` in the nouns table); not supervised, even partly, and logged;
- ``unmasked_nouns``: no row in the masks table (no box was found for it, or no reference mask);
- ``nouns_without_tokens``: no CLIP token overlaps the noun (not seen with real captions);
- ``full_image_masks``: the mask, as the loss sees it (center crop, resized to a supervised
  attention resolution), covers more than ``max_mask_coverage`` of the map at some
  resolution. Such a mask carries no signal: L_token is ~0 from the start and the share of
  attention inside it is ~1 whatever the model does. Each is a reject row (key: noun id,
  reason ``mask_covers_image``, the coverage and resolution in the detail). With
  ``max_mask_coverage`` 1 no mask can be rejected, so none is decoded and the count is 0
  (``mask_coverage_checked`` says whether masks were measured);
- ``supervised_nouns``: the rest; the loss terms see these only.

Captions: ``captions = examples + rejected``. A caption longer than 77 tokens is kept, its
input ids truncated as SD does (``long_captions``). An example without a supervised noun is
kept: it contributes only to L_LDM, as in the official code (``examples_without_masks``).

Image and mask transforms reproduce the official code (``data_utils.py`` and
``loss_utils.py`` of mlpc-ucsd/TokenCompose, torchvision 0.14):

- image: ``Resize(R, bilinear)`` on the PIL image (the shorter side to R; PIL's filter
  antialiases), ``CenterCrop(R)``, ``ToTensor``, ``Normalize(0.5, 0.5)`` -> values in [-1, 1],
  as diffusers' ``train_text_to_image.py``;
- mask at full resolution: the same ``Resize(R, bilinear)`` + crop on the mask as an 8-bit
  image, ``ToTensor`` -> a graded (R, R) map in [0, 1], not binarised (the official code kept
  it graded; binarising it with ``> 0`` first would give the same final masks, because the
  next step's bilinear weights are non-negative and ``> 0`` only asks whether any sampled
  pixel is non-zero);
- mask per attention resolution r: bilinear interpolation to (r, r) **without antialiasing**
  (``F.interpolate(align_corners=False, antialias=False)``, what torchvision 0.14's tensor
  ``Resize`` did), then ``> 0``. Each latent pixel looks at the 2 x 2 full-resolution pixels
  around its centre, so objects thinner than R / r pixels can vanish at small r: the
  official semantics, kept on purpose.

These masks are computed here, once per example, not in the training step.

Start-up cost at COCO scale (118,287 images): an image is checked by opening its header once
per content; its size is kept in the digest cache (``pipeline.core.digests``) with the file's
stat signature, so a later start opens no image whose file is unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from transformers import CLIPTokenizer

from pipeline.core.digests import DigestCache, default_cache, inputs_digest
from pipeline.core.images import load_rgb
from pipeline.core.masks import decode_rle, resize_mask
from pipeline.core.tables import read_table
from pipeline.models.clip_tokenizer import LAST_CONTENT_POSITION, MODEL_MAX_LENGTH
from pipeline.models.weight_files import model_inputs, train_components

log = logging.getLogger(__name__)


CAPTION_COLUMNS = ["image_id", "caption_id", "path", "width", "height", "caption"]
NOUN_COLUMNS = ["noun_id", "caption_id", "image_id", "text", "token_indices", "truncated"]
MASK_COLUMNS = ["noun_id", "caption_id", "image_id", "height", "width", "rle"]


@dataclass(frozen=True)
class NounTarget:
    """One supervised noun: its token positions (start token = 0) and its full-size mask as RLE."""

    noun_id: int
    text: str
    token_indices: tuple[int, ...]
    rle: bytes
    height: int
    width: int


@dataclass(frozen=True)
class Example:
    """One caption of one image and its supervised nouns (possibly none)."""

    caption_id: int
    image_id: int
    image_path: str
    caption: str
    height: int
    width: int
    nouns: tuple[NounTarget, ...]


def training_inputs(captions_path: str | Path, nouns_path: str | Path, masks_path: str | Path | None,
                    pretrained: str | Path, variant: str | None = None) -> list[str]:
    """Every input training reads, for its resume key: the three tables, the files of the
    pretrained model that ``load_sd_components`` reads (``pipeline.models.weight_files``; a hub id
    as its text) and every image the captions table names, sorted and distinct."""
    images = sorted(set(read_table(captions_path, columns=["path"]).column("path").to_pylist()))
    tables = [str(captions_path), str(nouns_path)] + ([str(masks_path)] if masks_path is not None else [])
    return tables + model_inputs(pretrained, variant, train_components(pretrained)) + images


def training_inputs_digest(captions_path: str | Path, nouns_path: str | Path, masks_path: str | Path | None,
                           pretrained: str | Path, variant: str | None = None,
                           cache: DigestCache | None = None) -> str:
    """16-hex digest of ``training_inputs``' bytes, each file read only when its stat signature
    changed since the digest cache saw it (``pipeline.core.digests``). Call it on the main
    process only and send the result to the others (``pipeline.core.digests.on_main_process``)."""
    return inputs_digest(*training_inputs(captions_path, nouns_path, masks_path, pretrained, variant), cache=cache)


def _check_unique(values: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(values, return_counts=True)
    dupes = uniq[counts > 1].tolist()
    if dupes:
        raise ValueError(f"{what} is not unique: {len(dupes)} repeated, e.g. {dupes[:5]}")


def _header_size(path: Path) -> list[int]:
    """``[width, height]`` from the image's header (the pixels are not decoded)."""
    with Image.open(path) as img:
        return list(img.size)


def _image_problem(path: str, width: int, height: int, decode: bool,
                   cache: DigestCache | None = None) -> tuple[str, str] | None:
    """``None`` if the image opens with the expected size, else ``(reason, detail)``.

    decode: decode the pixels (never cached); else the header's size, from ``cache`` while the
    file's stat signature is unchanged (None: always opened).
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "unreadable_image", f"{path}: no such file"
    except (OSError, ValueError) as e:
        return "unreadable_image", f"{path}: {type(e).__name__}: {e}"
    if not stat.S_ISREG(st.st_mode):
        return "unreadable_image", f"{path}: not a file"
    try:
        if decode:
            size = load_rgb(path).size
        elif cache is not None:
            size = tuple(cache.fact(path, "image_size", _header_size, st))
        else:
            size = tuple(_header_size(Path(path)))
    except Exception as e:  # noqa: BLE001 - any failure to open is a recorded reject
        return "unreadable_image", f"{path}: {type(e).__name__}: {e}"
    if size != (width, height):
        return "image_size_mismatch", f"{path}: {size[0]} x {size[1]}, captions table says {width} x {height}"
    return None


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, found)``: where each query sits in ``sorted_keys`` and whether it is there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == queries


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


@dataclass
class _Tables:
    """The joined tables as columns (training start-up reads millions of rows: no row dicts).

    Captions sorted by caption_id; nouns sorted by (caption_id, noun_id), caption ``i``'s nouns
    at positions ``[start[i], end[i])``; ``mask_of[k]``: the masks row of noun ``k``, or -1.
    """

    captions: dict[str, list]
    nouns: dict[str, list]
    masks: dict[str, list]
    start: np.ndarray
    end: np.ndarray
    noun_caption: np.ndarray   # (nouns,) the caption position of each noun
    token_offsets: np.ndarray  # (nouns + 1,) noun k's token indices: tokens[offsets[k]:offsets[k+1]]
    tokens: list[int]
    mask_of: np.ndarray


def _read_captions(captions_path: str | Path) -> pa.Table:
    captions = read_table(captions_path, columns=CAPTION_COLUMNS)
    captions = captions.take(np.argsort(_ints(captions, "caption_id"), kind="stable"))
    _check_unique(_ints(captions, "caption_id"), "captions table caption_id")
    return captions


def _read_nouns(nouns_path: str | Path, cap_ids: np.ndarray, cap_images: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """The nouns sorted by (caption_id, noun_id), and each one's caption position; checked."""
    nouns = read_table(nouns_path, columns=NOUN_COLUMNS)
    _check_unique(_ints(nouns, "noun_id"), "nouns table noun_id")
    nouns = nouns.take(np.lexsort((_ints(nouns, "noun_id"), _ints(nouns, "caption_id"))))
    noun_caps, noun_images = _ints(nouns, "caption_id"), _ints(nouns, "image_id")
    pos, ok = _lookup(cap_ids, noun_caps)
    ok &= cap_images[pos] == noun_images if len(cap_ids) else ok
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"nouns table: noun {_ints(nouns, 'noun_id')[k]} of caption {noun_caps[k]} "
                         f"is not in the captions table")
    return nouns, pos


def _check_tokens(nouns: pa.Table) -> tuple[np.ndarray, list[int]]:
    """``(offsets, flat token indices)`` of the nouns' token_indices; out-of-range ones raise."""
    col = nouns.column("token_indices").combine_chunks()
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    bad = (flat < 1) | (flat > LAST_CONTENT_POSITION)
    if bad.any():
        k = int(np.searchsorted(offsets, int(np.flatnonzero(bad)[0]), side="right") - 1)
        values = flat[offsets[k]:offsets[k + 1]]
        raise ValueError(f"noun {_ints(nouns, 'noun_id')[k]}: token indices "
                         f"{[int(i) for i in values if not 1 <= i <= LAST_CONTENT_POSITION]} "
                         f"outside [1, {LAST_CONTENT_POSITION}]")
    return offsets, flat.tolist()


def _read_masks(masks_path: str | Path | None, nouns: pa.Table) -> tuple[dict[str, list], np.ndarray]:
    """The masks table's columns, and for each noun position its masks row (-1: none); checked."""
    mask_of = np.full(nouns.num_rows, -1, dtype=np.int64)
    if masks_path is None:
        return {k: [] for k in MASK_COLUMNS}, mask_of
    masks = read_table(masks_path, columns=MASK_COLUMNS)
    mask_nouns, mask_caps = _ints(masks, "noun_id"), _ints(masks, "caption_id")
    _check_unique(mask_nouns, "masks table noun_id")
    noun_ids, noun_caps = _ints(nouns, "noun_id"), _ints(nouns, "caption_id")
    order = np.argsort(noun_ids, kind="stable")
    pos, ok = _lookup(noun_ids[order], mask_nouns)
    found = order[pos] if len(order) else pos
    ok &= noun_caps[found] == mask_caps if len(order) else ok
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"masks table: noun {mask_nouns[k]} of caption {mask_caps[k]} is not a row of the nouns table")
    mask_of[found] = np.arange(len(mask_nouns))
    return {k: masks.column(k).to_pylist() for k in ("height", "width", "rle")}, mask_of


def _read_tables(captions_path: str | Path, nouns_path: str | Path, masks_path: str | Path | None) -> _Tables:
    captions = _read_captions(captions_path)
    cap_ids = _ints(captions, "caption_id")
    nouns, noun_caption = _read_nouns(nouns_path, cap_ids, _ints(captions, "image_id"))
    offsets, tokens = _check_tokens(nouns)
    masks, mask_of = _read_masks(masks_path, nouns)
    noun_caps = _ints(nouns, "caption_id")
    return _Tables(
        captions={k: captions.column(k).to_pylist() for k in CAPTION_COLUMNS},
        nouns={k: nouns.column(k).to_pylist() for k in ("noun_id", "text", "truncated")},
        masks=masks, start=np.searchsorted(noun_caps, cap_ids, "left"),
        end=np.searchsorted(noun_caps, cap_ids, "right"), noun_caption=noun_caption,
        token_offsets=offsets, tokens=tokens, mask_of=mask_of,
    )


def build_examples(
    captions_path: str | Path,
    nouns_path: str | Path,
    masks_path: str | Path | None,
    tokenizer: CLIPTokenizer | None = None,
    decode_images: bool = False,
    coverage: MaskCoverage | None = None,
    cache: DigestCache | None = None,
) -> tuple[list[Example], list[tuple[str, str, str]], dict[str, Any]]:
    """Join the tables into ``(examples, rejects, summary)``; see the module docstring.

    masks_path: a masks table file or shard folder (``segment``'s or ``reference_masks``'s),
    or None for no masks at all. tokenizer: when given, ``long_captions`` counts captions of
    more than 77 tokens (else it is None). decode_images: check images by a full decode
    instead of opening their header. coverage: when given, nouns whose mask covers more than
    ``coverage.max_share`` of the map at one of its resolutions are not supervised
    (``full_image_masks``); None, or a ``max_share`` of 1 (no mask can cover more), keeps
    every mask without decoding any. cache: where image header sizes are kept (default: the
    process's ``default_cache()``, saved on return). rejects: ``(key, reason, detail)``: a
    caption id with ``unreadable_image`` or ``image_size_mismatch`` (``rejected`` counts these),
    or a noun id with ``mask_covers_image``. Examples are sorted by caption_id.
    Inconsistent tables (duplicate ids, a noun or mask of an unknown caption, a mask whose
    size differs from its image's) raise ValueError.
    """
    own = cache is None
    cache = default_cache() if own else cache
    t = _read_tables(captions_path, nouns_path, masks_path)
    coverage = coverage if coverage is not None and coverage.can_reject else None
    problems = _image_problems(t.captions, decode_images, cache)
    if own:
        cache.save()
    kept = np.fromiter((p is None for p in problems), dtype=bool, count=len(problems))
    kinds = _noun_kinds(t, kept)
    with _collector_paused():  # millions of acyclic objects: the cycle collector would rescan them all
        examples, mask_rejects = _examples(t, problems, kinds["candidate"] & kept[t.noun_caption], coverage)
    rejects = [(str(c), *p) for c, p in zip(t.captions["caption_id"], problems) if p is not None]
    long_captions = None
    if tokenizer is not None:
        long_captions = sum(is_long_caption(tokenizer, e.caption) for e in examples)
    truncated = np.flatnonzero(kinds["truncated"] & kept[t.noun_caption])
    if len(truncated):
        log.warning("%d noun(s) lie past SD's 77-token window and are not supervised, e.g. noun ids %s",
                    len(truncated), [t.nouns["noun_id"][k] for k in truncated[:5]])
    counts = {name: int((kinds[name] & kept[t.noun_caption]).sum()) for name in
              ("truncated", "unmasked", "without_tokens")}
    summary = _examples_summary(t, examples, rejects, counts, long_captions, coverage, len(mask_rejects))
    if mask_rejects:
        log.warning("%d of %d masked nouns have a mask covering more than %s of an attention map and are not "
                    "supervised (reason mask_covers_image), e.g. %s", len(mask_rejects),
                    len(mask_rejects) + summary["supervised_nouns"], coverage.max_share, mask_rejects[0][2])
    log.info("training data: %d examples (%d without masks), %d rejected, %d supervised nouns",
             len(examples), summary["examples_without_masks"], len(rejects), summary["supervised_nouns"])
    return examples, rejects + mask_rejects, summary


@contextlib.contextmanager
def _collector_paused():
    """Python's cycle collector off for the block (and back on after, if it was on)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _image_problems(captions: dict[str, list], decode: bool, cache: DigestCache) -> list[tuple[str, str] | None]:
    """Each caption's image problem (None: the image is fine), every distinct image checked once."""
    checked: dict[str, tuple[str, str] | None] = {}
    out = []
    for path, width, height in zip(captions["path"], captions["width"], captions["height"]):
        if path not in checked:
            checked[path] = _image_problem(path, width, height, decode, cache)
        out.append(checked[path])
    return out


def _noun_kinds(t: _Tables, kept: np.ndarray) -> dict[str, np.ndarray]:
    """Per noun position: truncated, unmasked, without_tokens, candidate (to supervise, unless its
    mask covers the map); a candidate of a kept caption whose mask size differs raises ValueError."""
    truncated = np.asarray(t.nouns["truncated"], dtype=bool)
    has_mask = t.mask_of >= 0
    has_tokens = np.diff(t.token_offsets) > 0
    candidate = ~truncated & has_mask & has_tokens
    check = np.flatnonzero(candidate & kept[t.noun_caption])
    rows, caps = t.mask_of[check], t.noun_caption[check]
    mh, mw = np.asarray(t.masks["height"], np.int64), np.asarray(t.masks["width"], np.int64)
    ch, cw = np.asarray(t.captions["height"], np.int64), np.asarray(t.captions["width"], np.int64)
    bad = np.flatnonzero((mh[rows] != ch[caps]) | (mw[rows] != cw[caps])) if len(check) else []
    if len(bad):
        k, m, c = int(check[bad[0]]), int(rows[bad[0]]), int(caps[bad[0]])
        raise ValueError(f"noun {t.nouns['noun_id'][k]}: mask is {mh[m]} x {mw[m]}, its image {ch[c]} x {cw[c]}")
    return {"truncated": truncated, "unmasked": ~truncated & ~has_mask,
            "without_tokens": ~truncated & has_mask & ~has_tokens, "candidate": candidate}


def _examples(t: _Tables, problems: list, supervise: np.ndarray, coverage: MaskCoverage | None
              ) -> tuple[list[Example], list[tuple[str, str, str]]]:
    """One Example per kept caption with its candidate nouns; masks covering the map are rejected."""
    caps, nouns, masks = t.captions, t.nouns, t.masks
    cand = np.flatnonzero(supervise)
    first, last = np.searchsorted(cand, t.start).tolist(), np.searchsorted(cand, t.end).tolist()
    cand, mask_of, offsets, tokens = cand.tolist(), t.mask_of.tolist(), t.token_offsets.tolist(), t.tokens
    examples, mask_rejects = [], []
    for i, problem in enumerate(problems):
        if problem is not None:
            continue
        targets = []
        for k in cand[first[i]:last[i]]:
            m = mask_of[k]
            target = NounTarget(noun_id=nouns["noun_id"][k], text=nouns["text"][k],
                                token_indices=tuple(tokens[offsets[k]:offsets[k + 1]]), rle=bytes(masks["rle"][m]),
                                height=masks["height"][m], width=masks["width"][m])
            reject = _coverage_reject(coverage, target, caps["caption_id"][i]) if coverage is not None else None
            if reject is not None:
                mask_rejects.append(reject)
                continue
            targets.append(target)
        examples.append(Example(caption_id=caps["caption_id"][i], image_id=caps["image_id"][i],
                                image_path=caps["path"][i], caption=caps["caption"][i], height=caps["height"][i],
                                width=caps["width"][i], nouns=tuple(targets)))
    return examples, mask_rejects


def _coverage_reject(coverage: MaskCoverage, target: NounTarget, caption_id: int) -> tuple[str, str, str] | None:
    share, r = coverage.worst(target)
    if share <= coverage.max_share:
        return None
    return (str(target.noun_id), "mask_covers_image",
            f"caption {caption_id} {target.text!r}: mask covers {share:.3f} of the {r} x {r} attention map "
            f"(max_mask_coverage {coverage.max_share})")


def _examples_summary(t: _Tables, examples: list[Example], rejects: list, counts: dict[str, int],
                      long_captions: int | None, coverage: MaskCoverage | None, full: int) -> dict[str, Any]:
    """The counts of ``build_examples``; raises RuntimeError when they do not add up."""
    lengths = np.asarray(t.end) - np.asarray(t.start)
    rejected_ids = {int(k) for k, _, _ in rejects}
    of_rejected = int(sum(n for c, n in zip(t.captions["caption_id"], lengths.tolist()) if c in rejected_ids))
    summary = {
        "captions": len(t.captions["caption_id"]),
        "examples": len(examples),
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(r for _, r, _ in rejects).items())),
        "examples_without_masks": sum(not e.nouns for e in examples),
        "long_captions": long_captions,
        "input_nouns": len(t.nouns["noun_id"]),
        "supervised_nouns": sum(len(e.nouns) for e in examples),
        "truncated_nouns": counts["truncated"],
        "unmasked_nouns": counts["unmasked"],
        "nouns_without_tokens": counts["without_tokens"],
        "full_image_masks": full,
        "mask_coverage_checked": coverage is not None,
        "nouns_of_rejected_captions": of_rejected,
        "max_nouns_per_example": max((len(e.nouns) for e in examples), default=0),
    }
    noun_parts = ("supervised_nouns", "truncated_nouns", "unmasked_nouns", "nouns_without_tokens",
                  "full_image_masks", "nouns_of_rejected_captions")
    if summary["captions"] != summary["examples"] + summary["rejected"] or (
        summary["input_nouns"] != sum(summary[k] for k in noun_parts)
    ):
        raise RuntimeError(f"training data: counts do not add up: {summary}")
    return summary


def is_long_caption(tokenizer: CLIPTokenizer, caption: str) -> bool:
    """Whether ``caption`` has more than the 75 content tokens SD's 77-token window keeps.

    Tokenising is skipped where it cannot say yes: every CLIP BPE token covers at least one
    byte of the cleaned, lower-cased text, and for ASCII text without ``&`` (no HTML entity
    that ftfy could expand) cleaning adds no byte, so at most 75 non-space characters give
    at most 75 tokens. Most COCO captions are such; the others are tokenised.
    """
    limit = MODEL_MAX_LENGTH - 2
    if caption.isascii() and "&" not in caption and len(caption) - sum(map(caption.count, " \t\n\r\f\v")) <= limit:
        return False
    return len(tokenizer.tokenize(caption)) > limit


@dataclass(frozen=True)
class MaskCoverage:
    """How much of each attention map a noun's mask covers, as the loss sees it.

    resolution: R, the training crop side; latent_resolutions: the supervised map sides;
    max_share: the most a mask may cover at any of them and still be supervised.
    """

    resolution: int
    latent_resolutions: tuple[int, ...]
    max_share: float

    @property
    def can_reject(self) -> bool:
        """Whether any mask can cover more than ``max_share`` (not when it is 1: the whole map)."""
        return self.max_share < 1.0

    def worst(self, noun: NounTarget) -> tuple[float, int]:
        """``(share, r)``: the largest fraction of an ``r x r`` map the center-cropped mask covers."""
        masks = noun_masks([noun], self.resolution, self.latent_resolutions, crop=None)
        shares = {r: float(m[0].mean()) for r, m in masks.items()}
        r = max(shares, key=lambda k: (shares[k], -k))
        return shares[r], r


def _resize_shorter(img: Image.Image, resolution: int) -> Image.Image:
    return TF.resize(img, resolution, interpolation=InterpolationMode.BILINEAR)


def noun_masks(nouns: Sequence[NounTarget], resolution: int, latent_resolutions: Sequence[int],
               crop: tuple[int, int] | None) -> dict[int, torch.Tensor]:
    """The nouns' masks as the loss sees them: ``{r: (N, r, r)}`` float in {0, 1}.

    Each full-size mask is resized like its image (shorter side to ``resolution``, bilinear),
    cropped to ``resolution`` x ``resolution`` at ``crop = (top, left)`` (None: the center crop),
    then :func:`resize_mask` to every ``r`` (see the module docstring).
    """
    R = resolution
    full = torch.zeros(len(nouns), R, R)
    for k, noun in enumerate(nouns):
        mask = decode_rle(noun.rle, noun.height, noun.width)
        img = _resize_shorter(Image.fromarray(mask.astype(np.uint8) * 255), R)
        top, left = crop if crop is not None else crop_box(img.height, img.width, R, center=True)
        full[k] = TF.to_tensor(TF.crop(img, top, left, R, R))[0]
    return {r: resize_mask(full, r) for r in latent_resolutions}


def crop_box(height: int, width: int, resolution: int, center: bool) -> tuple[int, int]:
    """``(top, left)`` of the R x R crop of an image resized to ``(height, width)``.

    center: torchvision ``CenterCrop``'s offsets (``round((side - R) / 2)``); else uniform
    random offsets from torch's global RNG (seeded per DataLoader worker).
    """
    if height < resolution or width < resolution:
        raise ValueError(f"resized image {height} x {width} is smaller than the crop {resolution}")
    if center:
        return round((height - resolution) / 2.0), round((width - resolution) / 2.0)
    top = int(torch.randint(0, height - resolution + 1, (1,)).item())
    left = int(torch.randint(0, width - resolution + 1, (1,)).item())
    return top, left


class TokenComposeDataset(Dataset):
    """Examples -> tensors for TokenCompose training.

    tokenizer: SD's slow ``CLIPTokenizer`` (the one the token indices were computed with).
    resolution: R, the training image side. latent_resolutions: sides of the supervised
    attention maps (SD 1.4 at 512 px: [8, 16, 32, 64]; the tiny model at 64 px: [4, 8, 16]).
    center_crop: center crop (the official setting); False crops at random, image and masks alike.
    tokenizer_2: SDXL's second tokenizer (items gain ``input_ids_2``); None for SD1.x/2.x.
    Every item carries SDXL's ``time_ids`` (original size, crop top-left, target size): six numbers.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: CLIPTokenizer,
        resolution: int,
        latent_resolutions: Sequence[int],
        center_crop: bool = True,
        tokenizer_2: CLIPTokenizer | None = None,
    ):
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        sizes = [int(r) for r in latent_resolutions]
        if not sizes or len(set(sizes)) != len(sizes) or any(not 0 < r <= resolution for r in sizes):
            raise ValueError(
                f"latent_resolutions must be distinct sides in (0, {resolution}], got {list(latent_resolutions)}"
            )
        if tokenizer.model_max_length != MODEL_MAX_LENGTH:
            raise ValueError(
                f"expected SD's tokenizer with model_max_length {MODEL_MAX_LENGTH}, got {tokenizer.model_max_length}"
            )
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.resolution = resolution
        self.latent_resolutions = sizes
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.examples)

    def _resize(self, img: Image.Image) -> Image.Image:
        return _resize_shorter(img, self.resolution)

    def input_ids(self, caption: str, tokenizer: CLIPTokenizer | None = None) -> torch.Tensor:
        """``(77,)`` long: start, tokens (truncated to 75), end, padding (the end token; SDXL's second: "!")."""
        ids = (tokenizer or self.tokenizer)(caption, padding="max_length", max_length=MODEL_MAX_LENGTH,
                                            truncation=True, return_tensors="pt").input_ids
        return ids[0]

    def conditioning(self, ex: Example, top: int, left: int) -> dict[str, torch.Tensor]:
        """``input_ids`` (and SDXL's ``input_ids_2``) ``(77,)`` and ``time_ids`` ``(6,)`` of an example
        cropped at ``(top, left)``: ``(original h, w, top, left, R, R)`` as ``train_text_to_image_sdxl.py``."""
        R = self.resolution
        out = {"input_ids": self.input_ids(ex.caption),
               "time_ids": torch.tensor([ex.height, ex.width, top, left, R, R], dtype=torch.float32)}
        if self.tokenizer_2 is not None:
            out["input_ids_2"] = self.input_ids(ex.caption, self.tokenizer_2)
        return out

    def center_crop_box(self, ex: Example) -> tuple[int, int]:
        """``(top, left)`` of the centre crop of ``ex``'s image after the resize, from its size alone."""
        short, long = min(ex.width, ex.height), max(ex.width, ex.height)
        new_long = int(self.resolution * long / short)  # torchvision's rule for the longer side
        w, h = (self.resolution, new_long) if ex.width <= ex.height else (new_long, self.resolution)
        return crop_box(h, w, self.resolution, center=True)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One example as tensors.

        pixel_values ``(3, R, R)`` float in [-1, 1]; input_ids ``(77,)`` long (SDXL: input_ids_2 too);
        time_ids ``(6,)`` float; masks ``{r: (N, r, r)}`` float {0, 1} for each latent resolution (N = supervised nouns,
        possibly 0); token_indices: N lists of positions; noun_ids: N ints; caption_id: int.
        """
        ex = self.examples[i]
        image = load_rgb(ex.image_path)
        if image.size != (ex.width, ex.height):
            raise ValueError(f"{ex.image_path}: {image.size[0]} x {image.size[1]}, expected {ex.width} x {ex.height}")
        image = self._resize(image)
        top, left = crop_box(image.height, image.width, self.resolution, self.center_crop)
        R = self.resolution
        pixels = TF.to_tensor(TF.crop(image, top, left, R, R))
        pixel_values = TF.normalize(pixels, [0.5], [0.5])

        masks = noun_masks(ex.nouns, R, self.latent_resolutions, crop=(top, left))
        return {
            "pixel_values": pixel_values,
            **self.conditioning(ex, top, left),
            "masks": masks,
            "token_indices": [list(n.token_indices) for n in ex.nouns],
            "noun_ids": [n.noun_id for n in ex.nouns],
            "caption_id": ex.caption_id,
        }


#: stacked when the items have them: SDXL's second ids and time ids, ``train.cache_text``'s conditioning
OPTIONAL_KEYS = ("input_ids_2", "time_ids", "text_hidden", "text_pooled")


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of dataset items into a batch.

    Returns pixel_values ``(B, 3, R, R)``, input_ids ``(B, 77)`` (and :data:`OPTIONAL_KEYS` stacked
    when the items have them), token_indices ``(B, N, T)``
    long (padding 0), token_valid ``(B, N, T)`` bool, noun_valid ``(B, N)`` bool,
    noun_ids ``(B, N)`` long (padding -1), masks ``{r: (B, N, r, r)}`` float (padding 0),
    caption_ids ``(B,)`` long. N = the most nouns of an item (at least 1), T = the most
    tokens of a noun (at least 1); padded positions are False in the validity masks.
    """
    if not batch:
        raise ValueError("empty batch")
    keys = list(batch[0]["masks"])
    for item in batch:
        if list(item["masks"]) != keys:
            raise ValueError(f"items have different mask resolutions: {keys} vs {list(item['masks'])}")
    B = len(batch)
    N = max(1, max(len(item["token_indices"]) for item in batch))
    T = max(1, max((len(t) for item in batch for t in item["token_indices"]), default=1))
    token_indices = torch.zeros(B, N, T, dtype=torch.long)
    token_valid = torch.zeros(B, N, T, dtype=torch.bool)
    noun_valid = torch.zeros(B, N, dtype=torch.bool)
    noun_ids = torch.full((B, N), -1, dtype=torch.long)
    masks = {r: torch.zeros(B, N, r, r) for r in keys}
    for b, item in enumerate(batch):
        n = len(item["token_indices"])
        noun_valid[b, :n] = True
        if n:
            noun_ids[b, :n] = torch.tensor(item["noun_ids"], dtype=torch.long)
        for k, tokens in enumerate(item["token_indices"]):
            token_indices[b, k, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            token_valid[b, k, : len(tokens)] = True
        for r in keys:
            masks[r][b, :n] = item["masks"][r]
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "input_ids": torch.stack([item["input_ids"] for item in batch]),
        "token_indices": token_indices,
        "token_valid": token_valid,
        "noun_valid": noun_valid,
        "noun_ids": noun_ids,
        "masks": masks,
        "caption_ids": torch.tensor([item["caption_id"] for item in batch], dtype=torch.long),
        **{k: torch.stack([item[k] for item in batch]) for k in OPTIONAL_KEYS if k in batch[0]},
    }
