"""Detection benchmark pieces: one shard's detections, with an unreadable image on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.evaluate.detection import Detector
from pipeline.evaluate.multigen import Prompt, image_seed
from pipeline.evaluate.prompt_benchmarks import PromptBenchmark, detect_shard, manifest
from pipeline.models.clip_tokenizer import build_clip_tokenizer
from pipeline.models.owl_tiny import build_tiny_owlv2


def test_detect_shard_labels_by_prompt_and_records_unreadable_images(tmp_path: Path):
    tok = build_clip_tokenizer(tmp_path / "tok")
    detector = Detector.load(build_tiny_owlv2(tmp_path / "owl", 0, tok), "owlv2")
    prompts = [Prompt(0, "a photo of a cat and a dog.", ("cat", "dog")),
               Prompt(1, "a photo of a bus and a kite.", ("bus", "kite"))]
    bench = PromptBenchmark("multigen", prompts, 1, "", "owl", "owlv2", False, 0.1, 0.0, 4)
    items = bench.items(seed=3)
    assert [it.seed for it in items] == [image_seed(3, 0, 0), image_seed(3, 1, 0)]
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "0_0.png")
    (tmp_path / "1_0.png").write_bytes(b"\x89PNG truncated")
    rows, rejects = detect_shard(detector, tmp_path, bench, items)
    assert rejects.to_pylist() == [{"stage": "evaluate", "key": "multigen:1_0", "reason": "unreadable_image",
                                    "detail": rejects.column("detail")[0].as_py()}]
    det = rows.to_pylist()
    assert len(det) == detector.num_boxes  # keep_threshold 0: every box of the readable image
    assert {d["key"] for d in det} == {"0_0"} and {d["label"] for d in det} <= {"cat", "dog"}
    assert all(0 <= d["x0"] <= d["x1"] <= 64 and 0 <= d["y0"] <= d["y1"] <= 48 for d in det)
    table = manifest(bench, items).to_pylist()
    assert [(r["key"], r["prompt_id"], r["categories"]) for r in table] == [("0_0", 0, ["cat", "dog"]),
                                                                          ("1_0", 1, ["bus", "kite"])]
