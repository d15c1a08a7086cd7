"""Benchmark: SAM encoder calls per image, mask storage size, mask decode rate.

    python bench/bench_masks.py [--images 10] [--repeats 3]

(a) segment_image with the tiny SAM on real coco-mini images, their instance boxes as
    prompts: image-encoder forwards per image (target: exactly 1) and the time per image,
    split into embedding and batched decoding, against decoding the boxes one by one.
(b) bytes per mask of the 739 real coco-mini instance masks: the Parquet masks table
    (zstd, compressed RLE) against one PNG file per mask (file bytes and disk blocks).
(c) masks decoded per second: from the Parquet RLE column against reading the PNG files.

The shared data folder is ``$TOKENCOMPOSE_SHARED`` (default ``<repo>/../shared``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.core.images import load_rgb
from pipeline.core.logs import setup_logging
from pipeline.core.masks import (
    coco_segmentation_to_mask,
    decode_rle,
    encode_rle,
    mask_from_png_bytes,
    mask_to_png_bytes,
)
from pipeline.core.schemas import MASKS_SCHEMA
from pipeline.core.tables import read_table, write_rows

from .common import COCO_MINI, row, to_markdown


def _instances() -> dict:
    path = COCO_MINI / "annotations" / "instances_train2017.json"
    if not path.exists():
        raise FileNotFoundError(f"coco-mini instances not found: {path} (set TOKENCOMPOSE_SHARED)")
    return json.loads(path.read_text())




def bench_encoder_calls(data: dict, n_images: int, repeats: int) -> list[dict]:
    """(a) tiny SAM on ``n_images`` coco-mini images with their instance boxes."""
    import torch
    from segment_anything import SamPredictor

    from pipeline.data.sam_masks import count_encoder_calls, segment_image
    from pipeline.models.sam import build_tiny_sam, load_sam

    boxes_by_image: dict[int, list[list[float]]] = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes_by_image.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
    images = [im for im in sorted(data["images"], key=lambda im: im["id"]) if len(boxes_by_image.get(im["id"], [])) >= 3]
    images = images[:n_images]
    pixels = [np.asarray(load_rgb(COCO_MINI / "train2017" / im["file_name"])) for im in images]
    prompts = [np.asarray(boxes_by_image[im["id"]], dtype=np.float32) for im in images]

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_tiny_sam(tmp, seed=0)
        n_params = sum(v.numel() for v in torch.load(checkpoint, weights_only=True).values())
        size_mb = checkpoint.stat().st_size / 1e6
        sam = load_sam("tiny", checkpoint, "cpu")
    predictor = SamPredictor(sam)
    segment_image(predictor, pixels[0], prompts[0])  # warm-up

    with count_encoder_calls(sam) as counter:
        for image, boxes in zip(pixels, prompts):
            segment_image(predictor, image, boxes)
    calls_per_image = counter.calls / len(pixels)

    best_total = best_embed = best_loop = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for image, boxes in zip(pixels, prompts):
            segment_image(predictor, image, boxes)
        best_total = min(best_total, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for image in pixels:
                predictor.set_image(image)
        best_embed = min(best_embed, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for image, boxes in zip(pixels, prompts):
                predictor.set_image(image)
                for box in boxes:
                    predictor.predict(box=box, multimask_output=False)
        best_loop = min(best_loop, time.perf_counter() - t0)
    predictor.reset_image()
    n = len(pixels)
    n_boxes = sum(len(b) for b in prompts)
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in pixels})
    note = f"{n} coco-mini images ({', '.join(sizes[:3])}...), {n_boxes / n:.1f} boxes/image"
    tiny = f"tiny SAM {n_params / 1e3:.0f}k params, {size_mb:.2f} MB, 256 px, CPU {torch.get_num_threads()} threads"
    return [
        row("sam", "image-encoder calls per image", calls_per_image, "calls", note),
        row("sam", "time per image, embed + batched decode", 1e3 * best_total / n, "ms", tiny),
        row("sam", "  of which embedding (set_image)", 1e3 * best_embed / n, "ms", ""),
        row("sam", "  of which batched decode", 1e3 * (best_total - best_embed) / n, "ms", ""),
        row("sam", "time per image, embed + per-box decode loop", 1e3 * best_loop / n, "ms", "predictor.predict per box"),
    ]


def bench_storage(data: dict, repeats: int) -> list[dict]:
    """(b) bytes per mask and (c) masks/s: Parquet RLE vs PNG files."""
    images = {im["id"]: im for im in data["images"]}
    categories = {c["id"]: c["name"] for c in data["categories"]}
    masks, rows = [], []
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        mask = coco_segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
        masks.append(mask)
        rows.append(
            {
                "noun_id": ann["id"],
                "caption_id": 0,
                "image_id": ann["image_id"],
                "text": categories[ann["category_id"]],
                "height": im["height"],
                "width": im["width"],
                "rle": encode_rle(mask),
                "area": int(mask.sum()),
                "n_boxes": 1,
            }
        )
    n = len(masks)
    mean_pixels = float(np.mean([m.size for m in masks]))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parquet = write_rows(rows, MASKS_SCHEMA, tmp / "masks" / "part-00000.parquet")
        png_dir = tmp / "png"
        png_paths = []
        for r, mask in zip(rows, masks):
            path = png_dir / str(r["image_id"]) / f"{r['noun_id']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(mask_to_png_bytes(mask))
            png_paths.append(path)
        parquet_bytes = parquet.stat().st_size
        rle_bytes = sum(len(r["rle"]) for r in rows)
        png_bytes = sum(p.stat().st_size for p in png_paths)
        png_blocks = sum(p.stat().st_blocks * 512 for p in png_paths)
        note = f"{n} real instance masks (8 crowd), mean {mean_pixels / 1e3:.0f}k pixels"
        out += [
            row("storage", "Parquet (zstd) masks table, whole file", parquet_bytes / n, "bytes/mask", note),
            row("storage", "  of which RLE counts, uncompressed", rle_bytes / n, "bytes/mask", ""),
            row("storage", "PNG files (1-bit), file sizes", png_bytes / n, "bytes/mask", f"{n} files"),
            row("storage", "PNG files (1-bit), disk blocks", png_blocks / n, "bytes/mask", "st_blocks * 512"),
            row("storage", "raw bool arrays, for scale", mean_pixels, "bytes/mask", ""),
        ]

        best_parquet = best_png = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            table = read_table(tmp / "masks", columns=["height", "width", "rle"])
            heights = table.column("height").to_pylist()
            widths = table.column("width").to_pylist()
            decoded = [decode_rle(c, h, w) for c, h, w in zip(table.column("rle").to_pylist(), heights, widths)]
            best_parquet = min(best_parquet, time.perf_counter() - t0)
            t0 = time.perf_counter()
            from_png = [mask_from_png_bytes(p.read_bytes()) for p in png_paths]
            best_png = min(best_png, time.perf_counter() - t0)
        for a, b, c in zip(masks, decoded, from_png):
            if not (np.array_equal(a, b) and np.array_equal(a, c)):
                raise AssertionError("a decoded mask differs from the original")
        out += [
            row("decode", "decode from Parquet RLE column", n / best_parquet, "masks/s", "read table + decode_rle"),
            row("decode", "decode from PNG files", n / best_png, "masks/s", "read file + PIL decode"),
        ]
    return out


def run(n_images: int = 10, repeats: int = 3) -> list[dict]:
    """All rows: dicts with group, metric, value, unit, note."""
    data = _instances()
    return bench_encoder_calls(data, n_images, repeats) + bench_storage(data, repeats)




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10, help="images for the encoder-call benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    print(to_markdown(run(args.images, args.repeats)))


if __name__ == "__main__":
    main()
