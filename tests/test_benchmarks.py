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


def _rows_by_name(rows: list[tuple]) -> dict[str, tuple]:
    assert all(len(r) == 4 for r in rows)
    return {r[0]: r for r in rows}


def test_gpu_report_quick_times_sdxl_lora_and_sd14_adapter_steps_through_the_train_step_code():
    """The GPU report's training rows (``python -m bench --gpu --quick``): the release layouts at tiny widths on
    the CPU, through ``pipeline.train.step.micro_step``, LoRA or full as ``prepare_trainable`` sets them up."""
    from bench.gpu_report import sd14_adapter_rows, sdxl_lora_rows

    sdxl = _rows_by_name(sdxl_lora_rows("cpu", quick=True))
    assert len(sdxl) == 4
    for latents in ("cached latents", "VAE encode in the step"):
        for mode in ("plain", "tokencompose"):
            what, speed, _, note = sdxl[f"SDXL (tiny) LoRA r128 train step {mode}, {latents}, bf16 batch 1"]
            assert speed.endswith(" s/step") and float(speed.split()[0]) > 0, (what, speed, note)
            assert "LoRA params on a" in note
            assert ("L_LDM only" in note) == (mode == "plain")
            assert mode == "plain" or "5 supervised layers" in note   # mid + 2 x 2 up layers of the tiny layout
    sd = _rows_by_name(sd14_adapter_rows("cpu", quick=True))
    assert list(sd) == [f"SD1.4 (tiny) {kind} train step tokencompose, {setting}"
                        for setting in ("fp32 batch 1", "bf16 batch 4") for kind in ("full", "LoRA r4")]
    for what, speed, _, note in sd.values():
        assert speed.endswith(" s/step") and "supervised layers" in note, (what, speed, note)
    full, lora = (float(sd[f"SD1.4 (tiny) {k} train step tokencompose, fp32 batch 1"][3].split()[2][:-1])
                  for k in ("full", "LoRA r4"))
    assert 0 < lora < full


def test_gpu_report_training_row_that_fails_gives_its_reason_and_the_others_still_run(monkeypatch):
    import bench.gpu_report as report

    real = report.prepare_step_models

    def prepare(models, cfg, device):
        if cfg.adapter == "lora":
            raise RuntimeError("CUDA out of memory (injected)")
        real(models, cfg, device)

    monkeypatch.setattr(report, "prepare_step_models", prepare)
    rows = report.sd14_adapter_rows("cpu", quick=True)
    assert [r[1] == "failed" for r in rows] == [False, True, False, True]
    assert rows[1][3] == "RuntimeError: CUDA out of memory (injected)"
    assert all(r[1].endswith(" s/step") for r in rows[::2])
