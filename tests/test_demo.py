"""The demo dataset generator: COCO validity, exact masks, captions, determinism, the stage."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from stagerun import HANG_TIMEOUT_S

from pipeline.core.config import ConfigError, from_dict, load_section
from pipeline.demo import (
    CAPTIONS_FILE,
    INSTANCES_FILE,
    KINDS,
    OBJECTS_FILE,
    DemoDataConfig,
    generate_demo,
    mask_to_polygons,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT = dict(seed=0, num_images=48, min_size=224, max_size=320, captions_per_image=2)
COMPOUNDS = ("teddy bear", "traffic light", "stop sign", "fire hydrant", "wine glass")


def _cfg(out: Path, **kw: object) -> DemoDataConfig:
    return DemoDataConfig(**{**DEFAULT, "out_dir": str(out), **kw})  # type: ignore[arg-type]


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo(_cfg(out))


@pytest.fixture(scope="module")
def coco(demo: tuple[Path, dict]) -> COCO:
    return COCO(str(demo[0] / INSTANCES_FILE))


@pytest.fixture(scope="module")
def objects(demo: tuple[Path, dict]) -> dict:
    return json.loads((demo[0] / OBJECTS_FILE).read_text())


def test_params_section_loads() -> None:
    cfg = load_section("demo_data", DemoDataConfig, REPO / "params.yaml")
    assert cfg.num_images >= 48 and cfg.min_size <= cfg.max_size


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_images": 0}, "num_images"),
        ({"min_size": 400, "max_size": 300}, "min_size"),
        ({"min_size": 16, "max_size": 32}, "min_size"),
        ({"captions_per_image": 0}, "captions_per_image"),
        ({"captions_per_image": 11}, "captions_per_image"),
        ({"seed": -1}, "seed"),
        ({"out_dir": ""}, "out_dir"),
        ({"num_images": "many"}, "num_images"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_config_errors(change: dict, message: str) -> None:
    data = {**DEFAULT, "out_dir": "data/demo", **change}
    with pytest.raises(ConfigError, match=message):
        from_dict(DemoDataConfig, data, "demo_data")


def test_images_written(demo: tuple[Path, dict]) -> None:
    out, summary = demo
    captions = json.loads((out / CAPTIONS_FILE).read_text())
    files = sorted((out / "images").iterdir())
    assert summary["images"] == len(files) == len(captions["images"]) == 48
    for entry in captions["images"]:
        assert entry["file_name"] == f"{entry['id']:012d}.jpg"
        assert set(entry) == {"id", "file_name", "width", "height", "license"}
        with Image.open(out / "images" / entry["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (entry["width"], entry["height"])
        assert 224 <= entry["width"] <= 320 and 224 <= entry["height"] <= 320
    sizes = {(e["width"], e["height"]) for e in captions["images"]}
    assert len(sizes) > 10  # sides drawn per image


def test_coco_files_load(demo: tuple[Path, dict], coco: COCO) -> None:
    out, summary = demo
    caps = COCO(str(out / CAPTIONS_FILE))
    assert {"info", "licenses", "images", "annotations"} <= set(caps.dataset)
    assert len(caps.dataset["annotations"]) == summary["captions"] == 96
    for image_id in caps.getImgIds():
        texts = [a["caption"] for a in caps.imgToAnns[image_id]]
        assert len(texts) == 2 and texts[0] != texts[1]
    assert {"info", "licenses", "images", "annotations", "categories"} <= set(coco.dataset)
    cats = {c["name"]: (c["id"], c["supercategory"]) for c in coco.loadCats(coco.getCatIds())}
    assert cats["teddy bear"] == (88, "indoor")
    assert cats["traffic light"] == (10, "outdoor")
    assert cats["stop sign"] == (13, "outdoor")
    assert cats["fire hydrant"] == (11, "outdoor")
    assert cats["wine glass"] == (46, "kitchen")
    assert cats["sports ball"] == (37, "sports")
    assert len(cats) >= 10


def test_masks_exact_and_disjoint(coco: COCO) -> None:
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        union = np.zeros((info["height"], info["width"]), bool)
        for ann in coco.imgToAnns[image_id]:
            m = coco.annToMask(ann).astype(bool)
            assert m.shape == union.shape
            assert int(m.sum()) == ann["area"] > 0
            ys, xs = np.nonzero(m)
            bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [float(v) for v in bbox]
            # visible masks: a later object's pixels were taken from the earlier ones
            assert not (union & m).any(), f"annotation {ann['id']} overlaps another"
            union |= m


def test_segmentation_formats(coco: COCO) -> None:
    anns = coco.dataset["annotations"]
    polygons = [a for a in anns if isinstance(a["segmentation"], list)]
    crowds = [a for a in anns if a["iscrowd"]]
    compressed = [a for a in anns if isinstance(a["segmentation"], dict)
                  and isinstance(a["segmentation"]["counts"], str)]
    assert len(polygons) > len(anns) / 2
    assert crowds and all(isinstance(a["segmentation"]["counts"], list) for a in crowds)
    assert compressed and not any(a["iscrowd"] for a in compressed)
    for a in compressed[:10]:
        h, w = a["segmentation"]["size"]
        assert (h, w) == (coco.imgs[a["image_id"]]["height"], coco.imgs[a["image_id"]]["width"])
        rle = {"size": [h, w], "counts": a["segmentation"]["counts"].encode()}
        assert int(mask_utils.area(rle)) == a["area"]


def test_content(demo: tuple[Path, dict], coco: COCO, objects: dict) -> None:
    _, summary = demo
    assert len(KINDS) >= 10
    assert len(summary["per_category"]) >= 8
    assert summary["occluded_annotations"] > 0
    for record in objects["images"]:
        kinds = {o["category"] for o in record["objects"]}
        assert 2 <= len(kinds) <= 4, record
        anns = {a["id"] for a in coco.imgToAnns[record["image_id"]]}
        assert anns == {i for o in record["objects"] for i in o["annotation_ids"]}
    assert any(o["count"] >= 2 for r in objects["images"] for o in r["objects"])
    text = " ".join(c["caption"] for c in objects["captions"]).lower()
    assert sum(word in text for word in COMPOUNDS) >= 4
    words = {m["word"] for c in objects["captions"] for m in c["mentions"]}
    plurals = {k.plural for k in KINDS.values()}
    assert len(words & plurals) >= 5
    assert "ball" in words or "balls" in words
    assert any(w in text for w in ("two ", "three ", "a pair of", "a few", "some "))


def test_mentions(demo: tuple[Path, dict], coco: COCO, objects: dict) -> None:
    captions = json.loads((demo[0] / CAPTIONS_FILE).read_text())["annotations"]
    texts = {a["id"]: a["caption"] for a in captions}
    names = {k.category: k for k in KINDS.values()}
    all_named = 0
    assert len(objects["captions"]) == len(texts)
    for record in objects["captions"]:
        assert texts[record["caption_id"]] == record["caption"]
        assert record["mentions"], record
        present = {coco.cats[a["category_id"]]["name"]
                   for a in coco.imgToAnns[record["image_id"]]}
        for m in record["mentions"]:
            assert record["caption"][m["start"]:m["end"]] == m["word"]
            kind = names[m["category"]]
            assert m["word"] in (kind.singular, kind.plural)
            assert m["category"] in present and m["category_id"] == kind.coco_id
        all_named += {m["category"] for m in record["mentions"]} == present
    assert all_named >= 0.7 * len(objects["captions"])


def test_deterministic(demo: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = demo
    again = generate_demo(_cfg(tmp_path / "again"))
    assert {k: v for k, v in again.items() if k != "out_dir"} == \
        {k: v for k, v in summary.items() if k != "out_dir"}
    assert _digest(tmp_path / "again") == _digest(out)
    other = generate_demo(_cfg(tmp_path / "other", seed=1, num_images=2))
    assert other["images"] == 2
    first = (tmp_path / "other" / "images" / "000000000001.jpg").read_bytes()
    assert first != (out / "images" / "000000000001.jpg").read_bytes()


def test_mask_to_polygons_roundtrip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(4, 30, 2))
        m = rng.random((h, w)) < 0.5
        polys = mask_to_polygons(m)
        if polys is None:
            continue
        if not polys:
            assert not m.any()
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False
    assert mask_to_polygons(ring) is None
    full = np.ones((3, 4), bool)
    assert mask_to_polygons(full) == [[0.0, 0.0, 4.0, 0.0, 4.0, 3.0, 0.0, 3.0]]


def test_stage_script(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    stale = out / "images" / "000000000099.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"demo_data": {**DEFAULT, "num_images": 3, "out_dir": str(out)}}))
    proc = subprocess.run([sys.executable, "-m", "stages.demo_data", "--params", str(params)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"{i:012d}.jpg" for i in (1, 2, 3)]
    for name in (CAPTIONS_FILE, INSTANCES_FILE, OBJECTS_FILE):
        assert json.loads((out / name).read_text())
    assert "wrote 3 images" in proc.stderr
