"""Mask IoU and box recall against human annotations, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.mask_quality import box_iou, box_recall, boxes_found, compare_masks, mask_iou, worst_cases_figure


def _rect(y0, y1, x0, x1, shape=(10, 10)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_iou_by_hand():
    a, b = _rect(0, 4, 0, 4), _rect(2, 6, 2, 6)        # 16 and 16 px, overlap 4 -> 4 / 28
    assert mask_iou(a, b) == pytest.approx(4 / 28)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, _rect(6, 8, 6, 8)) == 0.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((4, 4), bool))


def test_box_iou_and_found_by_hand():
    pred = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    ref = np.array([[5, 0, 15, 10], [0, 0, 10, 9], [21, 21, 31, 31]])
    iou = box_iou(pred, ref)
    assert iou[0, 0] == pytest.approx(50 / 150)          # half-shifted: 1/3
    assert iou[0, 1] == pytest.approx(90 / 100)
    assert iou[1, 2] == pytest.approx(81 / 119)
    assert boxes_found(pred, ref).tolist() == [False, True, True]
    assert boxes_found(np.zeros((0, 4)), ref).tolist() == [False] * 3


def test_box_recall_by_hand():
    boxes = [  # noun 1 has two boxes, noun 2 none, noun 3 one far off
        {"noun_id": 1, "found": True, "x0": 0, "y0": 0, "x1": 10, "y1": 10},
        {"noun_id": 1, "found": True, "x0": 20, "y0": 20, "x1": 30, "y1": 30},
        {"noun_id": 2, "found": False, "x0": None, "y0": None, "x1": None, "y1": None},
        {"noun_id": 3, "found": True, "x0": 50, "y0": 50, "x1": 60, "y1": 60},
    ]
    inst = [
        {"noun_id": 1, "iscrowd": False, "x0": 0, "y0": 0, "x1": 10, "y1": 9},     # found (0.9)
        {"noun_id": 1, "iscrowd": False, "x0": 5, "y0": 0, "x1": 15, "y1": 10},    # 1/3: missed
        {"noun_id": 1, "iscrowd": True, "x0": 0, "y0": 0, "x1": 99, "y1": 99},     # crowd: left out
        {"noun_id": 2, "iscrowd": False, "x0": 0, "y0": 0, "x1": 10, "y1": 10},    # no box: missed
        {"noun_id": 3, "iscrowd": False, "x0": 52, "y0": 50, "x1": 62, "y1": 60},  # 80/120: found
    ]
    r = box_recall(boxes, inst)
    assert r["reference_nouns"] == 3 and r["reference_instances"] == 4
    assert r["reference_instances_found"] == 2 and r["box_recall_at_0_5"] == 0.5
    assert r["reference_crowd_instances_skipped"] == 1 and r["reference_nouns_all_instances_found"] == 1
    assert box_recall([], [])["box_recall_at_0_5"] is None


def test_compare_masks_by_hand(tmp_path):
    ref = {10: _rect(0, 4, 0, 4), 11: _rect(0, 10, 0, 10), 12: _rect(0, 2, 0, 2), 13: _rect(5, 9, 5, 9)}
    auto = {10: _rect(0, 4, 0, 4), 11: _rect(0, 5, 0, 10), 12: _rect(2, 6, 2, 6), 99: _rect(0, 1, 0, 1)}
    cats = {10: "dog", 11: "dog", 12: "cat", 13: "cat"}
    per_noun, summary, per_category = compare_masks(auto, ref, cats)
    assert [(r["noun_id"], r["iou"]) for r in per_noun] == [(10, 1.0), (11, 0.5), (12, 0.0)]
    assert summary == {"reference_nouns": 4, "reference_nouns_compared": 3, "reference_nouns_without_mask": 1,
                       "mean_iou": 0.5, "share_iou_ge_0_5": round(2 / 3, 4)}
    assert per_category == [{"category": "cat", "nouns": 1, "mean_iou": 0.0, "share_iou_ge_0_5": 0.0},
                            {"category": "dog", "nouns": 2, "mean_iou": 0.75, "share_iou_ge_0_5": 1.0}]
    img = np.zeros((10, 10, 3), np.uint8)
    out = worst_cases_figure([{"image": img, "auto": auto[12], "reference": ref[12], "label": "x"}], tmp_path / "w.png")
    from PIL import Image

    assert Image.open(out).size == (3 * 160, 174)
