"""OWLv2 / OWL-ViT detection: the tiny builders, the loader, box math and batched inference."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from pipeline.evaluate.detection import (
    QUERY_TEMPLATE,
    Detection,
    Detector,
    boxes_to_pixels,
)
from pipeline.models.clip_tokenizer import (
    BOS_ID,
    EOS_ID,
    VOCAB_SIZE,
    build_clip_tokenizer,
)
from pipeline.models.owl import resolve_source
from pipeline.models.owl_tiny import (
    OWL_MAX_TEXT_LEN,
    TinyOwlConfig,
    build_tiny_owlv2,
    build_tiny_owlvit,
)

KINDS = ("owlv2", "owlvit")
BUILDERS = {"owlv2": build_tiny_owlv2, "owlvit": build_tiny_owlvit}
CATEGORIES = ["cat", "dog", "teddy bear", "traffic light", "banana"]
#: (width, height): square, wide, tall.
SIZES = [(64, 64), (90, 40), (30, 100), (128, 96)]
N_BOXES = TinyOwlConfig().num_patches  # 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip") / "clip-tokenizer")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("owl")
    return {kind: BUILDERS[kind](root / kind, seed=0, tokenizer_dir=tokenizer_dir) for kind in KINDS}


@pytest.fixture(scope="module")
def detectors(tiny_dirs) -> dict[str, Detector]:
    return {kind: Detector.load(str(tiny_dirs[kind]), kind) for kind in KINDS}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    out = []
    for k, (w, h) in enumerate(SIZES):
        rng = np.random.default_rng(k)
        a = np.empty((h, w, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        a[h // 4 : h // 2, w // 3 : 2 * w // 3] = rng.integers(0, 256, 3)
        a[h // 2 :, : w // 2] = rng.integers(0, 256, (h - h // 2, w // 2, 3))
        out.append(Image.fromarray(a))
    return out


def queries(categories: list[str]) -> list[str]:
    return [QUERY_TEMPLATE.format(c) for c in categories]


def assert_same(a: list[list[Detection]], b: list[list[Detection]], atol: float = 1e-4) -> None:
    assert [len(x) for x in a] == [len(x) for x in b]
    for da, db in zip(a, b):
        assert [d.label for d in da] == [d.label for d in db]
        np.testing.assert_allclose([d.score for d in da], [d.score for d in db], atol=1e-5)
        np.testing.assert_allclose([d.box for d in da], [d.box for d in db], atol=atol)


# ----------------------------------------------------------------------------- tiny builders


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_folder_is_a_hub_style_checkpoint(tiny_dirs, kind):
    folder = tiny_dirs[kind]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == kind
    assert config["architectures"] == [{"owlv2": "Owlv2ForObjectDetection", "owlvit": "OwlViTForObjectDetection"}[kind]]
    loaded = AutoConfig.from_pretrained(folder)
    text, vision = loaded.text_config, loaded.vision_config
    assert (text.vocab_size, text.max_position_embeddings, text.pad_token_id, text.eos_token_id) == (
        VOCAB_SIZE, 16, 0, EOS_ID,
    )
    assert (vision.image_size, vision.patch_size) == (64, 16)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == {"owlv2": "Owlv2ImageProcessor", "owlvit": "OwlViTImageProcessor"}[kind]
    assert pre["size"] == {"height": 64, "width": 64}
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert (tok["model_max_length"], tok["pad_token"]) == (OWL_MAX_TEXT_LEN, "!")
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 20 * 2**20


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_build_is_deterministic(tmp_path, tokenizer_dir, tiny_dirs, kind):
    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()

    before = torch.get_rng_state()
    again = BUILDERS[kind](tmp_path / "same", seed=0, tokenizer_dir=tokenizer_dir)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    other = BUILDERS[kind](tmp_path / "other", seed=1, tokenizer_dir=tokenizer_dir)
    assert digest(again) == digest(tiny_dirs[kind])
    assert digest(other) != digest(tiny_dirs[kind])


def test_builder_rejects_a_folder_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        build_tiny_owlv2(tmp_path / "m", seed=0, tokenizer_dir=tmp_path / "nothing")


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", KINDS)
def test_load_gives_eval_model_and_owl_processor(detectors, kind):
    det = detectors[kind]
    names = {
        "owlv2": ("Owlv2ForObjectDetection", "Owlv2Processor", "Owlv2ImageProcessor"),
        "owlvit": ("OwlViTForObjectDetection", "OwlViTProcessor", "OwlViTImageProcessor"),
    }[kind]
    got = (type(det.model).__name__, type(det.processor).__name__, type(det.processor.image_processor).__name__)
    assert got == names
    assert not det.model.training
    assert det.num_boxes == N_BOXES
    ids = det.processor(text=["a photo of a cat"], return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[BOS_ID, 320, 1125, 539, 320, 2368, EOS_ID] + [0] * 9]


def test_fast_processor_is_a_choice_close_to_the_official_one(detectors, tiny_dirs):
    import numpy as np
    from PIL import Image

    fast = Detector.load(tiny_dirs["owlv2"], "owlv2", fast_processor=True)
    assert type(fast.processor.image_processor).__name__ == "Owlv2ImageProcessorFast"
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    slow_px = detectors["owlv2"].processor(images=image, return_tensors="pt")["pixel_values"]
    fast_px = fast.processor(images=image, return_tensors="pt")["pixel_values"]
    assert slow_px.shape == fast_px.shape and (slow_px - fast_px).abs().mean() < 0.05


def test_missing_local_folder_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="detector folder not found"):
        Detector.load(tmp_path / "no-such-owl", "owlv2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Detector.load(tmp_path / "empty", "owlvit")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError):
        resolve_source("models/owl")  # looks like org/name, but models/ is a local folder
    assert resolve_source("google/owlv2-large-patch14-ensemble") == "google/owlv2-large-patch14-ensemble"
    with pytest.raises(FileNotFoundError):
        resolve_source("models/tiny/owl")


def test_wrong_kind_is_a_value_error(tiny_dirs):
    with pytest.raises(ValueError, match="not in"):
        Detector.load(tiny_dirs["owlv2"], "owl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'owlv2' model, not 'owlvit'"):
        Detector.load(tiny_dirs["owlv2"], "owlvit")
    with pytest.raises(ValueError):
        boxes_to_pixels(torch.zeros(1, 4), 10, 10, "yolo")


# ----------------------------------------------------------------------------- box math


def test_box_conversion_by_hand():
    def close(got: torch.Tensor, want: list) -> None:
        np.testing.assert_allclose(got.numpy(), want, atol=1e-4)

    box = torch.tensor([[0.5, 0.25, 0.2, 0.1]])  # cx, cy, w, h in the model's square
    # 200 x 100 (w x h). OWL-ViT stretched the image: x by 200, y by 100.
    close(boxes_to_pixels(box, 200, 100, "owlvit"), [[80.0, 20.0, 120.0, 30.0]])
    # OWLv2 padded it to 200 x 200 (bottom): both axes by 200.
    close(boxes_to_pixels(box, 200, 100, "owlv2"), [[80.0, 40.0, 120.0, 60.0]])
    # 100 x 200 (tall, padded on the right): cx 100 -> the box is clipped at x = 100.
    close(boxes_to_pixels(box, 100, 200, "owlv2"), [[80.0, 40.0, 100.0, 60.0]])
    close(boxes_to_pixels(box, 100, 200, "owlvit"), [[40.0, 40.0, 60.0, 60.0]])
    # A box in the padding below the image collapses onto its bottom edge; negatives clip to 0.
    low = torch.tensor([[0.5, 0.9, 0.2, 0.4], [0.05, 0.05, 0.2, 0.2]])
    close(boxes_to_pixels(low, 200, 100, "owlv2"), [[80.0, 100.0, 120.0, 100.0], [0.0, 0.0, 30.0, 30.0]])


def test_owlv2_pads_bottom_right_as_the_box_math_assumes(detectors):
    """The processor pads a 90 x 40 image with grey below it: rows past 40/90 of the input are padding."""
    proc = detectors["owlv2"].processor.image_processor
    pixels = proc(images=[Image.new("RGB", (90, 40), (0, 0, 0))], return_tensors="pt")["pixel_values"][0]
    grey = (0.5 - torch.tensor(proc.image_mean)) / torch.tensor(proc.image_std)
    black = (0.0 - torch.tensor(proc.image_mean)) / torch.tensor(proc.image_std)
    side = pixels.shape[-1]
    cut = side * 40 // 90
    torch.testing.assert_close(pixels[:, cut + 2 :, :].mean(dim=(1, 2)), grey, atol=1e-3, rtol=0)
    torch.testing.assert_close(pixels[:, : cut - 2, :].mean(dim=(1, 2)), black, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_boxes_match_transformers_post_processing(detectors, images, kind):
    """Same boxes, scores and labels as ``model(**inputs)`` + the image processor's post-processing."""
    det = detectors[kind]
    texts = [queries(CATEGORIES)] * len(images)
    inputs = det.processor(text=texts, images=images, return_tensors="pt")
    with torch.no_grad():
        out = det.model(**inputs)
    ref = det.processor.image_processor.post_process_object_detection(
        out, threshold=0.5, target_sizes=[(im.height, im.width) for im in images]
    )
    ours = det.detect(images, CATEGORIES, keep_threshold=0.5)
    for im, r, dets in zip(images, ref, ours):
        assert len(dets) == len(r["scores"]) > 0
        upper = torch.tensor([im.width, im.height, im.width, im.height], dtype=torch.float32)
        ref_boxes = torch.minimum(r["boxes"].clamp(min=0), upper)
        order = sorted(range(len(dets)), key=lambda k: (-float(r["scores"][k]), int(r["labels"][k])))
        np.testing.assert_allclose([d.score for d in dets], r["scores"][order].numpy(), atol=1e-5)
        assert [d.label for d in dets] == r["labels"][order].tolist()
        np.testing.assert_allclose([d.box for d in dets], ref_boxes[order].numpy(), atol=1e-3)


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize("kind", KINDS)
def test_predict_equals_the_model_forward(detectors, images, kind):
    det = detectors[kind]
    texts = [queries(CATEGORIES)] * len(images)
    with torch.no_grad():
        out = det.model(**det.processor(text=texts, images=images, return_tensors="pt"))
    probs, boxes = det.predict(images, texts)
    assert probs.shape == (len(images), N_BOXES, len(CATEGORIES)) and boxes.shape == (len(images), N_BOXES, 4)
    torch.testing.assert_close(probs, out.logits.sigmoid(), atol=1e-5, rtol=0)
    torch.testing.assert_close(boxes, out.pred_boxes, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_detections_are_well_formed(detectors, images, kind, threshold):
    results = detectors[kind].detect(images, CATEGORIES, keep_threshold=threshold)
    assert len(results) == len(images)
    for im, dets in zip(images, results):
        assert dets
        for d in dets:
            assert isinstance(d.label, int) and 0 <= d.label < len(CATEGORIES)
            assert threshold < d.score <= 1.0
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= im.width and 0 <= y0 <= y1 <= im.height
        keys = [(-d.score, d.label) for d in dets]
        assert keys == sorted(keys)


@pytest.mark.parametrize("kind", KINDS)
def test_threshold_keeps_exactly_the_boxes_above_it(detectors, images, kind):
    det = detectors[kind]
    every = det.detect(images, CATEGORIES, keep_threshold=0.0)
    assert [len(d) for d in every] == [N_BOXES] * len(images)  # one per patch
    probs, _ = det.predict(images, [queries(CATEGORIES)] * len(images))
    best = probs.max(dim=-1).values  # (B, P)
    threshold = float(best.median())
    some = det.detect(images, CATEGORIES, keep_threshold=threshold)
    assert [len(d) for d in some] == (best > threshold).sum(dim=1).tolist()
    assert 0 < sum(map(len, some)) < N_BOXES * len(images)
    for full, kept in zip(every, some):
        assert kept == [d for d in full if d.score > threshold]


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_one_at_a_time(detectors, images, kind):
    det = detectors[kind]
    single = [det.detect([im], CATEGORIES, keep_threshold=0.3)[0] for im in images]
    assert_same(det.detect(images, CATEGORIES, keep_threshold=0.3), single)
    assert_same(det.detect(images, CATEGORIES, keep_threshold=0.3, batch_size=3), single)


@pytest.mark.parametrize("kind", KINDS)
def test_per_image_categories(detectors, images, kind):
    det = detectors[kind]
    per_image = [["cat", "dog"], ["banana"], [], ["traffic light", "cat", "person"]]
    results = det.detect(images, per_image, keep_threshold=0.0, batch_size=4)
    assert results[2] == []
    for im, cats, dets in zip(images, per_image, results):
        if cats:
            assert {d.label for d in dets} <= set(range(len(cats)))
            assert_same([dets], det.detect([im], cats, keep_threshold=0.0))
    with pytest.raises(ValueError, match="one per image"):
        det.detect(images, per_image[:2], keep_threshold=0.0)
    with pytest.raises(TypeError):
        det.detect(images, "cat", keep_threshold=0.0)


def test_labels_follow_the_best_query(detectors, images):
    """Asking one category alone gives that category's own score for every box."""
    det = detectors["owlvit"]
    probs, _ = det.predict(images[:1], [queries(CATEGORIES)])
    for label, cat in enumerate(CATEGORIES):
        alone = det.detect(images[:1], [cat], keep_threshold=0.0)[0]
        np.testing.assert_allclose(sorted(d.score for d in alone), sorted(probs[0, :, label].tolist()), atol=1e-6)
    joint = det.detect(images[:1], CATEGORIES, keep_threshold=0.0)[0]
    assert sorted(d.label for d in joint) == sorted(probs[0].argmax(dim=-1).tolist())
    assert len({d.label for d in joint}) > 1  # the random model does not always pick one query


def test_text_tower_runs_once_per_query(detectors, images, monkeypatch):
    det = detectors["owlv2"]
    det._text_cache.clear()
    calls: list[int] = []
    original = det.model.base_model.get_text_features

    def counting(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(**kwargs)

    monkeypatch.setattr(det.model.base_model, "get_text_features", counting)
    first = det.detect(images, CATEGORIES, keep_threshold=0.4, batch_size=2)
    assert calls == [1] * len(CATEGORIES)  # two batches, one text forward per query
    assert_same(det.detect(images, CATEGORIES, keep_threshold=0.4), first)
    det.detect(images[:1], ["cat", "zebra"], keep_threshold=0.4)
    assert calls == [1] * (len(CATEGORIES) + 1)  # only the new query


def test_a_query_embedding_does_not_depend_on_the_cache(detectors):
    """A resumed run has other queries cached than an uninterrupted one: same bits either way."""
    det = detectors["owlv2"]
    det._text_cache.clear()
    together = det.text_embeddings(["dog", "cat", "zebra", "umbrella"])
    det._text_cache.clear()
    alone = det.text_embeddings(["umbrella"])
    assert torch.equal(together[3], alone[0])


def test_long_queries_are_truncated_to_16_tokens(detectors, images, caplog):
    det = detectors["owlvit"]
    long_name = " ".join(["very"] * 20) + " big cat"
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluate.detection"):
        dets = det.detect(images[:1], [long_name, "dog"], keep_threshold=0.0)[0]
    assert "truncated to 16" in caplog.text
    assert len(dets) == N_BOXES and {d.label for d in dets} <= {0, 1}
    ids = det._tokenize([QUERY_TEMPLATE.format(long_name)])["input_ids"]
    assert ids.shape == (1, 16) and ids[0, 0] == BOS_ID and ids[0, -1] == EOS_ID


def test_invalid_arguments(detectors, images):
    det = detectors["owlvit"]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="keep_threshold"):
            det.detect(images, CATEGORIES, keep_threshold=bad)
    with pytest.raises(ValueError, match="batch_size"):
        det.detect(images, CATEGORIES, keep_threshold=0.1, batch_size=0)
    assert det.detect([], CATEGORIES, keep_threshold=0.1) == []


def test_detection_is_a_frozen_value():
    d = Detection(label=1, score=0.5, box=(0.0, 1.0, 2.0, 3.0))
    with pytest.raises(AttributeError):
        d.score = 0.9  # type: ignore[misc]
    assert math.isclose(d.score, 0.5) and d == Detection(1, 0.5, (0.0, 1.0, 2.0, 3.0))
