"""Compressed RLE, PNG export, COCO segmentation decoding and the masks table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.core.masks import (
    coco_segmentation_to_mask,
    decode_rle,
    encode_rle,
    mask_from_png_bytes,
    mask_to_png_bytes,
    rle_area,
    run_lengths,
)
from pipeline.core.schemas import MASKS_SCHEMA
from pipeline.core.tables import read_table, write_rows

SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (31, 17), (97, 101), (480, 640)]


def _runs_by_numpy(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a mask, background first (COCO's convention)."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat[0] else runs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 0.98, 1.0])
def test_rle_round_trip(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    counts = encode_rle(mask)
    assert isinstance(counts, bytes)
    back = decode_rle(counts, *shape)
    assert back.dtype == np.bool_ and back.shape == shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back, mask)
    reference = mask_utils.decode({"size": list(shape), "counts": counts})
    np.testing.assert_array_equal(back, reference.astype(bool))
    assert rle_area(counts, *shape) == int(mask.sum())
    assert run_lengths(counts).tolist() == _runs_by_numpy(mask)


def test_blobs_and_non_contiguous_views():
    mask = np.zeros((240, 320), dtype=bool)
    mask[20:120, 30:200] = True
    mask[150:, 250:] = True
    for view in (mask, mask[::2, ::3], mask.T, np.asfortranarray(mask)):
        np.testing.assert_array_equal(decode_rle(encode_rle(view), *view.shape), view)
    # 0/1 integers are accepted as masks
    np.testing.assert_array_equal(decode_rle(encode_rle(mask.astype(np.uint8)), 240, 320), mask)


def test_empty_and_full_masks():
    empty = np.zeros((5, 7), dtype=bool)
    full = np.ones((5, 7), dtype=bool)
    assert rle_area(encode_rle(empty), 5, 7) == 0
    assert rle_area(encode_rle(full), 5, 7) == 35
    assert run_lengths(encode_rle(empty)).tolist() == [35]
    assert run_lengths(encode_rle(full)).tolist() == [0, 35]
    np.testing.assert_array_equal(decode_rle(encode_rle(full), 5, 7), full)


def test_counts_as_str_accepted():
    mask = np.eye(6, dtype=bool)
    counts = encode_rle(mask)
    np.testing.assert_array_equal(decode_rle(counts.decode("ascii"), 6, 6), mask)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        encode_rle(np.zeros((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="empty side"):
        encode_rle(np.zeros((0, 3), dtype=bool))
    with pytest.raises(TypeError):
        encode_rle(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="0 and 1"):
        encode_rle(np.full((2, 3), 2, dtype=np.uint8))
    counts = encode_rle(np.eye(10, dtype=bool))
    with pytest.raises(ValueError, match="cover"):
        decode_rle(counts, 20, 20)  # runs too short: pycocotools would leave pixels unset
    with pytest.raises(ValueError, match="cover"):
        rle_area(counts, 5, 5)
    with pytest.raises(ValueError, match="invalid byte"):
        decode_rle(b"\x01\x02", 10, 10)
    with pytest.raises(ValueError, match="middle of a run"):
        decode_rle(counts + b"P", 10, 10)


def test_png_round_trip_is_one_bit():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) < 0.3
    data = mask_to_png_bytes(mask)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[24] == 1  # IHDR bit depth
    np.testing.assert_array_equal(mask_from_png_bytes(data), mask)


@pytest.fixture(scope="module")
def coco_instances(coco_mini: Path) -> COCO:
    return COCO(str(coco_mini / "annotations" / "instances_train2017.json"))


def test_coco_segmentations_match_ann_to_mask(coco_instances: COCO):
    anns = coco_instances.loadAnns(coco_instances.getAnnIds())
    crowd = [a for a in anns if a["iscrowd"]]
    assert len(anns) == 739 and len(crowd) == 8
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    for ann in anns:
        img = coco_instances.imgs[ann["image_id"]]
        h, w = img["height"], img["width"]
        expected = coco_instances.annToMask(ann).astype(bool)
        got = coco_segmentation_to_mask(ann["segmentation"], h, w)
        assert got.shape == (h, w) and got.dtype == np.bool_
        np.testing.assert_array_equal(got, expected, err_msg=f"annotation {ann['id']}")
        # the same mask as compressed RLE, counts as str (the COCO results format)
        compressed = dict(coco_instances.annToRLE(ann))
        compressed["counts"] = compressed["counts"].decode("ascii")
        np.testing.assert_array_equal(coco_segmentation_to_mask(compressed, h, w), expected)
        if ann["iscrowd"]:
            assert rle_area(compressed["counts"], h, w) == int(expected.sum())


def test_coco_segmentation_errors():
    with pytest.raises(ValueError, match="does not match"):
        coco_segmentation_to_mask({"size": [4, 4], "counts": [16]}, 5, 5)
    with pytest.raises(ValueError, match="covers"):
        coco_segmentation_to_mask({"size": [4, 4], "counts": [3, 4]}, 4, 4)
    with pytest.raises(TypeError):
        coco_segmentation_to_mask("polygon", 4, 4)
    with pytest.raises(ValueError, match="empty"):
        coco_segmentation_to_mask([], 4, 4)


def test_masks_table_parquet_round_trip(coco_mini: Path, tmp_path: Path):
    data = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    rows, masks = [], []
    for i, ann in enumerate(data["annotations"][:60]):
        im = images[ann["image_id"]]
        mask = coco_segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
        masks.append(mask)
        rows.append(
            {
                "noun_id": i,
                "caption_id": 1000 + i,
                "image_id": ann["image_id"],
                "text": f"category {ann['category_id']}",
                "height": im["height"],
                "width": im["width"],
                "rle": encode_rle(mask),
                "area": int(mask.sum()),
                "n_boxes": 1,
            }
        )
    path = write_rows(rows, MASKS_SCHEMA, tmp_path / "masks" / "part-00000.parquet")
    assert pq.read_metadata(path).row_group(0).column(6).compression == "ZSTD"
    table = read_table(tmp_path / "masks")
    assert table.schema.equals(MASKS_SCHEMA)
    assert table.num_rows == len(rows)
    for row, mask in zip(table.to_pylist(), masks):
        np.testing.assert_array_equal(decode_rle(row["rle"], row["height"], row["width"]), mask)
        assert rle_area(row["rle"], row["height"], row["width"]) == row["area"]
    empty = write_rows([], MASKS_SCHEMA, tmp_path / "empty.parquet")
    assert read_table(empty).schema.equals(MASKS_SCHEMA)


def test_area_agrees_with_pycocotools_encode():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:40, 5:25] = True
    reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_rle(mask) == reference["counts"]
    assert rle_area(reference["counts"], 50, 60) == 600
