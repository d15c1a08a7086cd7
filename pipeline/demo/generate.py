"""The demo dataset on disk: JPEG images, COCO captions and instances, noun ground truth."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pipeline.core.tables import write_bytes, write_json
from pipeline.demo.captions import TEMPLATES, make_caption
from pipeline.demo.config import DemoDataConfig
from pipeline.demo.kinds import categories
from pipeline.demo.scene import _draw_image
from pipeline.demo.segmentation import _compressed_rle, _decode, segmentation_for

CAPTIONS_FILE = "annotations/captions_train.json"
INSTANCES_FILE = "annotations/instances_train.json"
OBJECTS_FILE = "annotations/demo_objects.json"
IMAGES_DIR = "images"

_IMAGE_NAME = re.compile(r"^\d{12}\.jpg$")


def _info(cfg: DemoDataConfig, what: str) -> dict[str, Any]:
    return {
        "description": f"TokenCompose demo dataset ({what}), drawn procedurally from seed {cfg.seed}",
        "url": "",
        "version": "1.0",
        "year": 2024,
        "contributor": "tokencompose-pipeline demo generator",
        "date_created": "2024/01/01",
    }

LICENSES = [{"id": 1, "name": "CC0 1.0 Universal (synthetic data)",
             "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


def generate_demo(cfg: DemoDataConfig) -> dict[str, Any]:
    """Draw the demo dataset into ``cfg.out_dir``; return a summary.

    Summary: ``{"out_dir", "images", "captions", "annotations", "crowd_annotations",
    "polygon_annotations", "rle_annotations", "occluded_annotations", "per_category":
    {category name: annotations}}``. Stale ``images/<12 digits>.jpg`` not in this dataset
    are removed; every file is written atomically.
    """
    cfg.validate()
    out = Path(cfg.out_dir)
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)

    coco_images: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    caption_records: list[dict[str, Any]] = []
    image_records: list[dict[str, Any]] = []
    per_category: Counter[str] = Counter()
    n_poly = n_rle = n_crowd = n_occluded = 0
    names: set[str] = set()

    for image_id in tqdm(range(1, cfg.num_images + 1), desc="demo images", unit="img"):
        im = _draw_image(image_id, cfg)
        file_name = f"{image_id:012d}.jpg"
        names.add(file_name)
        write_bytes(im.jpeg, images_dir / file_name)
        coco_images.append({"id": image_id, "file_name": file_name, "width": im.width,
                            "height": im.height, "license": 1})

        for (g, vis, area0), prefer_rle in zip(im.instances, im.formats):
            ann_id = len(annotations) + 1
            seg = segmentation_for(vis, g.crowd, prefer_rle)
            area = int(vis.sum())
            decoded = _decode(seg, im.height, im.width)
            if not np.array_equal(decoded, vis):
                raise RuntimeError(f"annotation {ann_id}: segmentation does not match its mask")
            x, y, w, h = (float(v) for v in mask_utils.toBbox(_compressed_rle(vis)))
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": g.kind.coco_id,
                "bbox": [x, y, w, h], "area": area, "iscrowd": int(g.crowd),
                "segmentation": seg,
            })
            g.annotation_ids.append(ann_id)
            per_category[g.kind.category] += 1
            n_crowd += g.crowd
            n_poly += isinstance(seg, list)
            n_rle += not isinstance(seg, list)
            n_occluded += area < area0

        image_records.append({
            "image_id": image_id, "file_name": file_name, "scene": im.scene,
            "objects": [{"category": g.kind.category, "category_id": g.kind.coco_id,
                         "variant": g.variant.name, "count": g.count, "crowd": g.crowd,
                         "annotation_ids": g.annotation_ids} for g in im.groups],
        })
        cap_rng = np.random.default_rng([cfg.seed, image_id, 1])
        replace = cfg.captions_per_image > len(TEMPLATES)
        picks = cap_rng.choice(len(TEMPLATES), cfg.captions_per_image, replace=replace)
        for t in picks:
            if len(im.groups) >= 2:
                text, mentions = make_caption(im.groups, im.scene, (im.height, im.width),
                                              TEMPLATES[int(t)], cap_rng)
            else:
                text, mentions = make_caption(im.groups * 2, im.scene, (im.height, im.width),
                                              "A photo of {A}[ {SCENE}].", cap_rng)
            cap_id = len(captions) + 1
            captions.append({"id": cap_id, "image_id": image_id, "caption": text})
            caption_records.append({"caption_id": cap_id, "image_id": image_id,
                                    "caption": text, "mentions": mentions})

    for stale in sorted(images_dir.iterdir()):
        if _IMAGE_NAME.match(stale.name) and stale.name not in names:
            stale.unlink()

    cats = categories()
    captions_doc = {"info": _info(cfg, "captions"), "licenses": LICENSES,
                    "images": coco_images, "annotations": captions}
    instances_doc = {"info": _info(cfg, "instances"), "licenses": LICENSES,
                     "images": coco_images, "annotations": annotations, "categories": cats}
    write_json(captions_doc, out / CAPTIONS_FILE)
    write_bytes(json.dumps(instances_doc, sort_keys=True, separators=(",", ":")).encode() + b"\n",
                out / INSTANCES_FILE)
    write_json({"captions": caption_records, "images": image_records, "categories": cats},
               out / OBJECTS_FILE)

    summary = {
        "out_dir": str(out),
        "images": len(coco_images),
        "captions": len(captions),
        "annotations": len(annotations),
        "crowd_annotations": n_crowd,
        "polygon_annotations": n_poly,
        "rle_annotations": n_rle,
        "occluded_annotations": n_occluded,
        "per_category": dict(sorted(per_category.items())),
    }
    return summary
