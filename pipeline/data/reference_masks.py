"""The ``reference_masks`` stage: COCO instance annotations -> a masks table for the nouns.

An alternative to ``ground`` + ``segment``: the masks are the human instance annotations
(exact on the demo dataset, COCO's polygons and crowd RLEs on COCO), so training can be run
and compared with reference masks instead of Grounding DINO + SAM ones.

Matching rule, for each noun occurrence of the nouns table, on its ``lemma`` (lower-cased,
whitespace collapsed; the nouns stage already singularises plurals, "teddy bears" ->
"teddy bear"). ``CATEGORY_WORDS`` lists, per COCO category, the words captions name it with
("person" <- man, kid, batter, umpire, chef, ...; "tv" <- television, monitor, screen;
"laptop" <- lap top, notebook computer; ...); ``SYNONYMS`` is its inverse. The first step that
names a category of the instances file gives the noun's candidate categories:

1. the whole lemma is a category name ("teddy bear", "cell phone", "skis");
2. the whole lemma is a key of ``SYNONYMS`` ("man" -> person, "microwave oven" -> microwave,
   "bike" -> bicycle or motorcycle);
3. the lemma ends in "s"/"es" and without it steps 1-2 match (plurals the tagger missed, "kites");
4. head rule: the longest run of last words that matches by steps 1-3 ("tennis player" ->
   person, "pepperoni pizza" -> pizza, "traffic stop sign" -> stop sign), except compounds in
   ``NOT_CATEGORY`` ("mp3 player", "truck bed", "bus stop") and compounds whose modifier names
   another object ("dog bed", "toilet bowl", "laptop screen": a part or accessory of it), unless
   the head is a person ("motorcycle rider") or a food ("carrot cake").

The noun is **matched** to the first candidate category with at least one annotation in
the noun's image; its mask is the union of all of that category's instance masks in the
image (crowd annotations included; ``n_boxes`` holds the number of instances united).
A noun with candidates but none annotated in its image counts as
**no_instance_in_image**; a noun without candidates counts as **unmatched**.
Neither is an error: ``input_nouns = matched + unmatched + no_instance_in_image``.
The summary also reports ``share_of_nouns_with_mask`` (matched / input_nouns) and, over the
annotated (image, category) pairs that some noun of the image names (a candidate category),
the share that get their mask (``share_of_named_pairs_with_mask``).

``SYNONYMS`` holds only words that name one COCO category in COCO captions (or, for "bike",
two, tried in order); words such as "bag", "glass" or "light" are left out.

Outputs: ``out_dir/masks/part-00000.parquet`` (``pipeline.core.schemas.MASKS_SCHEMA``, one row per
matched noun, so readers treat it like ``segment``'s shard folder), ``out_dir/instances.parquet``
(``REFERENCE_INSTANCES_SCHEMA``: each matched noun's category and its instances' boxes, which
``segment`` and ``ground`` read to measure their masks and boxes), ``out_dir/summary.json``
(the headline counts and shares: one screen in ``dvc metrics show``), and the breakdowns as
CSV (``dvc plots show``): ``matched_by_category.csv`` (category, matched) and
``unmatched_lemmas.csv`` (lemma, nouns; every unmatched lemma, most frequent first).
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
from pipeline.core.guards import StageInputError
from pipeline.core.masks import coco_segmentation_to_mask, encode_rle
from pipeline.core.schemas import MASKS_SCHEMA, REFERENCE_INSTANCES_SCHEMA
from pipeline.core.tables import read_table, write_csv, write_json, write_table

log = logging.getLogger(__name__)

STAGE = "reference_masks"
SHARD_NAME = "part-00000.parquet"

# Words that name a COCO category in COCO captions (singular; the nouns stage gives lemmas),
# the kind of list used to find COCO objects in captions. Multi-word entries are matched whole
# before any head word. Words naming several things ("bag", "glass", "light", "board") are left out.
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "person": (
        "person", "people", "persons", "man", "men", "woman", "women", "boy", "girl", "child",
        "children", "kid", "guy", "lady", "gentleman", "baby", "infant", "toddler", "teenager",
        "teen", "adult", "youngster", "player", "batter", "pitcher", "catcher", "umpire", "referee",
        "skier", "surfer", "skateboarder", "snowboarder", "snow boarder", "boarder", "rider",
        "biker", "cyclist", "bicyclist", "motorcyclist", "pedestrian", "bride", "groom", "baker",
        "chef", "cook", "waiter", "waitress", "worker", "officer", "policeman", "cop", "soldier",
        "athlete", "spectator", "fan", "tourist", "passenger", "driver", "student", "teacher",
        "doctor", "nurse", "customer", "vendor", "farmer", "fisherman", "jockey", "cowboy",
        "mother", "father", "mom", "dad", "parent", "son", "daughter", "brother", "sister",
        "husband", "wife", "grandmother", "grandfather", "friend", "businessman", "someone",
        "swimmer", "runner", "hiker", "coach", "goalie",
    ),
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "taxi", "cab", "sedan", "suv", "jeep", "automobile", "minivan", "van", "police car"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "bike", "scooter", "moped", "dirt bike"),
    "airplane": ("airplane", "plane", "aeroplane", "jet", "airliner", "jetliner", "aircraft", "passenger jet"),
    "bus": ("bus", "double decker", "school bus"),
    "train": ("train", "locomotive", "tram", "streetcar", "subway", "trolley"),
    "truck": ("truck", "pickup", "pickup truck", "lorry", "dump truck", "fire truck", "firetruck", "tow truck"),
    "boat": ("boat", "ship", "sailboat", "yacht", "kayak", "canoe", "ferry", "vessel", "raft", "tugboat"),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench", "park bench"),
    "bird": (
        "bird", "seagull", "gull", "pigeon", "vulture", "duck", "goose", "swan", "parrot", "crow",
        "sparrow", "eagle", "hawk", "owl", "pelican", "chicken", "hen", "rooster", "penguin",
        "flamingo", "heron", "finch", "robin", "dove", "ostrich", "duckling",
    ),
    "cat": ("cat", "kitten", "kitty", "feline"),
    "dog": (
        "dog", "puppy", "pup", "poodle", "terrier", "retriever", "bulldog", "beagle", "dachshund",
        "chihuahua", "husky", "collie", "pug", "doggy", "canine", "hound", "labrador",
    ),
    "horse": ("horse", "pony", "foal", "stallion", "mare"),
    "sheep": ("sheep", "lamb", "ram", "ewe"),
    "cow": ("cow", "cattle", "calf", "bull", "ox", "oxen", "steer", "heifer"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly", "cub"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "back pack", "knapsack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse"),
    "tie": ("tie", "necktie", "neck tie", "bow tie", "bowtie"),
    "suitcase": ("suitcase", "suit case", "luggage", "baggage"),
    "frisbee": ("frisbee", "frisbe", "flying disc"),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard", "snow board"),
    "sports ball": ("ball", "soccer ball", "tennis ball", "baseball", "football", "basketball", "volleyball", "softball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "mitt", "baseball mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "tennis racquet", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "wineglass"),
    "cup": ("cup", "mug", "teacup"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "sub", "panini"),
    "orange": ("orange", "tangerine", "clementine"),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake"),
    "chair": ("chair", "stool", "armchair", "recliner", "highchair", "high chair", "wheelchair", "wheel chair"),
    "couch": ("couch", "sofa", "loveseat", "love seat", "futon"),
    "potted plant": ("potted plant", "plant", "houseplant", "house plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table"),
    "toilet": ("toilet",),
    "tv": ("tv", "television", "monitor", "computer monitor", "screen", "tv screen", "flat screen", "flatscreen"),
    "laptop": ("laptop", "lap top", "notebook computer", "laptop computer"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "remote control", "controller", "game controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "smartphone", "smart phone", "mobile phone", "iphone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove"),
    "toaster": ("toaster", "toaster oven"),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book",),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor"),
    "teddy bear": ("teddy bear", "teddy", "stuffed bear", "stuffed animal", "teddybear"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("toothbrush", "tooth brush", "electric toothbrush"),
}

# Compounds whose last word names a category but the compound names something else.
NOT_CATEGORY: frozenset[str] = frozenset((
    "mp3 player", "cd player", "dvd player", "record player", "music player", "media player",
    "video player", "tape player", "truck bed", "flower bed", "river bed", "sofa bed",
    "hot dog bun", "bus stop", "clock tower",
))

# Heads a modifying category word does not turn into a part of that object (food: "carrot cake").
_FOOD = frozenset(("banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"))


def _synonyms() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for category, words in CATEGORY_WORDS.items():
        for w in words:
            if w != category:
                out.setdefault(w, []).append(category)
    return {w: tuple(cs) for w, cs in out.items()}


SYNONYMS: dict[str, tuple[str, ...]] = _synonyms()

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


def read_instances_json(path: str | Path) -> dict[str, Any]:
    """A COCO instances json; a file of another kind (captions, jsonl) is a StageInputError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"instances file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageInputError(f"{path}: not a JSON file ({e}); dataset.instances must be a COCO "
                              "instances json such as instances_train2017.json") from None
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: not a COCO instances file (top level is not an object)")
    anns = data.get("annotations")
    if isinstance(anns, list) and any(isinstance(a, dict) and "caption" in a for a in anns[:100]):
        raise StageInputError(f"{path} is a COCO captions file (its annotations have captions): "
                              "dataset.instances must be a COCO instances json such as instances_train2017.json")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise StageInputError(f"{path}: not a COCO instances file (no list {key!r})")
    return data


