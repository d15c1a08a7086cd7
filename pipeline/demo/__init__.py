"""The demo dataset: a small COCO-format dataset drawn procedurally, deterministic from a seed.

Every image shows 2-4 kinds of object (15 kinds, all real COCO categories, including the
compound nouns "teddy bear", "traffic light", "stop sign", "fire hydrant", "wine glass") on
a seeded background (sky and grass, wooden table, room, colour noise, gradient). Each object
is drawn from its own boolean mask, so the instance masks are the exact pixels of what is
visible: later objects cover earlier ones and the earlier masks lose the covered pixels.

Files written under ``out_dir``::

    images/<12-digit image id>.jpg        RGB JPEG, quality 90, sides in [min_size, max_size]
    annotations/captions_train.json       COCO captions: info, licenses,
                                          images (id, file_name, width, height, license),
                                          annotations (id, image_id, caption)
    annotations/instances_train.json      COCO instances: info, licenses, images, categories
                                          (real COCO id, name, supercategory), annotations
                                          (id, image_id, category_id, bbox [x, y, w, h],
                                          area = mask pixel count, iscrowd, segmentation)
    annotations/demo_objects.json         ground truth for noun extraction: per caption the
                                          categories it names, the exact word(s) and their
                                          character span; per image the objects drawn

Segmentations: non-crowd instances are polygons (pixel-corner outlines that decode to the
exact mask with pycocotools) unless the mask has a hole (donuts, cup handles) or the instance
was picked for RLE, in which case they are compressed RLE (``counts`` a str). A cluster of
small objects of one kind ("a pile of apples") is one ``iscrowd=1`` instance stored as
uncompressed RLE (``counts`` a list), as COCO stores crowds.

The same config gives byte-identical files: each image is drawn by its own
``numpy.random.Generator`` seeded with ``(seed, image index)``, so growing ``num_images``
keeps the earlier images unchanged.
"""

from pipeline.demo.backgrounds import SCENES
from pipeline.demo.captions import TEMPLATES, make_caption
from pipeline.demo.config import MAX_CAPTIONS_PER_IMAGE, DemoDataConfig
from pipeline.demo.generate import (
    CAPTIONS_FILE,
    IMAGES_DIR,
    INSTANCES_FILE,
    LICENSES,
    OBJECTS_FILE,
    generate_demo,
)
from pipeline.demo.kinds import KINDS, Kind, Variant, categories
from pipeline.demo.segmentation import mask_to_polygons, segmentation_for

__all__ = [
    "CAPTIONS_FILE",
    "IMAGES_DIR",
    "INSTANCES_FILE",
    "KINDS",
    "LICENSES",
    "MAX_CAPTIONS_PER_IMAGE",
    "OBJECTS_FILE",
    "SCENES",
    "TEMPLATES",
    "DemoDataConfig",
    "Kind",
    "Variant",
    "categories",
    "generate_demo",
    "make_caption",
    "mask_to_polygons",
    "segmentation_for",
]
