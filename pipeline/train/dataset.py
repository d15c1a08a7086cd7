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

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from pipeline.models.weight_files import SD_TRAIN_COMPONENTS, model_inputs

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
    return tables + model_inputs(pretrained, variant, SD_TRAIN_COMPONENTS) + images


def training_inputs_digest(captions_path: str | Path, nouns_path: str | Path, masks_path: str | Path | None,
                           pretrained: str | Path, variant: str | None = None,
                           cache: DigestCache | None = None) -> str:
    """16-hex digest of ``training_inputs``' bytes, each file read only when its stat signature
    changed since the digest cache saw it (``pipeline.core.digests``). Call it on the main
    process only and send the result to the others (``pipeline.core.digests.on_main_process``)."""
    return inputs_digest(*training_inputs(captions_path, nouns_path, masks_path, pretrained, variant), cache=cache)


def _check_unique(values: list[int], what: str) -> None:
    dupes = [k for k, n in Counter(values).items() if n > 1]
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
    if not Path(path).is_file():
        return "unreadable_image", f"{path}: no such file"
    try:
        if decode:
            size = load_rgb(path).size
        elif cache is not None:
            size = tuple(cache.fact(path, "image_size", _header_size))
        else:
            size = tuple(_header_size(Path(path)))
    except Exception as e:  # noqa: BLE001 - any failure to open is a recorded reject
        return "unreadable_image", f"{path}: {type(e).__name__}: {e}"
    if size != (width, height):
        return "image_size_mismatch", f"{path}: {size[0]} x {size[1]}, captions table says {width} x {height}"
    return None


def _masks_by_noun(masks_path: str | Path | None, noun_caption: dict[int, int]) -> dict[int, dict]:
    if masks_path is None:
        return {}
    rows = read_table(masks_path, columns=MASK_COLUMNS).to_pylist()
    _check_unique([r["noun_id"] for r in rows], "masks table noun_id")
    for r in rows:
        if noun_caption.get(r["noun_id"]) != r["caption_id"]:
            raise ValueError(
                f"masks table: noun {r['noun_id']} of caption {r['caption_id']} is not a row of the nouns table"
            )
    return {r["noun_id"]: r for r in rows}


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
    captions, nouns, nouns_of = _captions_and_nouns(captions_path, nouns_path)
    masks = _masks_by_noun(masks_path, {n["noun_id"]: n["caption_id"] for n in nouns})
    coverage = coverage if coverage is not None and coverage.can_reject else None

    image_check: dict[str, tuple[str, str] | None] = {}
    examples: list[Example] = []
    rejects: list[tuple[str, str, str]] = []
    mask_rejects: list[tuple[str, str, str]] = []
    truncated: list[int] = []
    count: Counter = Counter()
    for cap in captions:
        cid, path = cap["caption_id"], cap["path"]
        if path not in image_check:
            image_check[path] = _image_problem(path, cap["width"], cap["height"], decode_images, cache)
        if image_check[path] is not None:
            rejects.append((str(cid), *image_check[path]))
            count["nouns_of_rejected_captions"] += len(nouns_of[cid])
            continue
        if tokenizer is not None and is_long_caption(tokenizer, cap["caption"]):
            count["long_captions"] += 1
        targets = _caption_targets(cap, nouns_of[cid], masks, coverage, count, mask_rejects, truncated)
        count["supervised_nouns"] += len(targets)
        count["examples_without_masks"] += not targets
        examples.append(Example(
            caption_id=cid, image_id=cap["image_id"], image_path=path, caption=cap["caption"],
            height=cap["height"], width=cap["width"], nouns=tuple(targets),
        ))
    if own:
        cache.save()
    if truncated:
        log.warning("%d noun(s) lie past SD's 77-token window and are not supervised, e.g. noun ids %s",
                    len(truncated), truncated[:5])
    summary = _examples_summary(captions, nouns, examples, rejects, count, tokenizer is not None, coverage)
    if mask_rejects:
        log.warning("%d of %d masked nouns have a mask covering more than %s of an attention map and are not "
                    "supervised (reason mask_covers_image), e.g. %s", len(mask_rejects),
                    len(mask_rejects) + summary["supervised_nouns"], coverage.max_share, mask_rejects[0][2])
    log.info("training data: %d examples (%d without masks), %d rejected, %d supervised nouns",
             len(examples), summary["examples_without_masks"], len(rejects), summary["supervised_nouns"])
    return examples, rejects + mask_rejects, summary


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


def _captions_and_nouns(captions_path: str | Path, nouns_path: str | Path
                        ) -> tuple[list[dict], list[dict], dict[int, list[dict]]]:
    """``(captions sorted by caption_id, noun rows, {caption_id: its noun rows})``, checked for consistency."""
    captions = sorted(read_table(captions_path, columns=CAPTION_COLUMNS).to_pylist(), key=lambda r: r["caption_id"])
    nouns = read_table(nouns_path, columns=NOUN_COLUMNS).to_pylist()
    _check_unique([c["caption_id"] for c in captions], "captions table caption_id")
    _check_unique([n["noun_id"] for n in nouns], "nouns table noun_id")
    by_caption = {c["caption_id"]: c for c in captions}
    nouns_of: dict[int, list[dict]] = {c["caption_id"]: [] for c in captions}
    for n in nouns:
        cap = by_caption.get(n["caption_id"])
        if cap is None or cap["image_id"] != n["image_id"]:
            raise ValueError(
                f"nouns table: noun {n['noun_id']} of caption {n['caption_id']} is not in the captions table"
            )
        bad = [i for i in n["token_indices"] if not 1 <= i <= LAST_CONTENT_POSITION]
        if bad:
            raise ValueError(f"noun {n['noun_id']}: token indices {bad} outside [1, {LAST_CONTENT_POSITION}]")
        nouns_of[n["caption_id"]].append(n)
    return captions, nouns, nouns_of


