"""Resume keys cover every input's bytes: one changed image or weight byte is another run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.code import code_digest, code_files
from pipeline.core.shards import inputs_digest
from pipeline.core.tables import write_table
from pipeline.data.ground import GroundConfig, ground_fingerprint
from pipeline.data.segment import SegmentConfig, segment_fingerprint
from pipeline.train.config import TrainConfig
from pipeline.train.runs import RunIdentity
from pipeline.train.setup import data_digest


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    images = []
    for k in range(3):
        image = tmp_path / "images" / f"{k}.jpg"
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(bytes([k]) * 100)
        images.append(image)
    captions = tmp_path / "captions.parquet"
    write_table(pa.table({"image_id": [0, 1, 2], "path": [str(p) for p in images]}), captions)
    nouns = tmp_path / "nouns.parquet"
    write_table(pa.table({"noun_id": [1]}), nouns)
    masks = tmp_path / "masks.parquet"
    write_table(pa.table({"noun_id": [1]}), masks)
    weights = tmp_path / "weights"
    for part in ("tokenizer", "scheduler", "text_encoder", "vae", "unet"):  # an SD pipeline folder
        (weights / "sd" / part).mkdir(parents=True)
        (weights / "sd" / part / "config.json").write_text("{}")
    (weights / "sd" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet" * 50)
    (weights / "config.py").write_text("modelname = 'groundingdino'\n")
    (weights / "groundingdino.pth").write_bytes(b"dino" * 50)
    (weights / "sam.pth").write_bytes(b"sam" * 50)
    (weights / "config.json").write_text("{}")
    (weights / "bert").mkdir()
    (weights / "bert" / "model.safetensors").write_bytes(b"bert" * 50)
    return {"images": images, "captions": captions, "nouns": nouns, "masks": masks, "weights": weights}


def _keys(inputs: dict) -> dict[str, str]:
    w = inputs["weights"]
    images = [str(p) for p in inputs["images"]]
    ground = GroundConfig(config=str(w / "config.py"), checkpoint=str(w / "groundingdino.pth"),
                          text_encoder=str(w / "bert"))
    segment = SegmentConfig(model_type="tiny", checkpoint=str(w / "sam.pth"), shard_size=4, device="cpu",
                            export_png=False, out_dir="x")
    train = TrainConfig(pretrained=str(w / "sd"), masks=str(inputs["masks"]))
    return {
        "ground": ground_fingerprint(ground, inputs["captions"], inputs["nouns"], images),
        "segment": segment_fingerprint(segment, inputs["captions"], inputs["nouns"], images),
        "train": RunIdentity.of(train, data_digest(train, inputs["captions"], inputs["nouns"]), "code").key,
    }


def test_same_inputs_same_keys(inputs):
    assert _keys(inputs) == _keys(inputs)


def test_one_image_byte_changes_every_key(inputs):
    before = _keys(inputs)
    _flip_last_byte(inputs["images"][1])
    after = _keys(inputs)
    assert all(after[k] != before[k] for k in before), (before, after)


@pytest.mark.parametrize("stage, weight", [
    ("ground", "groundingdino.pth"),
    ("ground", "bert/model.safetensors"),
    ("segment", "sam.pth"),
    ("segment", "config.json"),
    ("train", "sd/unet/diffusion_pytorch_model.safetensors"),
])
def test_one_weight_byte_changes_its_stage_key(inputs, stage, weight):
    before = _keys(inputs)
    _flip_last_byte(inputs["weights"] / weight)
    assert _keys(inputs)[stage] != before[stage]


def test_a_hub_id_is_keyed_by_its_name(tmp_path):
    assert inputs_digest("CompVis/stable-diffusion-v1-4") != inputs_digest("CompVis/stable-diffusion-v1-5")
    missing = tmp_path / "absent.pth"
    before = inputs_digest(missing)
    missing.write_bytes(b"x")
    assert inputs_digest(missing) != before


def test_code_digest_covers_the_mask_resize_of_training():
    """The resize of the supervision targets is part of training's code (it once was not)."""
    names = {p.name for p in code_files("pipeline.train.loop")}
    assert {"masks.py", "losses.py", "attention.py", "dataset.py", "stable_diffusion.py"} <= names
    assert len(code_digest("pipeline.train.loop")) == 16
