"""Every table's schema, in one place: what each Parquet file of the pipeline holds.

Read any table with ``pipeline.core.tables.read_table`` (a file or a folder of shards).
"""

import pyarrow as pa

#: captions: one row per kept caption (``data/captions/captions.parquet``)
CAPTIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("caption_id", pa.int64()),
        ("file", pa.string()),            # COCO file_name, relative to images_dir
        ("path", pa.string()),            # images_dir/file
        ("width", pa.int32()),            # decoded image size in pixels
        ("height", pa.int32()),
        ("mode", pa.string()),            # original PIL mode: RGB, L, CMYK, ...
        ("caption", pa.string()),         # NFC, whitespace collapsed
        ("official_nouns", pa.string()),  # tokencompose format: JSON [[noun, mask path or null], ...] (attn_list); else null
        ("clip_score", pa.float32()),     # select clip_best: the chosen caption's CLIP image-text logit; else null
    ]
)

#: nouns: one row per noun occurrence (``data/nouns/nouns.parquet``)
NOUNS_SCHEMA = pa.schema(
    [
        ("noun_id", pa.int64()),
        ("caption_id", pa.int64()),
        ("image_id", pa.int64()),
        ("noun_index", pa.int32()),
        ("text", pa.string()),
        ("lemma", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("token_indices", pa.list_(pa.int32())),
        ("truncated", pa.bool_()),
    ]
)

#: boxes: one row per (noun, box), or per noun without a box (``data/ground/boxes/``)
BOXES_SCHEMA = pa.schema(
    [
        ("noun_id", pa.int64()),
        ("caption_id", pa.int64()),
        ("image_id", pa.int64()),
        ("text", pa.string()),
        ("box_index", pa.int32()),
        ("found", pa.bool_()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("score", pa.float32()),
        ("phrase", pa.string()),
        ("match", pa.string()),           # phrase_rule official: the step that matched the phrase; else null
    ]
)

#: masks: one row per noun with a mask (``data/segment/masks/``, ``data/reference_masks/masks/``)
MASKS_SCHEMA = pa.schema(
    [
        ("noun_id", pa.int64()),
        ("caption_id", pa.int64()),
        ("image_id", pa.int64()),
        ("text", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle", pa.binary()),      # pycocotools compressed RLE counts
        ("area", pa.int64()),      # pixels inside the mask
        ("n_boxes", pa.int32()),   # boxes whose SAM masks were united into this one
    ]
)

#: rejects: one row per rejected input row, every stage (``<stage>/rejects.parquet``)
REJECTS_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("key", pa.string()),      # the rejected row's id in its input (caption id, image id, ...)
        ("reason", pa.string()),   # a short machine-readable code, e.g. "missing_image"
        ("detail", pa.string()),   # a human-readable explanation
    ]
)

#: generated images: one row per image (``data/evaluate/<model>/<benchmark>/manifest.parquet``)
MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),            # image file stem: "<prompt_id>_<image_index>"
    ("prompt_id", pa.int64()),
    ("image_index", pa.int32()),
    ("seed", pa.int64()),            # multigen.image_seed(evaluate.seed, prompt_id, image_index[, namespace])
    ("text", pa.string()),
    ("categories", pa.list_(pa.string())),
])

#: detections: one row per kept box on a generated image (``.../detections/``)
DETECTIONS_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("prompt_id", pa.int64()),
    ("image_index", pa.int32()),
    ("label", pa.string()),          # the best-scoring query's category
    ("score", pa.float32()),         # sigmoid score of that query, > keep_threshold
    ("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),  # pixels
])


#: reference instances: one row per (matched noun, COCO instance of its category in its image)
#: (``data/reference_masks/instances.parquet``); boxes are COCO bboxes as xyxy pixels
REFERENCE_INSTANCES_SCHEMA = pa.schema(
    [
        ("noun_id", pa.int64()),
        ("image_id", pa.int64()),
        ("category", pa.string()),        # COCO category name the noun matched
        ("annotation_id", pa.int64()),
        ("iscrowd", pa.bool_()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
    ]
)