def _caption_targets(cap: dict, nouns: list[dict], masks: dict[int, dict], coverage: MaskCoverage | None,
                     count: Counter, mask_rejects: list[tuple[str, str, str]], truncated: list[int]
                     ) -> list[NounTarget]:
    """The supervised nouns of one kept caption; every other noun lands in one count of ``count``
    (and in ``mask_rejects`` or ``truncated``, the noun ids past the 77-token window)."""
    targets = []
    for n in sorted(nouns, key=lambda r: r["noun_id"]):
        if n["truncated"]:
            count["truncated_nouns"] += 1
            truncated.append(n["noun_id"])
            continue
        m = masks.get(n["noun_id"])
        if m is None:
            count["unmasked_nouns"] += 1
            continue
        if not n["token_indices"]:
            count["nouns_without_tokens"] += 1
            continue
        if (m["height"], m["width"]) != (cap["height"], cap["width"]):
            raise ValueError(
                f"noun {n['noun_id']}: mask is {m['height']} x {m['width']}, its image {cap['height']} x {cap['width']}"
            )
        target = NounTarget(
            noun_id=n["noun_id"], text=n["text"], token_indices=tuple(int(i) for i in n["token_indices"]),
            rle=bytes(m["rle"]), height=m["height"], width=m["width"],
        )
        if coverage is not None:
            share, r = coverage.worst(target)
            if share > coverage.max_share:
                count["full_image_masks"] += 1
                mask_rejects.append((str(n["noun_id"]), "mask_covers_image",
                                     f"caption {cap['caption_id']} {n['text']!r}: mask covers {share:.3f} of the "
                                     f"{r} x {r} attention map (max_mask_coverage {coverage.max_share})"))
                continue
        targets.append(target)
    return targets


def _examples_summary(captions: list[dict], nouns: list[dict], examples: list[Example], rejects: list,
                      count: Counter, tokenized: bool, coverage: MaskCoverage | None) -> dict[str, Any]:
    """The counts of ``build_examples``; raises RuntimeError when they do not add up."""
    summary = {
        "captions": len(captions),
        "examples": len(examples),
        "rejected": len(rejects),
        "rejected_by_reason": dict(sorted(Counter(r for _, r, _ in rejects).items())),
        "examples_without_masks": count["examples_without_masks"],
        "long_captions": count["long_captions"] if tokenized else None,
        "input_nouns": len(nouns),
        "supervised_nouns": count["supervised_nouns"],
        "truncated_nouns": count["truncated_nouns"],
        "unmasked_nouns": count["unmasked_nouns"],
        "nouns_without_tokens": count["nouns_without_tokens"],
        "full_image_masks": count["full_image_masks"],
        "mask_coverage_checked": coverage is not None,
        "nouns_of_rejected_captions": count["nouns_of_rejected_captions"],
        "max_nouns_per_example": max((len(e.nouns) for e in examples), default=0),
    }
    noun_parts = ("supervised_nouns", "truncated_nouns", "unmasked_nouns", "nouns_without_tokens",
                  "full_image_masks", "nouns_of_rejected_captions")
    if summary["captions"] != summary["examples"] + summary["rejected"] or (
        summary["input_nouns"] != sum(summary[k] for k in noun_parts)
    ):
        raise RuntimeError(f"training data: counts do not add up: {summary}")
    return summary


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
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: CLIPTokenizer,
        resolution: int,
        latent_resolutions: Sequence[int],
        center_crop: bool = True,
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
        self.resolution = resolution
        self.latent_resolutions = sizes
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.examples)

    def _resize(self, img: Image.Image) -> Image.Image:
        return _resize_shorter(img, self.resolution)

    def input_ids(self, caption: str) -> torch.Tensor:
        """``(77,)`` long: start, tokens (truncated to 75), end, padding with the end token."""
        ids = self.tokenizer(caption, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                             return_tensors="pt").input_ids
        return ids[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One example as tensors.

        pixel_values ``(3, R, R)`` float in [-1, 1]; input_ids ``(77,)`` long;
        masks ``{r: (N, r, r)}`` float {0, 1} for each latent resolution (N = supervised nouns,
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
            "input_ids": self.input_ids(ex.caption),
            "masks": masks,
            "token_indices": [list(n.token_indices) for n in ex.nouns],
            "noun_ids": [n.noun_id for n in ex.nouns],
            "caption_id": ex.caption_id,
        }


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pad a list of dataset items into a batch.

    Returns pixel_values ``(B, 3, R, R)``, input_ids ``(B, 77)``, token_indices ``(B, N, T)``
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
    }