def _image_sizes(data: dict[str, Any]) -> dict[int, tuple[int, int]]:
    return {int(im["id"]): (int(im["height"]), int(im["width"])) for im in data["images"]}


def check_instances_match(captions: pa.Table, path: str | Path) -> dict[int, tuple[int, int]]:
    """Check that every image of the captions table is in the instances file with the same size.

    Run by the captions stage when an instances file is configured, so a wrong one stops the
    DAG before ``ground`` and ``segment``. Raises StageInputError with counts and examples;
    returns the file's sizes (image_id -> (height, width)).
    """
    sizes = _image_sizes(read_instances_json(path))
    rows = captions.select(["image_id", "height", "width"]).to_pylist()
    images = {r["image_id"]: (r["height"], r["width"]) for r in rows}
    missing = sorted(i for i in images if i not in sizes)
    wrong = sorted(i for i in images if i in sizes and sizes[i] != images[i])
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(images)} images are not in it (e.g. ids {missing[:5]})")
        if wrong:
            i = wrong[0]
            parts.append(f"{len(wrong)} have another size (e.g. image {i}: {images[i][0]} x {images[i][1]} "
                         f"decoded, {sizes[i][0]} x {sizes[i][1]} in the file)")
        raise StageInputError(f"instances file {path} does not match the captions: " + "; ".join(parts)
                              + ". Is dataset.instances the instances json of dataset.captions' split?")
    return sizes


