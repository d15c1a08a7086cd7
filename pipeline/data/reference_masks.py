"""The ``reference_masks`` stage: COCO instance annotations -> a masks table for the nouns.

An alternative to ``ground`` + ``segment``: the masks are the human instance annotations
(exact on the demo dataset, COCO's polygons and crowd RLEs on COCO), so training can be run
and compared with reference masks instead of Grounding DINO + SAM ones.

Matching rule, for each noun occurrence of the nouns table, on its ``lemma`` (lower-cased,
whitespace collapsed; the nouns stage already singularises plurals, "teddy bears" ->
"teddy bear"). The first step that names a category of the instances file gives the
noun's candidate categories:

1. the lemma is a category name ("teddy bear", "cell phone", "skis");
2. the lemma is a key of ``SYNONYMS`` ("man" -> person, "bike" -> bicycle or motorcycle);
3. the lemma ends in "s" and without it steps 1-2 match (plurals the tagger missed, "kites");
4. the lemma has several words and its last word (the compound's head) matches by steps
   1-3 ("tennis player" -> person, "pepperoni pizza" -> pizza, "soccer ball" -> sports ball).

The noun is **matched** to the first candidate category with at least one annotation in
the noun's image; its mask is the union of all of that category's instance masks in the
image (crowd annotations included; ``n_boxes`` holds the number of instances united).
A noun with candidates but none annotated in its image counts as
**no_instance_in_image**; a noun without candidates counts as **unmatched**.
Neither is an error: ``input_nouns = matched + unmatched + no_instance_in_image``.

``SYNONYMS`` holds only words that name one COCO category in COCO captions (or, for "bike",
two, tried in order); words such as "bag", "glass", "bat" or "light" are left out.

Outputs: ``out_dir/masks/part-00000.parquet`` (``pipeline.core.schemas.MASKS_SCHEMA``, one row per
matched noun, so readers treat it like ``segment``'s shard folder) and ``out_dir/summary.json``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.config import ConfigError
from pipeline.core.masks import coco_segmentation_to_mask, encode_rle
from pipeline.core.schemas import MASKS_SCHEMA
from pipeline.core.tables import read_table, write_json, write_table

log = logging.getLogger(__name__)

STAGE = "reference_masks"
SHARD_NAME = "part-00000.parquet"

_PERSON = (
    "man", "woman", "person", "people", "boy", "girl", "child", "kid", "player", "guy", "lady",
    "gentleman", "baby", "toddler", "teenager", "adult", "skier", "surfer", "skateboarder",
    "snowboarder", "pedestrian",
)

SYNONYMS: dict[str, tuple[str, ...]] = {
    **{w: ("person",) for w in _PERSON},
    "men": ("person",),
    "women": ("person",),
    "children": ("person",),
    "bike": ("bicycle", "motorcycle"),
    "motorbike": ("motorcycle",),
    "plane": ("airplane",),
    "aeroplane": ("airplane",),
    "jet": ("airplane",),
    "airliner": ("airplane",),
    "jetliner": ("airplane",),
    "television": ("tv",),
    "tv": ("tv",),
    "sofa": ("couch",),
    "doughnut": ("donut",),
    "hotdog": ("hot dog",),
    "phone": ("cell phone",),
    "cellphone": ("cell phone",),
    "smartphone": ("cell phone",),
    "ball": ("sports ball",),
    "soccer ball": ("sports ball",),
    "tennis ball": ("sports ball",),
    "teddy": ("teddy bear",),
    "racket": ("tennis racket",),
    "racquet": ("tennis racket",),
    "hydrant": ("fire hydrant",),
    "fridge": ("refrigerator",),
    "puppy": ("dog",),
    "kitten": ("cat",),
    "kitty": ("cat",),
    "calf": ("cow",),
    "cattle": ("cow",),
    "lamb": ("sheep",),
    "ski": ("skis",),
    "scissor": ("scissors",),
    "purse": ("handbag",),
    "luggage": ("suitcase",),
    "houseplant": ("potted plant",),
    "table": ("dining table",),
    "hair dryer": ("hair drier",),
    "hairdryer": ("hair drier",),
    "taxi": ("car",),
    "sailboat": ("boat",),
    "ship": ("boat",),
    "locomotive": ("train",),
}

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class ReferenceMasksConfig:
    """Section ``reference_masks`` of params.yaml."""

    instances_json: str   # COCO instances file (instances_train2017.json, the demo's instances_train.json)
    out_dir: str          # writes masks/part-00000.parquet and summary.json

    def validate(self) -> None:
        if not self.instances_json:
            raise ConfigError("reference_masks.instances_json must be non-empty")
        if not self.out_dir:
            raise ConfigError("reference_masks.out_dir must be non-empty")


@dataclass
class Instances:
    """A COCO instances file, indexed: image sizes and annotations by (image, category name)."""

    sizes: dict[int, tuple[int, int]]                       # image_id -> (height, width)
    categories: set[str]
    annotations: dict[tuple[int, str], list[dict[str, Any]]] = field(default_factory=dict)

    def present(self, image_id: int, category: str) -> bool:
        return (image_id, category) in self.annotations

    def union_mask(self, image_id: int, category: str) -> tuple[np.ndarray, int]:
        """``((H, W) bool union of the category's instances in the image, instance count)``."""
        height, width = self.sizes[image_id]
        anns = self.annotations[(image_id, category)]
        mask = np.zeros((height, width), dtype=bool)
        for ann in anns:
            mask |= coco_segmentation_to_mask(ann["segmentation"], height, width)
        return mask, len(anns)


def load_instances(path: str | Path) -> Instances:
    """Read and index a COCO instances json; malformed files raise ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instances file not found: {path}")
    data = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO instances file (no list {key!r})")
    names: dict[int, str] = {}
    for c in data["categories"]:
        name = _normalise(str(c["name"]))
        if name in names.values():
            raise ValueError(f"{path}: category name {name!r} appears twice")
        names[int(c["id"])] = name
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in data["images"]}
    by_key: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        if image_id not in sizes:
            raise ValueError(f"{path}: annotation {ann.get('id')} refers to unknown image {image_id}")
        if category_id not in names:
            raise ValueError(f"{path}: annotation {ann.get('id')} has unknown category {category_id}")
        by_key[(image_id, names[category_id])].append(ann)
    for anns in by_key.values():
        anns.sort(key=lambda a: int(a["id"]))
    return Instances(sizes=sizes, categories=set(names.values()), annotations=dict(by_key))


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def _direct(word: str, categories: set[str]) -> tuple[str, ...]:
    if word in categories:
        return (word,)
    return tuple(c for c in SYNONYMS.get(word, ()) if c in categories)


def _with_plural(word: str, categories: set[str]) -> tuple[tuple[str, ...], str]:
    found = _direct(word, categories)
    if found:
        return found, "exact" if found == (word,) else "synonym"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        found = _direct(word[:-1], categories)
        if found:
            return found, "plural"
    return (), ""


def category_candidates(lemma: str, categories: set[str]) -> tuple[tuple[str, ...], str]:
    """Candidate categories of a noun lemma, in preference order, and the rule that found them.

    Rules (see the module docstring): ``"exact"``, ``"synonym"``, ``"plural"``, ``"head"``;
    ``((), "")`` when none applies.
    """
    word = _normalise(lemma)
    if not word:
        return (), ""
    found, rule = _with_plural(word, categories)
    if found:
        return found, rule
    words = word.split(" ")
    if len(words) > 1:
        found, _ = _with_plural(words[-1], categories)
        if found:
            return found, "head"
    return (), ""


def _check_sizes(captions: pa.Table, instances: Instances, image_ids: set[int]) -> None:
    missing = sorted(i for i in image_ids if i not in instances.sizes)
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the nouns table are not in the instances file, e.g. {missing[:5]}; "
            "is it the annotation file of the captions' split?"
        )
    for row in captions.select(["image_id", "height", "width"]).to_pylist():
        iid = row["image_id"]
        if iid in image_ids and instances.sizes[iid] != (row["height"], row["width"]):
            raise ValueError(
                f"image {iid}: captions table says {row['height']} x {row['width']}, "
                f"instances file says {instances.sizes[iid][0]} x {instances.sizes[iid][1]}"
            )


def build_reference_masks(captions: pa.Table, nouns: pa.Table, instances: Instances) -> tuple[pa.Table, dict]:
    """Nouns + instances -> ``(masks table with MASKS_SCHEMA, summary)``; rows sorted by noun_id."""
    for name, table, cols in (
        ("captions", captions, ("caption_id", "image_id", "height", "width")),
        ("nouns", nouns, ("noun_id", "caption_id", "image_id", "text", "lemma")),
    ):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise ValueError(f"{name} table lacks column(s) {missing}")
    caption_image = dict(zip(captions.column("caption_id").to_pylist(), captions.column("image_id").to_pylist()))
    rows_in = sorted(nouns.select(["noun_id", "caption_id", "image_id", "text", "lemma"]).to_pylist(),
                     key=lambda r: r["noun_id"])
    if len({r["noun_id"] for r in rows_in}) != len(rows_in):
        raise ValueError("nouns table: noun_id is not unique")
    for r in rows_in:
        if caption_image.get(r["caption_id"]) != r["image_id"]:
            raise ValueError(f"noun {r['noun_id']}: caption {r['caption_id']} / image {r['image_id']} "
                             "is not a row of the captions table")
    _check_sizes(captions, instances, {r["image_id"] for r in rows_in})

    cache: dict[tuple[int, str], tuple[bytes, int, int]] = {}
    out: list[dict] = []
    status: Counter = Counter()
    rules: Counter = Counter()
    per_category: Counter = Counter()
    unmatched_lemmas: Counter = Counter()
    for r in rows_in:
        candidates, rule = category_candidates(r["lemma"], instances.categories)
        if not candidates:
            status["unmatched"] += 1
            unmatched_lemmas[_normalise(r["lemma"])] += 1
            continue
        category = next((c for c in candidates if instances.present(r["image_id"], c)), None)
        if category is None:
            status["no_instance_in_image"] += 1
            continue
        key = (r["image_id"], category)
        if key not in cache:
            mask, n = instances.union_mask(*key)
            cache[key] = (encode_rle(mask), int(mask.sum()), n)
        rle, area, n = cache[key]
        height, width = instances.sizes[r["image_id"]]
        out.append({
            "noun_id": r["noun_id"], "caption_id": r["caption_id"], "image_id": r["image_id"],
            "text": r["text"], "height": height, "width": width, "rle": rle, "area": area, "n_boxes": n,
        })
        status["matched"] += 1
        rules[rule] += 1
        per_category[category] += 1

    table = pa.Table.from_pylist(out, schema=MASKS_SCHEMA)
    summary = {
        "input_nouns": len(rows_in),
        "matched": status["matched"],
        "unmatched": status["unmatched"],
        "no_instance_in_image": status["no_instance_in_image"],
        "masks": table.num_rows,
        "images": len({r["image_id"] for r in rows_in}),
        "images_with_masks": len({r["image_id"] for r in out}),
        "empty_masks": sum(1 for r in out if r["area"] == 0),
        "matched_by_rule": dict(sorted(rules.items())),
        "matched_by_category": dict(sorted(per_category.items())),
        "top_unmatched_lemmas": [[w, n] for w, n in unmatched_lemmas.most_common(20)],
    }
    if summary["input_nouns"] != summary["matched"] + summary["unmatched"] + summary["no_instance_in_image"]:
        raise RuntimeError(f"{STAGE}: counts do not add up: {summary}")
    return table, summary


def run_reference_masks(cfg: ReferenceMasksConfig, captions_path: str | Path, nouns_path: str | Path) -> dict:
    """Read the tables and the instances file, write ``out_dir``/masks/part-00000.parquet and
    ``out_dir``/summary.json; return the summary."""
    captions = read_table(captions_path, columns=["caption_id", "image_id", "height", "width"])
    nouns = read_table(nouns_path, columns=["noun_id", "caption_id", "image_id", "text", "lemma"])
    instances = load_instances(cfg.instances_json)
    table, summary = build_reference_masks(captions, nouns, instances)
    masks_dir = Path(cfg.out_dir) / "masks"
    for stale in masks_dir.glob("part-*.parquet"):
        if stale.name != SHARD_NAME:
            stale.unlink()
    write_table(table, masks_dir / SHARD_NAME)
    write_json(summary, Path(cfg.out_dir) / "summary.json")
    log.info(
        "%s: %d nouns -> %d matched, %d unmatched, %d without an instance in their image -> %s",
        STAGE, summary["input_nouns"], summary["matched"], summary["unmatched"],
        summary["no_instance_in_image"], masks_dir,
    )
    return summary
