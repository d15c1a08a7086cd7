"""Automatic masks and boxes measured against human annotations (``segment`` and ``ground`` reports).

For every noun that also has a reference mask (same ``noun_id`` in the ``reference_masks``
stage's table: the noun matched a COCO category of its image through the synonym table):

- ``segment``: the IoU of its Grounding DINO + SAM mask with the human mask (the union of the
  category's instances in the image). A reference noun without an automatic mask (no box) is
  counted apart (``reference_nouns_without_mask``), not averaged in. Reported: the mean IoU,
  the share at IoU >= 0.5, and per category (``mask_iou_by_category.csv``, a DVC plot).
- ``ground``: box recall. Each non-crowd COCO instance box of a matched noun's category in its
  image counts as found when one of the noun's predicted boxes has IoU >= 0.5 with it.

On the demo's tiny random models these numbers are plumbing, not a quality measure; the
summaries say so (``quality_measure: false``). Boxes are xyxy pixels; masks (H, W) bool.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

IOU_GOOD = 0.5


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; two empty masks give 0.0 (nothing was found)."""
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: a (N, 4), b (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def boxes_found(predicted: np.ndarray, reference: np.ndarray, threshold: float = IOU_GOOD) -> np.ndarray:
    """(M,) bool: reference box m has a predicted box with IoU >= ``threshold``."""
    reference = np.asarray(reference, dtype=np.float64).reshape(-1, 4)
    if len(reference) == 0 or len(np.asarray(predicted).reshape(-1, 4)) == 0:
        return np.zeros(len(reference), dtype=bool)
    return (box_iou(predicted, reference) >= threshold).any(axis=0)


def box_recall(boxes: list[dict], instances: list[dict]) -> dict:
    """Ground's box recall. boxes: boxes-table rows; instances: reference instance rows
    (noun_id, x0, y0, x1, y1, iscrowd). Crowd instances are left out, as COCO's evaluation does."""
    predicted: dict[int, list] = defaultdict(list)
    for b in boxes:
        if b["found"]:
            predicted[b["noun_id"]].append((b["x0"], b["y0"], b["x1"], b["y1"]))
    reference: dict[int, list] = defaultdict(list)
    crowd = 0
    for r in instances:
        if r["iscrowd"]:
            crowd += 1
        else:
            reference[r["noun_id"]].append((r["x0"], r["y0"], r["x1"], r["y1"]))
    total = found = nouns_all = 0
    for noun_id, ref in reference.items():
        hit = boxes_found(np.asarray(predicted.get(noun_id, []), dtype=np.float64), np.asarray(ref))
        total += len(ref)
        found += int(hit.sum())
        nouns_all += int(hit.all())
    return {
        "reference_nouns": len(reference),
        "reference_instances": total,
        "reference_instances_found": found,
        "reference_crowd_instances_skipped": crowd,
        "box_recall_at_0_5": round(found / total, 4) if total else None,
        "reference_nouns_all_instances_found": nouns_all,
    }


def compare_masks(auto: dict[int, np.ndarray], reference: dict[int, np.ndarray],
                  categories: dict[int, str]) -> tuple[list[dict], dict, list[dict]]:
    """Per-noun IoU of automatic vs reference masks.

    auto, reference: noun_id -> (H, W) bool; categories: noun_id -> COCO category of the
    reference. Returns ``(per_noun, summary, per_category)``: per_noun rows (noun_id, category,
    iou) for the nouns with both masks; per_category rows sorted by category.
    """
    per_noun = []
    missing = 0
    for noun_id in sorted(reference):
        if noun_id not in auto:
            missing += 1
            continue
        per_noun.append({"noun_id": noun_id, "category": categories.get(noun_id, ""),
                         "iou": mask_iou(auto[noun_id], reference[noun_id])})
    ious = np.array([r["iou"] for r in per_noun])
    summary = {
        "reference_nouns": len(reference),
        "reference_nouns_compared": len(per_noun),
        "reference_nouns_without_mask": missing,
        "mean_iou": round(float(ious.mean()), 4) if len(ious) else None,
        "share_iou_ge_0_5": round(float((ious >= IOU_GOOD).mean()), 4) if len(ious) else None,
    }
    if summary["reference_nouns"] != summary["reference_nouns_compared"] + missing:
        raise RuntimeError(f"mask quality: counts do not add up: {summary}")
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in per_noun:
        by_cat[r["category"]].append(r["iou"])
    per_category = [{"category": c, "nouns": len(v), "mean_iou": round(float(np.mean(v)), 4),
                     "share_iou_ge_0_5": round(float(np.mean(np.asarray(v) >= IOU_GOOD)), 4)}
                    for c, v in sorted(by_cat.items())]
    return per_noun, summary, per_category


def worst_cases_figure(cases: list[dict], path: str | Path, tile: int = 160) -> Path:
    """Side by side per row: image, automatic mask, human mask (the worst IoUs first).

    cases: dicts with ``image`` (H, W, 3) uint8, ``auto`` and ``reference`` (H, W) bool,
    ``label`` (text above the row). Written atomically as PNG.
    """
    from PIL import Image, ImageDraw

    from pipeline.core.tables import write_bytes

    rows = max(len(cases), 1)
    sheet = Image.new("RGB", (3 * tile, rows * (tile + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    if not cases:
        draw.text((4, 2), "no noun with both an automatic and a reference mask", fill="black")
    for i, c in enumerate(cases):
        y = i * (tile + 14)
        draw.text((2, y), c["label"][:70], fill="black")
        image = Image.fromarray(c["image"])
        tiles = [image]
        for mask, colour in ((c["auto"], (230, 60, 40)), (c["reference"], (40, 160, 60))):
            over = np.asarray(image).copy()
            over[mask] = (0.45 * over[mask] + 0.55 * np.array(colour)).astype(np.uint8)
            tiles.append(Image.fromarray(over))
        for k, t in enumerate(tiles):
            t = t.copy()
            t.thumbnail((tile, tile))
            sheet.paste(t, (k * tile, y + 14))
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return write_bytes(buf.getvalue(), path)