def load_instances(path: str | Path) -> Instances:
    """Read and index a COCO instances json; malformed files raise ValueError."""
    path = Path(path)
    data = read_instances_json(path)
    names: dict[int, str] = {}
    for c in data["categories"]:
        name = _normalise(str(c["name"]))
        if name in names.values():
            raise ValueError(f"{path}: category name {name!r} appears twice")
        names[int(c["id"])] = name
    sizes = _image_sizes(data)
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
        for stem in (word[:-1], word[:-2] if word.endswith("es") else None):
            found = _direct(stem, categories) if stem else ()
            if found:
                return found, "plural"
    return (), ""


def _names_other_object(modifiers: list[str], categories: set[str]) -> bool:
    """Does a modifier name a (non-person) category, so the compound names a part of it ("truck bed")?"""
    for k in range(len(modifiers)):
        for j in range(k + 1, len(modifiers) + 1):
            found, _ = _with_plural(" ".join(modifiers[k:j]), categories)
            if found and "person" not in found:
                return True
    return False


def category_candidates(lemma: str, categories: set[str]) -> tuple[tuple[str, ...], str]:
    """Candidate categories of a noun lemma, in preference order, and the rule that found them.

    Rules (see the module docstring): ``"exact"``, ``"synonym"``, ``"plural"`` for the whole
    lemma; ``"head"`` for its longest matching last words (a compound is tried whole first);
    ``((), "")`` when none applies.
    """
    word = _normalise(lemma)
    if not word or word in NOT_CATEGORY:
        return (), ""
    found, rule = _with_plural(word, categories)
    if found:
        return found, rule
    words = word.split(" ")
    for k in range(1, len(words)):
        tail = " ".join(words[k:])
        if tail in NOT_CATEGORY:
            return (), ""
        found, _ = _with_plural(tail, categories)
        if found:
            person = "person" in found
            food = all(c in _FOOD for c in found)
            if not person and not food and _names_other_object(words[:k], categories):
                return (), ""
            return found, "head"
    return (), ""


def _check_sizes(captions: pa.Table, instances: Instances, image_ids: set[int]) -> None:
    missing = sorted(i for i in image_ids if i not in instances.sizes)
    if missing:
        raise StageInputError(
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
    named: set[tuple[int, str]] = set()
    masked: set[tuple[int, str]] = set()
    for r in rows_in:
        candidates, rule = category_candidates(r["lemma"], instances.categories)
        named.update((r["image_id"], c) for c in candidates if instances.present(r["image_id"], c))
        if not candidates:
            status["unmatched"] += 1
            unmatched_lemmas[_normalise(r["lemma"])] += 1
            continue
        category = next((c for c in candidates if instances.present(r["image_id"], c)), None)
        if category is None:
            status["no_instance_in_image"] += 1
            continue
        key = (r["image_id"], category)
        masked.add(key)
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
        "unmatched_lemmas": dict(unmatched_lemmas.most_common()),
        "share_of_nouns_with_mask": round(status["matched"] / len(rows_in), 4) if rows_in else 0.0,
        "annotated_pairs_named": len(named),
        "annotated_pairs_named_with_mask": len(named & masked),
        "share_of_named_pairs_with_mask": round(len(named & masked) / len(named), 4) if named else 0.0,
    }
    if summary["input_nouns"] != summary["matched"] + summary["unmatched"] + summary["no_instance_in_image"]:
        raise RuntimeError(f"{STAGE}: counts do not add up: {summary}")
    return table, summary


