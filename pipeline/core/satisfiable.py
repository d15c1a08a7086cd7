"""Can a profile's counts be met by its data? Checked before any work is done.

A profile asks for counts (FID images, captions per FID image, MultiGen prompts, held-out
images, ``first_n`` captions, Object Accuracy prompts); each must fit what its input holds.
``check_params`` reads the sizes from the files when they are on disk, and otherwise from
``KNOWN_SIZES`` (the published sizes of COCO 2017, the MultiGen files and TokenCompose's
training list), so ``python -m stages.profiles use paper-sd14`` catches an impossible count on
a machine without the data, and each stage catches it again at its start, before hours of work.

It works on the raw params mapping (no stage configs), so it sits in ``core``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import DATASET_FIELDS, DATASET_SECTION, ConfigError, with_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSize:
    """What an input file holds: images (with a caption), captions, fewest captions per image, prompts."""

    images: int | None = None
    captions: int | None = None
    min_captions_per_image: int | None = None
    prompts: int | None = None
    source: str = "disk"


# Published sizes, by file name, used when the file is not on disk.
KNOWN_SIZES: dict[str, DataSize] = {
    # COCO 2017 (cocodataset.org): every image has at least 5 captions
    "captions_train2017.json": DataSize(images=118_287, captions=591_753, min_captions_per_image=5, source="known"),
    "captions_val2017.json": DataSize(images=5_000, captions=25_014, min_captions_per_image=5, source="known"),
    # TokenCompose's training list: 4,526 COCO train2017 images, one caption each
    "metadata.jsonl": DataSize(images=4_526, captions=4_526, min_captions_per_image=1, source="known"),
    # the official MultiGen prompt files
    "coco_obj_comp_5_1k.json": DataSize(prompts=1_000, source="known"),
    "ade20k_obj_comp_5_1k.json": DataSize(prompts=1_000, source="known"),
}


def _count_coco(data: dict) -> DataSize:
    per_image = Counter(a["image_id"] for a in data.get("annotations", []))
    return DataSize(images=len(per_image), captions=sum(per_image.values()),
                    min_captions_per_image=min(per_image.values(), default=0))


def data_size(path: str | Path | None) -> DataSize | None:
    """The size of ``path`` read from disk, else from ``KNOWN_SIZES`` by file name, else None.

    Reads COCO captions json (``annotations``), TokenCompose ``metadata.jsonl`` (one caption a
    line), MultiGen prompt files (a JSON list) and captions tables (Parquet, ``image_id``).
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            ids = pq.read_table(path, columns=["image_id"]).column("image_id").to_pylist()
            counts = Counter(ids)
            return DataSize(images=len(counts), captions=len(ids), min_captions_per_image=min(counts.values(), default=0))
        if path.suffix == ".jsonl":
            lines = sum(1 for line in path.open() if line.strip())
            return DataSize(images=lines, captions=lines, min_captions_per_image=1)
        data = json.loads(path.read_text())
        if isinstance(data, list):
            return DataSize(prompts=len(data))
        if isinstance(data, dict) and "annotations" in data:
            return _count_coco(data)
        return None
    return KNOWN_SIZES.get(path.name)


def _need(problems: list[str], what: str, asked: int | None, have: int | None, size: DataSize | None,
          path: Any) -> None:
    if asked is None or have is None:
        return
    if asked > have:
        src = "on disk" if size is not None and size.source == "disk" else "published size"
        problems.append(f"{what} = {asked} but {path} holds {have} ({src})")


def check_params(params: dict[str, Any], only: tuple[str, ...] | None = None) -> list[str]:
    """Every count of a full params mapping that its data cannot meet, as messages (empty: all fit).

    ``only``: the sections whose counts to check (a stage checks its own: ``("evaluate",)``);
    None: all of them (``profiles use``).
    """
    problems: list[str] = []
    if DATASET_SECTION in params:  # the input paths live in section ``dataset``
        params = {**params, **{name: with_dataset(params, name) for name in DATASET_FIELDS if name in params}}
    cap = params.get("captions", {})
    source = data_size(cap.get("source"))
    if source is not None and cap.get("select") == "first_n":
        _need(problems, "captions.first_n", cap.get("first_n"), source.captions, source, cap.get("source"))
    # images the captions stage can keep (an upper bound: first_n or ids may keep fewer)
    train_images = source.images if source is not None and cap.get("select") in ("all", "one_per_image") else None

    train = params.get("train", {})
    if train_images is not None and train.get("holdout_images"):
        _need(problems, "train.holdout_images (+ 1 training image)", train["holdout_images"] + 1, train_images,
              source, cap.get("source"))

    ev = params.get("evaluate", {})
    att = ev.get("attention", {})
    if att.get("enabled", True) and att.get("holdout_images"):
        att_path = att.get("captions")
        size = have = None
        if att_path == f"{cap.get('out_dir', 'data/captions')}/captions.parquet" and train_images is not None:
            # the captions stage's own table: what this profile's source gives, not a table another
            # profile may have left on disk
            size, have, att_path = source, train_images, cap.get("source")
        elif att_path and Path(att_path).is_file():
            size = data_size(att_path)
            have = size.images if size is not None else None
        _need(problems, "evaluate.attention.holdout_images", att["holdout_images"], have, size, att_path)

    for key in ("fid", "fid_flickr30k"):
        fid = ev.get(key) or {}
        if fid.get("enabled", True) and fid.get("captions"):
            size = data_size(fid["captions"])
            if size is not None:
                _need(problems, f"evaluate.{key}.num_images (real images)", fid.get("num_images"), size.images, size,
                      fid["captions"])
                _need(problems, f"evaluate.{key}.captions_per_image", fid.get("captions_per_image", 1),
                      size.min_captions_per_image, size, f"{fid['captions']} (fewest captions of an image)")

    mg = ev.get("multigen", {})
    # one prompt set, or a mapping name -> prompt set (every value a mapping)
    sets = mg if mg and all(isinstance(v, dict) for v in mg.values()) else {"": mg}
    for name, one in sets.items():
        if one.get("enabled", True) and one.get("prompts"):
            size = data_size(one["prompts"])
            if size is not None:
                key = f"evaluate.multigen.{name}.num_prompts" if name else "evaluate.multigen.num_prompts"
                _need(problems, key, one.get("num_prompts"), size.prompts, size, one["prompts"])

    oa = ev.get("object_accuracy", {})
    if oa.get("enabled", True) and oa.get("num_prompts") is not None:
        n = len(set(oa.get("categories") or []))
        pool = n * (n - 1) * len(oa.get("relations") or [])
        if oa["num_prompts"] > pool:
            problems.append(f"evaluate.object_accuracy.num_prompts = {oa['num_prompts']} but {n} categories x "
                            f"{len(oa.get('relations') or [])} relations give {pool} prompts")
    if only is not None:
        problems = [p for p in problems if p.split(".", 1)[0] in only]
    return problems


def require_satisfiable(params: dict[str, Any], where: str = "params", only: tuple[str, ...] | None = None) -> None:
    """Raise ConfigError listing every count of ``params`` (of sections ``only``) that its data cannot meet."""
    problems = check_params(params, only)
    if problems:
        raise ConfigError(f"{where}: counts the data cannot meet:\n  - " + "\n  - ".join(problems))
    log.debug("%s: every count fits its data", where)
