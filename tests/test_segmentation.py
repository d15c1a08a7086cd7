"""Tiny SAM build and loading, batched box -> mask decoding, encoder call counting."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from pipeline.core.config import ConfigError, from_dict, load_section
from pipeline.data.sam_masks import count_encoder_calls, segment_image, union_masks
from pipeline.data.segment import SegmentConfig
from pipeline.models.sam import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    SamArchitecture,
    build_tiny_sam,
    load_sam,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_tiny_sam(tmp_path_factory.mktemp("sam"), seed=0)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint: Path) -> SamPredictor:
    return SamPredictor(load_sam("tiny", tiny_checkpoint, "cpu"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """(H, W, 3) uint8: a bright rectangle and a disc on a dark gradient, not square."""
    h, w = 150, 210
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 40)], axis=-1).astype(np.uint8)
    img[20:90, 30:120] = (230, 200, 30)
    img[((yy - 100) ** 2 + (xx - 160) ** 2) < 30**2] = (20, 90, 220)
    return img


BOXES = np.array([[30, 20, 120, 90], [130, 70, 190, 130], [0, 0, 210, 150]], dtype=np.float32)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_tiny_sam_build_is_deterministic(tmp_path: Path, tiny_checkpoint: Path):
    rng_before = torch.random.get_rng_state()
    again = build_tiny_sam(tmp_path / "a", seed=0)
    other = build_tiny_sam(tmp_path / "b", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert again.name == CHECKPOINT_NAME
    first, second, third = _state(tiny_checkpoint), _state(again), _state(other)
    assert first.keys() == second.keys() == third.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)
    config = json.loads((again.parent / CONFIG_NAME).read_text())
    assert config["model_type"] == "tiny" and config["seed"] == 0
    assert config["image_size"] == SamArchitecture().image_size
    n_params = sum(v.numel() for v in first.values())
    assert n_params < 1_000_000
    # position embeddings are not left at their zero init
    assert first["image_encoder.pos_embed"].abs().sum() > 0


def test_load_sam_loads_the_saved_weights(tiny_checkpoint: Path):
    sam = load_sam("tiny", tiny_checkpoint, "auto")
    assert sam.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    sam = load_sam("tiny", tiny_checkpoint, torch.device("cpu"))
    assert not sam.training
    assert sam.device == torch.device("cpu")
    saved = _state(tiny_checkpoint)
    loaded = sam.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_load_sam_is_strict(tiny_checkpoint: Path, tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_bytes((tiny_checkpoint.parent / CONFIG_NAME).read_bytes())
    state = _state(tiny_checkpoint)
    extra = dict(state, unexpected=torch.zeros(1))
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"(?s)does not match.*Unexpected key"):
        load_sam("tiny", tmp_path / "extra.pth", "cpu")
    missing = dict(state)
    missing.pop("mask_decoder.iou_token.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="Missing key"):
        load_sam("tiny", tmp_path / "missing.pth", "cpu")


def test_load_sam_official_architecture_rejects_tiny_weights(tiny_checkpoint: Path):
    with pytest.raises(ValueError, match=r"expects a SAM vit_b \(embed dim 768, 12 blocks\); the file holds \(embed dim 64, 2 blocks\)"):
        load_sam("vit_b", tiny_checkpoint, "cpu")


def test_a_vit_b_file_given_as_vit_h_is_named_before_anything_is_built(tmp_path: Path, monkeypatch):
    """The identifying shapes of sam_vit_b_01ec64.pth, given as vit_h: the error names file, expected, found."""
    import pipeline.models.sam as sam_module

    state = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(768) for i in range(12)})
    path = tmp_path / "sam_vit_h_4b8939.pth"
    torch.save(state, path)
    monkeypatch.setattr(sam_module, "build_architecture", lambda *a: pytest.fail("built a model for a wrong file"))
    with pytest.raises(ValueError) as err:
        load_sam("vit_h", path, "cpu")
    msg = str(err.value)
    assert str(path) in msg and "expects a SAM vit_h (embed dim 1280, 32 blocks)" in msg
    assert "the file holds vit_b (embed dim 768, 12 blocks)" in msg


def test_a_tiny_sam_of_another_shape_is_refused(tiny_checkpoint: Path, tmp_path: Path):
    from pipeline.models.sam import SamArchitecture, build_tiny_sam

    other = build_tiny_sam(tmp_path / "other", seed=0, arch=SamArchitecture(encoder_embed_dim=32, encoder_depth=3))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / CONFIG_NAME).write_bytes((tiny_checkpoint.parent / CONFIG_NAME).read_bytes())
    (tmp_path / "mixed" / "sam_tiny.pth").write_bytes(Path(other).read_bytes())
    with pytest.raises(ValueError, match=r"expects a SAM tiny \(embed dim 64, 2 blocks\).*the file holds \(embed dim 32, 3 blocks\)"):
        load_sam("tiny", tmp_path / "mixed" / "sam_tiny.pth", "cpu")


class _NotATensor:
    pass


def test_load_sam_refuses_pickled_objects(tmp_path: Path, tiny_checkpoint: Path):
    (tmp_path / CONFIG_NAME).write_bytes((tiny_checkpoint.parent / CONFIG_NAME).read_bytes())
    torch.save({"payload": _NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_sam("tiny", tmp_path / "evil.pth", "cpu")


def test_load_sam_errors(tmp_path: Path, tiny_checkpoint: Path):
    with pytest.raises(FileNotFoundError, match="SAM checkpoint not found"):
        load_sam("vit_h", tmp_path / "sam_vit_h_4b8939.pth", "cpu")
    with pytest.raises(ValueError, match="unknown SAM model_type"):
        load_sam("vit_x", tiny_checkpoint, "cpu")
    with pytest.raises(ValueError, match="device"):
        load_sam("tiny", tiny_checkpoint, "gpu0")
    lonely = tmp_path / "lonely" / CHECKPOINT_NAME
    lonely.parent.mkdir()
    lonely.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_sam("tiny", lonely, "cpu")


def test_segment_image_one_encoder_call(predictor: SamPredictor, image: np.ndarray):
    with count_encoder_calls(predictor.model) as counter:
        masks = segment_image(predictor, image, BOXES)
    assert counter.calls == 1
    assert masks.shape == (3, *image.shape[:2]) and masks.dtype == np.bool_
    assert masks.any() and not predictor.is_image_set
    # the hook is removed on exit
    segment_image(predictor, image, BOXES[:1])
    assert counter.calls == 1


def test_segment_image_no_boxes_runs_nothing(predictor: SamPredictor, image: np.ndarray):
    with count_encoder_calls(predictor.model) as counter:
        masks = segment_image(predictor, image, np.zeros((0, 4), dtype=np.float32))
    assert counter.calls == 0
    assert masks.shape == (0, *image.shape[:2]) and masks.dtype == np.bool_


def test_batched_decode_equals_per_box(predictor: SamPredictor, image: np.ndarray):
    batched = segment_image(predictor, image, BOXES)
    for i, box in enumerate(BOXES):
        single = segment_image(predictor, image, box[None])
        np.testing.assert_array_equal(single[0], batched[i], err_msg=f"box {i}")
    # order of boxes does not change a box's mask
    np.testing.assert_array_equal(segment_image(predictor, image, BOXES[::-1]), batched[::-1])


def test_segment_image_accepts_strided_views(predictor: SamPredictor, image: np.ndarray):
    flipped = image[:, ::-1]  # negative strides, as from a BGR -> RGB flip
    expected = segment_image(predictor, np.ascontiguousarray(flipped), BOXES[::-1].copy())
    np.testing.assert_array_equal(segment_image(predictor, flipped, BOXES[::-1]), expected)


def test_segment_image_rejects_bad_inputs(predictor: SamPredictor, image: np.ndarray):
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        segment_image(predictor, image, BOXES[0])
    with pytest.raises(ValueError, match="x1 < x0"):
        segment_image(predictor, image, np.array([[50, 10, 20, 40]], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        segment_image(predictor, image, np.array([[0, 0, np.nan, 4]], dtype=np.float32))
    with pytest.raises(TypeError, match="uint8"):
        segment_image(predictor, image.astype(np.float32), BOXES)
    with pytest.raises(ValueError, match="RGB"):
        segment_image(predictor, image[..., 0], BOXES)


def test_union_masks():
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[2, 2, 2] = True
    a, b, c = union_masks(masks, [[0, 2], [1], [0, 1, 2]])
    assert a.shape == (4, 5) and a.dtype == np.bool_
    assert a.sum() == 2 and a[0, 0] and a[2, 2]
    np.testing.assert_array_equal(b, masks[1])
    assert c.sum() == 3
    assert union_masks(masks, []) == []
    with pytest.raises(ValueError, match="no boxes"):
        union_masks(masks, [[]])
    with pytest.raises(IndexError):
        union_masks(masks, [[3]])
    with pytest.raises(ValueError, match="bool"):
        union_masks(masks.astype(np.uint8), [[0]])


def test_segment_config_from_params():
    cfg = load_section("segment", SegmentConfig, REPO / "params.yaml")
    assert cfg.model_type in ("vit_h", "vit_l", "vit_b", "tiny")
    good = {
        "model_type": "vit_h",
        "checkpoint": "models/sam/sam_vit_h_4b8939.pth",
        "shard_size": 16,
        "device": "auto",
        "export_png": True,
        "out_dir": "data/segment",
    }
    assert from_dict(SegmentConfig, good, "segment").model_type == "vit_h"
    with pytest.raises(ConfigError):
        from_dict(SegmentConfig, dict(good, model_type="vit_g"), "segment")
    with pytest.raises(ConfigError):
        from_dict(SegmentConfig, dict(good, typo=1), "segment")
    with pytest.raises(ValueError, match="shard_size"):
        from_dict(SegmentConfig, dict(good, shard_size=0), "segment")
