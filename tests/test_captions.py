"""The captions stage: COCO and TokenCompose inputs, every reject reason, selection, load_rgb."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from stagerun import HANG_TIMEOUT_S

import pipeline.data.captions as coco
from pipeline.core.config import ConfigError, from_dict
from pipeline.core.images import UnsupportedModeError, load_rgb
from pipeline.core.schemas import CAPTIONS_SCHEMA, REJECTS_SCHEMA
from pipeline.data.captions import (
    CaptionsConfig,
    build_captions,
    normalize_caption,
    run_captions,
    unsafe_path_reason,
)

REPO = Path(__file__).resolve().parents[1]


def make_jpeg(path: Path, size=(32, 24), mode="RGB", color=(200, 30, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format="JPEG", quality=95)
    return path


def jpeg_bytes(size=(64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_coco(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return path


def img(id_: int, file_name: str, w=32, h=24) -> dict:
    return {"id": id_, "file_name": file_name, "width": w, "height": h}


def cfg_for(tmp_path: Path, **kw) -> CaptionsConfig:
    base = dict(format="coco", source=str(tmp_path / "ann" / "captions.json"),
                images_dir=str(tmp_path / "images"), out_dir=str(tmp_path / "out"))
    base.update(kw)
    return from_dict(CaptionsConfig, base, "captions")


ACCENTED = "Cafe\u0301  cre\u0300me\t\U0001F370 on a  table\n"  # decomposed accents, an emoji, odd spacing


@pytest.fixture
def bad_dataset(tmp_path: Path) -> Path:
    """One image or caption per failure mode, plus valid grayscale, CMYK and odd captions."""
    images = tmp_path / "images"
    make_jpeg(images / "good.jpg")
    make_jpeg(images / "gray.jpg", mode="L", color=77)
    make_jpeg(images / "cmyk.jpg", mode="CMYK", color=(255, 0, 0, 0))
    make_jpeg(images / "sub" / "nested.jpg")
    make_jpeg(images / "size.jpg", size=(40, 30))
    (images / "corrupt.jpg").write_bytes(jpeg_bytes()[:600])
    (images / "notimage.jpg").write_text("hello, not a jpeg")
    Image.new("I;16", (8, 8)).save(images / "deep.png")
    make_jpeg(tmp_path / "outside.jpg")
    write_coco(
        tmp_path / "ann" / "captions.json",
        images=[
            img(1, "good.jpg"), img(2, "missing.jpg"), img(3, "corrupt.jpg"), img(4, "gray.jpg"),
            img(5, "cmyk.jpg"), img(6, "/etc/hosts"), img(7, "../outside.jpg"), img(8, "sub/../../outside.jpg"),
            img(9, "size.jpg", w=100, h=100), img(10, "notimage.jpg"), img(11, "deep.png", 8, 8),
            img(12, "sub/nested.jpg"), img(13, "C:\\images\\x.jpg"),
        ],
        annotations=[
            {"id": 10, "image_id": 1, "caption": "A red square on a plate."},
            {"id": 11, "image_id": 1, "caption": "quickly and very slowly"},  # no nouns: kept here
            {"id": 12, "image_id": 1, "caption": "  \n\t "},
            {"id": 14, "image_id": 1, "caption": ACCENTED},
            {"id": 10, "image_id": 4, "caption": "a duplicate id"},
            {"id": 20, "image_id": 2, "caption": "a missing image"},
            {"id": 30, "image_id": 3, "caption": "a truncated jpeg"},
            {"id": 40, "image_id": 4, "caption": "a gray photo"},
            {"id": 41, "image_id": 4, "caption": "another gray photo"},
            {"id": 50, "image_id": 5, "caption": "a cmyk photo"},
            {"id": 60, "image_id": 6, "caption": "an absolute path"},
            {"id": 70, "image_id": 7, "caption": "a parent path"},
            {"id": 80, "image_id": 8, "caption": "a sneaky path"},
            {"id": 90, "image_id": 999, "caption": "an unknown image"},
            {"id": 100, "image_id": 9, "caption": "a wrong size in the json"},
            {"id": 110, "image_id": 10, "caption": "a text file"},
            {"id": 120, "image_id": 11, "caption": "sixteen bits"},
            {"id": 130, "image_id": 12, "caption": "a nested file"},
            {"id": 140, "image_id": 13, "caption": "a windows path"},
            {"id": 150, "image_id": 1, "caption": None},
        ],
    )
    return tmp_path


def test_bad_inputs_rejected_with_reasons(bad_dataset: Path, monkeypatch) -> None:
    decoded: list[str] = []
    real_probe = coco.probe
    monkeypatch.setattr(coco, "probe", lambda p: decoded.append(Path(p).name) or real_probe(p))

    cfg = cfg_for(bad_dataset, max_reject_share=1.0)  # every reason on purpose: more rejects than kept
    summary = run_captions(cfg, workers=2)
    out = bad_dataset / "out"
    table = pq.read_table(out / "captions.parquet")
    rejects = pq.read_table(out / "rejects.parquet")
    assert table.schema.equals(CAPTIONS_SCHEMA)
    assert rejects.schema.equals(REJECTS_SCHEMA)
    assert json.loads((out / "summary.json").read_text()) == summary

    reasons = dict(zip(rejects["key"].to_pylist(), rejects["reason"].to_pylist()))
    assert reasons == {
        "10": "duplicate_caption_id",  # the later id 10 (image 4); the first one is kept
        "12": "empty_caption",
        "150": "empty_caption",
        "20": "missing_image",
        "30": "corrupt_image",
        "60": "unsafe_path",
        "70": "unsafe_path",
        "80": "unsafe_path",
        "90": "unknown_image",
        "110": "corrupt_image",
        "120": "unsupported_mode",
        "140": "unsafe_path",
    }
    assert set(rejects["stage"].to_pylist()) == {"captions"}
    rows = {r["caption_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == [10, 11, 14, 40, 41, 50, 100, 130]
    assert table["caption_id"].to_pylist() == sorted(rows)
    assert rows[10]["caption"] == "A red square on a plate." and rows[10]["image_id"] == 1
    assert rows[11]["caption"] == "quickly and very slowly"
    assert rows[14]["caption"] == unicodedata.normalize("NFC", "Cafe\u0301 cre\u0300me \U0001F370 on a table")
    assert rows[14]["caption"] == "Café crème 🍰 on a table"
    assert rows[40]["mode"] == "L" and rows[50]["mode"] == "CMYK" and rows[10]["mode"] == "RGB"
    assert (rows[100]["width"], rows[100]["height"]) == (40, 30)  # the real size, not the json's 100x100
    assert rows[130]["file"] == "sub/nested.jpg"
    assert rows[130]["path"] == Path(bad_dataset, "images", "sub", "nested.jpg").as_posix()
    assert all(r["official_nouns"] is None for r in rows.values())

    assert summary["input_rows"] == 20
    assert summary["kept"] == 8 and summary["rejected"] == 12 and summary["not_selected"] == 0
    assert summary["input_rows"] == summary["kept"] + summary["rejected"] + summary["not_selected"]
    assert summary["rejected_by_reason"] == {
        "corrupt_image": 2, "duplicate_caption_id": 1, "empty_caption": 2, "missing_image": 1,
        "unknown_image": 1, "unsafe_path": 4, "unsupported_mode": 1,
    }
    assert summary["size_mismatch"] == 1
    assert set(summary["rejected_by_reason"]) <= set(coco.REASONS)
    assert summary["images"] == 5
    assert summary["modes"] == {"CMYK": 1, "L": 1, "RGB": 3}
    # every image decoded once although good.jpg has 3 kept captions; unsafe paths never opened
    assert sorted(decoded) == sorted(set(decoded))
    assert "outside.jpg" not in decoded and "hosts" not in decoded


def test_truncated_jpeg_passes_verify_but_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "images" / "t.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(jpeg_bytes((256, 256))[:3000])
    Image.open(path).verify()  # the container looks fine
    write_coco(tmp_path / "ann" / "captions.json", [img(1, "t.jpg", 256, 256)],
               [{"id": 1, "image_id": 1, "caption": "noise"}])
    res = build_captions(cfg_for(tmp_path))
    assert res.rejects["reason"].to_pylist() == ["corrupt_image"]
    assert "truncated" in res.rejects["detail"][0].as_py()


def test_load_rgb_modes(tmp_path: Path) -> None:
    gray = make_jpeg(tmp_path / "g.jpg", mode="L", color=77)
    g = load_rgb(gray)
    assert g.mode == "RGB" and g.size == (32, 24)
    assert np.abs(np.asarray(g).astype(int) - 77).max() <= 2

    # CMYK quadrants: cyan, red (M+Y), black (K), white (nothing)
    cmyk = Image.new("CMYK", (64, 64))
    for (x, y), ink in {(0, 0): (255, 0, 0, 0), (32, 0): (0, 255, 255, 0),
                        (0, 32): (0, 0, 0, 255), (32, 32): (0, 0, 0, 0)}.items():
        cmyk.paste(ink, (x, y, x + 32, y + 32))
    path = tmp_path / "c.jpg"
    cmyk.save(path, format="JPEG", quality=100)
    assert Image.open(path).mode == "CMYK"
    rgb = np.asarray(load_rgb(path)).astype(int)
    assert rgb.shape == (64, 64, 3)
    for (x, y), want in {(16, 16): (0, 255, 255), (48, 16): (255, 0, 0),
                         (16, 48): (0, 0, 0), (48, 48): (255, 255, 255)}.items():
        assert np.abs(rgb[y, x] - np.array(want)).max() <= 6, ((x, y), rgb[y, x], want)

    rgba = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(rgba)
    assert load_rgb(rgba).getpixel((0, 0)) == (10, 20, 30)
    deep = tmp_path / "d.png"
    Image.new("I;16", (4, 4)).save(deep)
    with pytest.raises(UnsupportedModeError):
        load_rgb(deep)


def test_unsafe_paths_and_normalisation() -> None:
    assert unsafe_path_reason("000000000142.jpg") is None
    assert unsafe_path_reason("train2017/000000000142.jpg") is None
    assert unsafe_path_reason("a..b.jpg") is None
    bad_names = ("", "  ", "/abs.jpg", "../x.jpg", "a/../../x.jpg", "a\\..\\x.jpg", "C:x.jpg", "dir/",
                 "a\x00.jpg", None, 5)
    for bad in bad_names:
        assert unsafe_path_reason(bad), bad
    assert normalize_caption(" a\u00a0 b\u2003c \n") == "a b c"
    assert normalize_caption(None) == ""
    with pytest.raises(ValueError):
        normalize_caption(3)


@pytest.fixture
def three_images(tmp_path: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_jpeg(tmp_path / "images" / name)
    write_coco(
        tmp_path / "ann" / "captions.json",
        [img(1, "a.jpg"), img(2, "b.jpg"), img(3, "c.jpg")],
        [
            {"id": 7, "image_id": 1, "caption": "a seven"},
            {"id": 3, "image_id": 1, "caption": "a three"},
            {"id": 5, "image_id": 2, "caption": "b five"},
            {"id": 1, "image_id": 2, "caption": " "},      # smallest id of image 2 but empty
            {"id": 9, "image_id": 3, "caption": "c nine"},
            {"id": 2, "image_id": 3, "caption": "c two"},
            {"id": 4, "image_id": 3, "caption": "c four"},
        ],
    )
    return tmp_path


def _ids(res) -> list[int]:
    return res.table["caption_id"].to_pylist()


def _identity(s: dict) -> bool:
    return s["input_rows"] == s["kept"] + s["rejected"] + s["not_selected"]


def test_select_all(three_images: Path) -> None:
    res = build_captions(cfg_for(three_images))
    assert _ids(res) == [2, 3, 4, 5, 7, 9]
    assert res.summary["not_selected"] == 0 and res.summary["rejected"] == 1 and _identity(res.summary)


def test_select_one_per_image(three_images: Path) -> None:
    res = build_captions(cfg_for(three_images, select="one_per_image"))
    assert _ids(res) == [2, 3, 5]  # image 2's id 1 is empty, so its id 5 is taken
    assert res.table["image_id"].to_pylist() == [3, 1, 2]
    s = res.summary
    assert (s["kept"], s["rejected"], s["not_selected"], s["images"]) == (3, 1, 3, 3) and _identity(s)


def test_select_first_n(three_images: Path) -> None:
    res = build_captions(cfg_for(three_images, select="first_n", first_n=3))
    assert _ids(res) == [2, 3, 4]
    assert res.summary["not_selected"] == 3 and _identity(res.summary)
    res = build_captions(cfg_for(three_images, select="first_n", first_n=100))
    assert _ids(res) == [2, 3, 4, 5, 7, 9]


def test_select_first_n_with_bad_image_keeps_fewer(three_images: Path) -> None:
    (three_images / "images" / "c.jpg").unlink()
    res = build_captions(cfg_for(three_images, select="first_n", first_n=3))
    assert _ids(res) == [3]  # ids 2 and 4 are image c's: rejected, not replaced by later ids
    s = res.summary
    assert s["rejected_by_reason"] == {"empty_caption": 1, "missing_image": 2}
    assert s["not_selected"] == 3 and _identity(s)


def test_select_ids(three_images: Path) -> None:
    ids_file = three_images / "ids.txt"
    ids_file.write_text("# chosen captions\n9\n\n3  # a comment\n1\n3\n")
    res = build_captions(cfg_for(three_images, select="ids", ids_file=str(ids_file)))
    assert _ids(res) == [3, 9]  # id 1 is asked for but stays rejected (empty caption)
    s = res.summary
    assert (s["kept"], s["rejected"], s["not_selected"]) == (2, 1, 4) and _identity(s)

    ids_file.write_text("3\n12345\n")
    with pytest.raises(ValueError, match="12345"):
        build_captions(cfg_for(three_images, select="ids", ids_file=str(ids_file)))
    ids_file.write_text("3\nthree\n")
    with pytest.raises(ValueError, match="ids.txt:2"):
        build_captions(cfg_for(three_images, select="ids", ids_file=str(ids_file)))


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        cfg_for(tmp_path, selct="all")
    with pytest.raises(ConfigError, match="first_n"):
        cfg_for(tmp_path, first_n=5)
    with pytest.raises(ConfigError, match="first_n"):
        cfg_for(tmp_path, select="first_n")
    with pytest.raises(ConfigError, match="ids_file"):
        cfg_for(tmp_path, select="ids")
    with pytest.raises(ConfigError, match="coco_captions"):
        cfg_for(tmp_path, coco_captions="x.json")
    with pytest.raises(ConfigError, match="missing required key 'source'"):
        from_dict(CaptionsConfig, {"format": "coco", "images_dir": "x"}, "captions")
    with pytest.raises(ConfigError):
        cfg_for(tmp_path, select="random")


PROFILES = [p for p in [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
            if "captions" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_params_sections_load(path: Path) -> None:
    from pipeline.core.config import load_section

    cfg = load_section("captions", CaptionsConfig, path)
    assert cfg.format in ("coco", "tokencompose")


@pytest.fixture
def tc_sample(shared_dir: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    path = shared_dir / "tokencompose-sample" / "metadata-head20.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for rec in lines:
        make_jpeg(tmp_path / "images" / rec["file_name"], size=(24, 16))
    return path, lines


def test_tokencompose_format(tc_sample, tmp_path: Path) -> None:
    path, lines = tc_sample
    cfg = from_dict(CaptionsConfig, dict(format="tokencompose", source=str(path),
                                         images_dir=str(tmp_path / "images"),
                                         out_dir=str(tmp_path / "out")), "captions")
    res = build_captions(cfg)
    rows = res.table.to_pylist()
    assert len(rows) == 20 and res.summary["rejected"] == 0 and _identity(res.summary)
    assert [r["caption_id"] for r in rows] == list(range(20))
    assert rows[0]["image_id"] == 142 and rows[0]["file"] == "000000000142.jpg"
    for row, rec in zip(rows, lines):
        assert json.loads(row["official_nouns"]) == rec["attn_list"]
        assert row["caption"] == " ".join(rec["text"].split())
        assert (row["width"], row["height"]) == (24, 16)
    assert json.loads(rows[1]["official_nouns"]) == [
        ["girl", "seg/000000000370/mask_000000000370_girl.png"], ["piece", None], ["camera", None],
        ["broccoli", "seg/000000000370/mask_000000000370_broccoli.png"]]


def test_tokencompose_bad_attn_list(tmp_path: Path) -> None:
    src = tmp_path / "metadata.jsonl"
    src.write_text(json.dumps({"file_name": "000000000001.jpg", "text": "A cat.",
                               "attn_list": [["cat", 3]]}) + "\n")
    make_jpeg(tmp_path / "images" / "000000000001.jpg")
    cfg = from_dict(CaptionsConfig, dict(format="tokencompose", source=str(src),
                                         images_dir=str(tmp_path / "images"),
                                         out_dir=str(tmp_path / "out")), "captions")
    with pytest.raises(ValueError, match=r"metadata.jsonl:1: 'attn_list' must be a list of \[noun, mask path or null\]"):
        build_captions(cfg)


def test_tokencompose_with_coco_ids(tc_sample, tmp_path: Path) -> None:
    path, lines = tc_sample
    images, anns = [], []
    for i, rec in enumerate(lines):
        image_id = int(rec["file_name"][:-4])
        images.append(img(image_id, rec["file_name"], 24, 16))
        anns.append({"id": 1000 + i, "image_id": image_id, "caption": "another caption of it"})
        anns.append({"id": 5000 + i, "image_id": image_id, "caption": "  " + rec["text"].replace(" ", "  ")})
    captions_json = write_coco(tmp_path / "ann" / "captions.json", images, anns)
    edited = tmp_path / "metadata.jsonl"
    recs = [dict(r) for r in lines]
    recs[3]["text"] = "a caption that COCO does not have"
    edited.write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n")

    cfg = from_dict(CaptionsConfig, dict(format="tokencompose", source=str(edited),
                                         coco_captions=str(captions_json), images_dir=str(tmp_path / "images"),
                                         out_dir=str(tmp_path / "out")), "captions")
    res = build_captions(cfg)
    assert _ids(res) == [5000 + i for i in range(20) if i != 3]
    assert res.rejects.to_pylist() == [{"stage": "captions", "key": "line:3", "reason": "unmatched_caption",
                                        "detail": res.rejects["detail"][0].as_py()}]
    assert _identity(res.summary) and res.summary["input_rows"] == 20

    write_coco(captions_json, images, [a for a in anns if a["id"] < 5000])
    with pytest.raises(ValueError, match="coco_captions: null"):
        build_captions(cfg)


def test_coco_mini(coco_mini: Path, tmp_path: Path) -> None:
    cfg = from_dict(CaptionsConfig, dict(format="coco",
                                         source=str(coco_mini / "annotations" / "captions_train2017.json"),
                                         images_dir=str(coco_mini / "train2017"),
                                         out_dir=str(tmp_path / "out")), "captions")
    summary = run_captions(cfg)
    counts = (summary["input_rows"], summary["kept"], summary["rejected"], summary["not_selected"])
    assert counts == (400, 400, 0, 0)
    assert summary["images"] == 80 and summary["images_decoded"] == 80 and summary["size_mismatch"] == 0
    table = pq.read_table(tmp_path / "out" / "captions.parquet")
    assert table.num_rows == 400 and len(set(table["image_id"].to_pylist())) == 80

    one = build_captions(from_dict(CaptionsConfig, {**cfg.__dict__, "select": "one_per_image"}, "captions"))
    assert one.summary["kept"] == 80 and one.summary["not_selected"] == 320


def coco_mini_dataset(coco_mini: Path, **over) -> dict:
    """Section ``dataset`` for coco-mini (its captions also serve as the FID split)."""
    ann = coco_mini / "annotations"
    return {"format": "coco", "captions": str(ann / "captions_train2017.json"),
            "images_dir": str(coco_mini / "train2017"), "instances": str(ann / "instances_train2017.json"),
            "fid_captions": str(ann / "captions_train2017.json"), "fid_images_dir": str(coco_mini / "train2017"),
            **over}


def test_stage_script(coco_mini: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    out = tmp_path / "out"
    params.write_text(yaml.safe_dump({
        "dataset": coco_mini_dataset(coco_mini),
        "captions": {"select": "first_n", "first_n": 10, "ids_file": None, "out_dir": str(out)},
    }))
    proc = subprocess.run([sys.executable, "-m", "stages.captions", "--params", str(params)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["kept"], summary["not_selected"]) == (10, 390)
    assert pq.read_table(out / "captions.parquet").num_rows == 10
    assert pq.read_table(out / "rejects.parquet").num_rows == 0
    assert "decode images" in proc.stderr  # the progress bar

    bogus = {"out_dir": "x", "bogus": 1}
    params.write_text(yaml.safe_dump({"dataset": coco_mini_dataset(coco_mini), "captions": bogus}))
    proc = subprocess.run([sys.executable, "-m", "stages.captions", "--params", str(params)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode != 0 and "bogus" in proc.stderr


def test_clip_best_keeps_the_highest_scoring_caption_per_image(bad_dataset: Path) -> None:
    """A scorer that likes one word: per image the best caption, ties by caption id, an image
    the scorer cannot read rejected as clip_failed, the chosen score in the table."""
    from pipeline.data.caption_choice import best_caption

    assert best_caption([1.0, 3.0, 3.0], [5, 9, 7]) == 2           # tie: the smaller caption id
    with pytest.raises(ValueError):
        best_caption([], [])

    def score(path: str, captions):
        if path.endswith("cmyk.jpg"):
            raise OSError("cannot read")
        return [float(c.count("gray") + c.count("square") * 2) for c in captions]

    cfg = cfg_for(bad_dataset, select="clip_best", clip_model="unused-here", max_reject_share=1.0)
    result = build_captions(cfg, workers=1, scorer=score)
    rows = {r["image_id"]: (r["caption_id"], r["clip_score"]) for r in result.table.to_pylist()}
    assert rows[1] == (10, 2.0)                                     # "A red square ..." among 10, 11, 14
    assert rows[4] == (40, 1.0)                                     # "a gray photo" ties "another gray photo"
    assert 5 not in rows and result.summary["rejected_by_reason"]["clip_failed"] == 1
    s = result.summary
    assert s["input_rows"] == s["kept"] + s["rejected"] + s["not_selected"] and s["not_selected"] == 3
    assert s["clip_model"] == "unused-here" and len({r["image_id"] for r in result.table.to_pylist()}) == s["kept"]


def test_clip_best_with_a_tiny_clip_and_clear_errors(tmp_path: Path) -> None:
    from pipeline.models.clip_model import build_tiny_clip
    from pipeline.models.clip_tokenizer import build_clip_tokenizer

    make_jpeg(tmp_path / "images" / "a.jpg", size=(40, 30))
    write_coco(tmp_path / "ann" / "captions.json", [img(1, "a.jpg", 40, 30)],
               [{"id": 3, "image_id": 1, "caption": "a red photo"}, {"id": 2, "image_id": 1, "caption": "a dog " * 60}])
    clip = build_tiny_clip(tmp_path / "clip", 0, build_clip_tokenizer(tmp_path / "tok"))
    again = build_tiny_clip(tmp_path / "again", 0, tmp_path / "tok")  # seeded: the same bytes
    assert (clip / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    result = build_captions(cfg_for(tmp_path, select="clip_best", clip_model=str(clip), device="cpu"), workers=1)
    (row,) = result.table.to_pylist()
    assert row["caption_id"] in (2, 3) and isinstance(row["clip_score"], float)  # a 60-word caption is truncated
    with pytest.raises(ConfigError, match="does not load as a CLIP model"):
        build_captions(cfg_for(tmp_path, select="clip_best", clip_model=str(tmp_path / "tok"), device="cpu"))
    with pytest.raises(ConfigError, match="clip_model is required"):
        cfg_for(tmp_path, select="clip_best")
    with pytest.raises(ConfigError, match="clip_model is set"):
        cfg_for(tmp_path, clip_model=str(clip))
