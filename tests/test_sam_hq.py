"""SAM-HQ: the tiny HQ model, loading through the strict path, batched decoding, wrong-family errors."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import from_dict
from pipeline.data.sam_masks import count_encoder_calls, make_predictor, segment_image
from pipeline.data.segment import SegmentConfig
from pipeline.models.sam import HQ_CHECKPOINT_NAME, build_tiny_sam, load_sam
from pipeline.models.sam_hq import build_tiny_sam_hq, is_hq_state_dict


@pytest.fixture(scope="module")
def hq_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_sam_hq(tmp_path_factory.mktemp("samhq"), seed=0)


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_sam(tmp_path_factory.mktemp("sam"), seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    h, w = 150, 210
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 40)], axis=-1).astype(np.uint8)
    img[20:90, 30:120] = (230, 200, 30)
    return img


BOXES = np.array([[30, 20, 120, 90], [130, 70, 190, 130], [0, 0, 210, 150]], dtype=np.float32)


def test_tiny_hq_is_seeded_and_loads_strictly(hq_checkpoint: Path, tmp_path: Path):
    from segment_anything_hq.modeling import MaskDecoderHQ

    assert hq_checkpoint.name == HQ_CHECKPOINT_NAME
    state = torch.load(hq_checkpoint, map_location="cpu", weights_only=True)
    assert is_hq_state_dict(state) and "mask_decoder.hf_token.weight" in state
    again = torch.load(build_tiny_sam_hq(tmp_path / "again", seed=0), map_location="cpu", weights_only=True)
    other = torch.load(build_tiny_sam_hq(tmp_path / "other", seed=1), map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["mask_decoder.hf_token.weight"], other["mask_decoder.hf_token.weight"])
    sam = load_sam("hq_tiny", hq_checkpoint, "cpu")
    assert isinstance(sam.mask_decoder, MaskDecoderHQ)
    for k, v in sam.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_hq_one_encoder_call_and_batched_equals_per_box(hq_checkpoint: Path, sam_checkpoint: Path, image):
    from segment_anything_hq import SamPredictor as HQPredictor

    predictor = make_predictor(load_sam("hq_tiny", hq_checkpoint, "cpu"), "hq_tiny")
    assert isinstance(predictor, HQPredictor)
    with count_encoder_calls(predictor.model) as counter:
        batched = segment_image(predictor, image, BOXES)
    assert counter.calls == 1
    assert batched.shape == (3, *image.shape[:2]) and batched.dtype == np.bool_
    for i, box in enumerate(BOXES):
        np.testing.assert_array_equal(segment_image(predictor, image, box[None])[0], batched[i], err_msg=f"box {i}")
    # the HQ output token changes the masks: the same boxes through the plain tiny SAM differ
    plain = segment_image(make_predictor(load_sam("tiny", sam_checkpoint, "cpu"), "tiny"), image, BOXES)
    assert not np.array_equal(plain, batched)


def test_wrong_family_names_file_expected_and_found(hq_checkpoint: Path, sam_checkpoint: Path):
    with pytest.raises(ValueError, match="SAM-HQ checkpoint") as e:
        load_sam("tiny", hq_checkpoint)
    assert str(hq_checkpoint) in str(e.value) and "expects a SAM (segment-anything)" in str(e.value)
    assert "'hq_tiny'" in str(e.value)
    with pytest.raises(ValueError, match="SAM-HQ checkpoint"):
        load_sam("vit_h", hq_checkpoint)  # refused before building a ViT-H
    with pytest.raises(ValueError, match="plain SAM checkpoint") as e:
        load_sam("hq_vit_b", sam_checkpoint)
    assert str(sam_checkpoint) in str(e.value) and "expects a SAM-HQ (segment-anything-hq)" in str(e.value)
    with pytest.raises(ValueError, match="plain SAM checkpoint"):
        load_sam("hq_tiny", sam_checkpoint)


def test_hq_checkpoint_beside_a_plain_config_is_refused(hq_checkpoint: Path, sam_checkpoint: Path, tmp_path: Path):
    import shutil

    shutil.copy(hq_checkpoint, tmp_path / "x.pth")
    shutil.copy(sam_checkpoint.parent / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="describes a 'tiny' model"):
        load_sam("hq_tiny", tmp_path / "x.pth")


def test_packages_install_side_by_side():
    """segment-anything and segment-anything-hq share no file and neither imports the other."""
    files = {str(f) for f in md.files("segment-anything")}
    hq_files = {str(f) for f in md.files("segment-anything-hq")}
    shared = {f for f in files & hq_files if not f.startswith("..")}
    assert not {f for f in shared if not f.endswith(("RECORD", "INSTALLER", "REQUESTED", "WHEEL"))}
    for f in md.files("segment-anything-hq"):
        if str(f).endswith(".py"):
            text = Path(f.locate()).read_text()
            assert "import segment_anything\n" not in text and "from segment_anything " not in text \
                and "from segment_anything." not in text, f


def test_timm_keeps_its_own_tiny_vit():
    import timm
    import timm.models._registry as registry

    import pipeline.models.sam_hq  # noqa: F401 - the import under test

    assert registry._model_entrypoints["tiny_vit_5m_224"].__module__.startswith("timm.")
    assert "tiny_vit_5m_224" in timm.list_models("tiny_vit*")


def test_segment_config_takes_hq_types():
    base = {"checkpoint": "x.pth", "shard_size": 4, "device": "cpu", "export_png": False, "out_dir": "o"}
    for t in ("hq_vit_h", "hq_vit_l", "hq_vit_b", "hq_tiny"):
        assert from_dict(SegmentConfig, {**base, "model_type": t}, "segment").model_type == t
    with pytest.raises(ValueError, match="model_type"):
        from_dict(SegmentConfig, {**base, "model_type": "hq_vit_x"}, "segment")
