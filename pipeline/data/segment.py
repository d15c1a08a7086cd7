"""The ``segment`` stage: boxes + images -> per-noun binary masks (SAM or SAM-HQ).

Per image, SAM's image encoder runs once and all distinct boxes of the image are decoded
in one batched call (one mask per box). A noun's mask is the union of its boxes' masks.
Nouns without a box get no mask (the boxes table records them); images that cannot be
read are rejected with all their nouns.

Masks table (``data/segment/masks/part-*.parquet``, schema ``pipeline.core.schemas.MASKS_SCHEMA``),
one row per noun occurrence with at least one box, the mask as compressed COCO RLE.
With ``export_png``, every mask is also written as ``png/<image_id>/<noun_id>_<text>.png``
and every image gets an overlay ``overlays/<image_id>.png`` (caption, nouns, boxes, masks).
In the paper data mode (captions from TokenCompose's list) the summary's ``official_list`` puts
the nouns with a mask beside the official list's 13,634.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.code import code_digest
from pipeline.core.config import fingerprint
from pipeline.core.devices import resolve_device
from pipeline.core.images import load_rgb
from pipeline.core.masks import decode_rle, encode_rle, mask_to_png_bytes
from pipeline.core.official_list import official_summary
from pipeline.core.schemas import MASKS_SCHEMA
from pipeline.core.shards import World, inputs_digest, run_sharded
from pipeline.core.tables import (
    read_table,
    rejects_table,
    write_bytes,
    write_json,
    write_table,
)
from pipeline.data.sam_masks import make_predictor, segment_image, union_masks
from pipeline.models.sam import CONFIG_NAME, MODEL_TYPES, TINY_TYPES, ModelType, load_sam

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentConfig:
    """``segment`` section of params.yaml."""

    model_type: ModelType           # vit_h | vit_l | vit_b | hq_vit_h | hq_vit_l | hq_vit_b | tiny | hq_tiny
    checkpoint: str                 # a raw SAM / SAM-HQ state dict (.pth); tiny types: config.json beside it
    shard_size: int                 # images per output shard
    device: str                     # auto | cpu | cuda | cuda:N
    export_png: bool                # also write every mask as a PNG for inspection
    out_dir: str
    reference: str = ""             # reference_masks out_dir: IoU with the human masks; "" = off

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"segment.model_type {self.model_type!r} not in {list(MODEL_TYPES)}")
        if self.shard_size <= 0:
            raise ValueError(f"segment.shard_size must be positive, got {self.shard_size}")
        if not self.checkpoint:
            raise ValueError("segment.checkpoint is empty")


def _segment_fields(cfg: SegmentConfig) -> dict:
    return {"model_type": cfg.model_type, "checkpoint": cfg.checkpoint, "shard_size": cfg.shard_size}


def segment_fingerprint(cfg: SegmentConfig, captions_path: str | Path, boxes_path: str | Path,
                        images: list[str]) -> str:
    """What the shards are keyed by: the params, the code, and the bytes of every input (tables,
    images, the checkpoint and, for the tiny model, its config.json)."""
    weights = [cfg.checkpoint] + ([Path(cfg.checkpoint).parent / CONFIG_NAME] if cfg.model_type in TINY_TYPES else [])
    inputs = inputs_digest(captions_path, boxes_path, *images, *weights)
    return fingerprint(_segment_fields(cfg), inputs, code_digest(__name__))


def run_segment(cfg: SegmentConfig, captions_path: str | Path, boxes_path: str | Path) -> dict | None:
    """Run the stage; returns the summary on the main process."""
    captions_table = read_table(captions_path, columns=["image_id", "path", "official_nouns"])
    image_paths = {r["image_id"]: r["path"] for r in captions_table.select(["image_id", "path"]).to_pylist()}
    boxes = read_table(boxes_path).to_pylist()
    by_image: dict[int, list[dict]] = defaultdict(list)
    for b in boxes:
        if b["found"]:
            by_image[b["image_id"]].append(b)
    items = sorted(by_image)

    world = World.from_accelerate(resolve_device(cfg.device))
    device = world.device
    predictor = make_predictor(load_sam(cfg.model_type, cfg.checkpoint, device), cfg.model_type)

    def shard(image_ids: list[int]) -> tuple[pa.Table, pa.Table]:
        rows: list[dict] = []
        rejects: list[tuple[str, str, str]] = []
        for image_id in image_ids:
            image_boxes = by_image[image_id]
            try:
                image = np.asarray(load_rgb(image_paths[image_id]))
            except Exception as e:  # noqa: BLE001 - any unreadable file is a recorded reject
                for noun_id in sorted({b["noun_id"] for b in image_boxes}):
                    rejects.append((str(noun_id), "unreadable_image", f"{image_paths[image_id]}: {e}"))
                continue
            rows.extend(_masks_for_image(predictor, image, image_boxes))
        return pa.Table.from_pylist(rows, schema=MASKS_SCHEMA), rejects_table("segment", rejects)

    # once, on the main process: every input's bytes (cached by stat signature, pipeline.core.digests)
    fp = world.on_main(lambda: segment_fingerprint(cfg, captions_path, boxes_path, [image_paths[i] for i in items]))
    out = Path(cfg.out_dir)
    result = run_sharded("segment", items, cfg.shard_size, shard, out / "masks", fp, MASKS_SCHEMA, world)
    if result is None:
        return None
    write_table(result.rejects, out / "rejects.parquet")
    masks = read_table(out / "masks")
    (out / "png").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    if cfg.export_png:
        export_pngs(masks, out / "png")
        from pipeline.data.overlays import render_all_overlays

        render_all_overlays(captions_path, boxes_path, out / "masks", out / "overlays")
    summary = _summary(boxes, masks, result.rejects.num_rows, len(items))
    summary.update(official_summary(captions_table, masked_nouns=masks.num_rows))
    if cfg.reference:
        summary["mask_quality"] = report_mask_quality(masks, cfg.reference, image_paths, out,
                                                      random_model=cfg.model_type in TINY_TYPES)
    write_json(summary, out / "summary.json")
    return summary


WORST_CASES = 8


def report_mask_quality(masks: pa.Table, reference: str | Path, image_paths: dict[int, str], out: Path,
                        random_model: bool) -> dict:
    """IoU of the automatic masks with the reference masks (``pipeline.data.mask_quality``):
    writes ``mask_iou_by_category.csv`` and ``mask_iou_worst.png`` into ``out``, returns the summary."""
    from pipeline.core.tables import write_csv
    from pipeline.data.mask_quality import compare_masks, worst_cases_figure

    reference = Path(reference)
    ref = read_table(reference / "masks").to_pylist()
    cats = read_table(reference / "instances.parquet", columns=["noun_id", "category"]).to_pylist()
    categories = {r["noun_id"]: r["category"] for r in cats}
    auto_rows = {r["noun_id"]: r for r in masks.to_pylist()}
    auto = {nid: decode_rle(r["rle"], r["height"], r["width"]) for nid, r in auto_rows.items()
            if nid in {x["noun_id"] for x in ref}}
    human = {r["noun_id"]: decode_rle(r["rle"], r["height"], r["width"]) for r in ref}
    per_noun, summary, per_category = compare_masks(auto, human, categories)
    write_csv(per_category, ["category", "nouns", "mean_iou", "share_iou_ge_0_5"], out / "mask_iou_by_category.csv")
    cases = []
    for r in sorted(per_noun, key=lambda r: (r["iou"], r["noun_id"]))[:WORST_CASES]:
        row = auto_rows[r["noun_id"]]
        cases.append({"image": np.asarray(load_rgb(image_paths[row["image_id"]])), "auto": auto[r["noun_id"]],
                      "reference": human[r["noun_id"]],
                      "label": f"noun {r['noun_id']} '{row['text']}' ({r['category']}): IoU {r['iou']:.3f}"})
    worst_cases_figure(cases, out / "mask_iou_worst.png")
    summary["quality_measure"] = not random_model
    if random_model:
        summary["note"] = "tiny random SAM: these IoUs test the plumbing, they measure no mask quality"
    return summary


def _masks_for_image(predictor, image: np.ndarray, image_boxes: list[dict]) -> list[dict]:
    """All boxes of one image -> one mask row per noun (union over the noun's boxes)."""
    keys = sorted({(b["x0"], b["y0"], b["x1"], b["y1"]) for b in image_boxes})
    index = {k: i for i, k in enumerate(keys)}
    box_masks = segment_image(predictor, image, np.asarray(keys, dtype=np.float32).reshape(-1, 4))
    per_noun: dict[int, list[dict]] = defaultdict(list)
    for b in image_boxes:
        per_noun[b["noun_id"]].append(b)
    noun_ids = sorted(per_noun)
    groups = [[index[(b["x0"], b["y0"], b["x1"], b["y1"])] for b in per_noun[nid]] for nid in noun_ids]
    height, width = image.shape[:2]
    rows = []
    for nid, group, mask in zip(noun_ids, groups, union_masks(box_masks, groups)):
        first = per_noun[nid][0]
        rows.append(
            {
                "noun_id": nid,
                "caption_id": first["caption_id"],
                "image_id": first["image_id"],
                "text": first["text"],
                "height": height,
                "width": width,
                "rle": encode_rle(mask),
                "area": int(mask.sum()),
                "n_boxes": len(group),
            }
        )
    return rows


def png_name(noun_id: int, text: str) -> str:
    """``<noun_id>_<text with non-word characters as _>.png``."""
    return f"{noun_id}_{re.sub(r'[^0-9A-Za-z]+', '_', text).strip('_')}.png"


def export_pngs(masks: pa.Table, out_dir: Path) -> int:
    """Write every mask as ``out_dir/<image_id>/<noun_id>_<text>.png``; returns the count."""
    n = 0
    for r in masks.to_pylist():
        mask = decode_rle(r["rle"], r["height"], r["width"])
        write_bytes(mask_to_png_bytes(mask), out_dir / str(r["image_id"]) / png_name(r["noun_id"], r["text"]))
        n += 1
    return n


def _summary(boxes: list[dict], masks: pa.Table, rejected: int, images: int) -> dict:
    with_box = {b["noun_id"] for b in boxes if b["found"]}
    summary = {
        "images": images,
        "input_nouns": len({b["noun_id"] for b in boxes}),
        "nouns_with_box": len(with_box),
        "masks": masks.num_rows,
        "rejected_nouns": rejected,
        "empty_masks": int(sum(a == 0 for a in masks.column("area").to_pylist())),
    }
    if len(with_box) != masks.num_rows + rejected:
        raise RuntimeError(f"segment: counts do not add up: {summary}")
    return summary