def _mask_bbox(ann: dict, instances: Instances) -> tuple[float, float, float, float]:
    """COCO xywh box of an annotation without ``bbox``, from its segmentation."""
    mask = coco_segmentation_to_mask(ann["segmentation"], *instances.sizes[int(ann["image_id"])])
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())


def reference_instances(masks: pa.Table, nouns: pa.Table, instances: Instances) -> pa.Table:
    """The matched nouns' categories and instance boxes (``REFERENCE_INSTANCES_SCHEMA``)."""
    lemmas = dict(zip(nouns.column("noun_id").to_pylist(), nouns.column("lemma").to_pylist()))
    rows = []
    for r in masks.select(["noun_id", "image_id"]).to_pylist():
        candidates, _ = category_candidates(lemmas[r["noun_id"]], instances.categories)
        category = next(c for c in candidates if instances.present(r["image_id"], c))
        for ann in instances.annotations[(r["image_id"], category)]:
            x, y, w, h = (float(v) for v in ann["bbox"]) if "bbox" in ann else _mask_bbox(ann, instances)
            rows.append({"noun_id": r["noun_id"], "image_id": r["image_id"], "category": category,
                         "annotation_id": int(ann["id"]), "iscrowd": bool(ann.get("iscrowd", 0)),
                         "x0": x, "y0": y, "x1": x + w, "y1": y + h})
    return pa.Table.from_pylist(rows, schema=REFERENCE_INSTANCES_SCHEMA)


#: summary entries that are breakdowns (one value per category or lemma): CSV files, not summary.json
BREAKDOWNS = ("matched_by_category", "top_unmatched_lemmas", "unmatched_lemmas")


def write_breakdowns(summary: dict, out_dir: Path) -> None:
    """``matched_by_category.csv`` (category, matched) and ``unmatched_lemmas.csv`` (lemma, nouns)."""
    write_csv([{"category": c, "matched": n} for c, n in summary["matched_by_category"].items()],
              ["category", "matched"], out_dir / "matched_by_category.csv")
    write_csv([{"lemma": w, "nouns": n} for w, n in summary["unmatched_lemmas"].items()],
              ["lemma", "nouns"], out_dir / "unmatched_lemmas.csv")


def run_reference_masks(cfg: ReferenceMasksConfig, captions_path: str | Path, nouns_path: str | Path) -> dict:
    """Read the tables and the instances file, write ``out_dir``/masks/part-00000.parquet,
    ``out_dir``/summary.json (without the ``BREAKDOWNS``) and the breakdown CSVs; return the
    whole summary."""
    captions = read_table(captions_path, columns=["caption_id", "image_id", "height", "width"])
    nouns = read_table(nouns_path, columns=["noun_id", "caption_id", "image_id", "text", "lemma"])
    instances = load_instances(cfg.instances_json)
    table, summary = build_reference_masks(captions, nouns, instances)
    if summary["input_nouns"] and not summary["matched"]:
        top = ", ".join(f"{w} ({n})" for w, n in summary["top_unmatched_lemmas"][:5])
        raise StageInputError(
            f"{STAGE}: no mask for any of {summary['input_nouns']} nouns ({summary['unmatched']} name no "
            f"category of {cfg.instances_json}, {summary['no_instance_in_image']} have no instance in their "
            f"image; most common unmatched: {top}). Is dataset.instances the instances json of the captions?")
    masks_dir = Path(cfg.out_dir) / "masks"
    for stale in masks_dir.glob("part-*.parquet"):
        if stale.name != SHARD_NAME:
            stale.unlink()
    write_table(table, masks_dir / SHARD_NAME)
    write_table(reference_instances(table, nouns, instances), Path(cfg.out_dir) / "instances.parquet")
    write_breakdowns(summary, Path(cfg.out_dir))
    write_json({k: v for k, v in summary.items() if k not in BREAKDOWNS}, Path(cfg.out_dir) / "summary.json")
    log.info(
        "%s: %d nouns -> %d matched, %d unmatched, %d without an instance in their image -> %s",
        STAGE, summary["input_nouns"], summary["matched"], summary["unmatched"],
        summary["no_instance_in_image"], masks_dir,
    )
    return summary
