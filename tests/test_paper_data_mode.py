"""The paper's data mode on real images: rehearsal-sd14's data stages on the 3 lines of the official
training list whose images are in coco-mini, with tiny models in place of the rehearsal ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from stagerun import assert_readable_metrics, run_stage

from pipeline.core.official_list import OFFICIAL
from pipeline.core.tables import read_table
from pipeline.data.phrase_boxes import MATCH_STEPS
from pipeline.models.sam import build_tiny_sam
from stages.profiles import resolve

REPO = Path(__file__).resolve().parents[1]

#: what may change against rehearsal-sd14 here: model locations (tiny models), shared paths made
#: absolute, and the image size (the tiny Grounding DINO at 320 px; the data mode is unchanged)
TINY = {
    "ground": {"config": "models/tiny/groundingdino/config.py", "checkpoint": "models/tiny/groundingdino/groundingdino_tiny.pth",
               "text_encoder": "models/tiny/bert", "image_size": 320, "max_size": 533},
    "segment": {"model_type": "hq_tiny", "checkpoint": "models/tiny/sam-hq/sam_hq_tiny.pth"},
}


def _summary(ws: Path, stage: str) -> dict:
    return json.loads((ws / "data" / stage / "summary.json").read_text())


@pytest.mark.slow
def test_rehearsal_data_stages_in_the_paper_data_mode(shared_dir: Path, workspace: Path, tmp_path: Path):
    params = resolve(REPO / "configs" / "rehearsal-sd14.yaml")
    params["dataset"] = {k: v.replace("../shared", str(shared_dir)) if isinstance(v, str) else v
                         for k, v in params["dataset"].items()}
    assert (params["dataset"]["format"], params["nouns"]["source"], params["ground"]["phrase_rule"]) == (
        "tokencompose", "official", "official")
    for section, values in TINY.items():
        params[section].update(values)
    ws = tmp_path / "paper"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(workspace / "models", ws / "models")
    build_tiny_sam(ws / "models/tiny/sam-hq", seed=0, hq=True)
    for stage in ("captions", "nouns", "reference_masks", "ground", "segment"):
        run_stage(ws, f"stages.{stage}")

    captions = _summary(ws, "captions")
    assert captions["kept"] == 3 and captions["official_list"]["captions"] == {
        "here": 3, "official": OFFICIAL["captions"], "ratio": round(3 / OFFICIAL["captions"], 4)}
    nouns = _summary(ws, "nouns")
    assert nouns["rejected_nouns"] == {"null_mask": 1} and nouns["nouns"] == 11  # "bear" of the teddy bear line
    assert nouns["official_list"]["nouns"]["here"] == 12 and nouns["official_list"]["masked_nouns"]["here"] == 11

    ground = _summary(ws, "ground")
    boxes = read_table(ws / "data/ground/boxes").to_pylist()
    found = [b for b in boxes if b["found"]]
    assert all(b["match"] in MATCH_STEPS for b in found)
    matches = ground["box_matches"]
    assert sum(matches[s] for s in MATCH_STEPS) == ground["boxes"] == len(found)
    rejects = read_table(ws / "data/ground/rejects.parquet").column("reason").to_pylist()
    assert matches["none"] + matches["replaced"] == len(rejects)

    segment = _summary(ws, "segment")
    masks = read_table(ws / "data/segment/masks")
    assert segment["official_list"]["masked_nouns"]["here"] == masks.num_rows == len({b["noun_id"] for b in found})
    for stage, summary in (("captions", captions), ("nouns", nouns), ("ground", ground), ("segment", segment)):
        assert_readable_metrics(summary, stage)
