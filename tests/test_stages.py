"""The data stages as a user runs them: real scripts, tiny models, a small demo workspace.

Covers the ground/segment contract (every noun is boxed, unboxed or rejected; every boxed
noun gets a mask), resume after ``kill -9``, two processes against one, the overlay command
and the rejection of an image that disappears between stages.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from stagerun import ENV, HANG_TIMEOUT_S, clone_workspace, run_stage, shards_equal, small_params

from pipeline.core.masks import decode_rle
from pipeline.core.tables import read_table


@pytest.fixture(scope="session")
def grounded(workspace: Path) -> Path:
    run_stage(workspace, "stages.ground")
    run_stage(workspace, "stages.segment")
    return workspace


def test_every_noun_is_boxed_unboxed_or_rejected(grounded: Path):
    nouns = read_table(grounded / "data/nouns/nouns.parquet").to_pylist()
    boxes = read_table(grounded / "data/ground/boxes").to_pylist()
    rejected = pq.read_table(grounded / "data/ground/rejects.parquet").num_rows
    found = {b["noun_id"] for b in boxes if b["found"]}
    missing = {b["noun_id"] for b in boxes if not b["found"]}
    assert not found & missing
    assert len(nouns) == len(found) + len(missing) + rejected
    assert found, "the tiny Grounding DINO found no box at all; the demo would be empty"
    captions = {r["image_id"]: r for r in read_table(grounded / "data/captions/captions.parquet").to_pylist()}
    for b in boxes:
        if b["found"]:
            img = captions[b["image_id"]]
            assert 0 <= b["x0"] <= b["x1"] <= img["width"] and 0 <= b["y0"] <= b["y1"] <= img["height"]
            assert b["score"] > 0.25


def test_every_boxed_noun_has_a_mask_of_its_image_size(grounded: Path):
    boxes = read_table(grounded / "data/ground/boxes").to_pylist()
    masks = read_table(grounded / "data/segment/masks").to_pylist()
    captions = {r["image_id"]: r for r in read_table(grounded / "data/captions/captions.parquet").to_pylist()}
    assert {m["noun_id"] for m in masks} == {b["noun_id"] for b in boxes if b["found"]}
    n_boxes = {}
    for b in boxes:
        if b["found"]:
            n_boxes[b["noun_id"]] = n_boxes.get(b["noun_id"], 0) + 1
    for m in masks[:50]:
        mask = decode_rle(m["rle"], m["height"], m["width"])
        assert mask.shape == (captions[m["image_id"]]["height"], captions[m["image_id"]]["width"])
        assert int(mask.sum()) == m["area"]
        assert m["n_boxes"] == n_boxes[m["noun_id"]]
    pngs = list((grounded / "data/segment/png").rglob("*.png"))
    assert len(pngs) == len(masks)
    overlays = list((grounded / "data/segment/overlays").glob("*.png"))
    assert len(overlays) == len({b["image_id"] for b in boxes})


def test_noun_mask_is_union_of_its_box_masks(grounded: Path):
    """Two occurrences of one phrase in an image share boxes, so they share the mask."""
    masks = read_table(grounded / "data/segment/masks").to_pylist()
    by_key: dict = {}
    for m in masks:
        by_key.setdefault((m["image_id"], m["text"].lower()), []).append(m["rle"])
    shared = [v for v in by_key.values() if len(v) > 1]
    assert shared, "the demo should mention some object twice in one image"
    for rles in shared:
        assert len(set(rles)) == 1


@pytest.mark.slow
def test_masks_and_boxes_are_measured_against_the_reference(grounded: Path):
    """segment reports IoU with the human masks, ground box recall; the counts add up."""
    import csv
    import json

    ref = read_table(grounded / "data/reference_masks/masks").to_pylist()
    instances = read_table(grounded / "data/reference_masks/instances.parquet").to_pylist()
    assert ref and {r["noun_id"] for r in instances} == {r["noun_id"] for r in ref}
    masks = {m["noun_id"] for m in read_table(grounded / "data/segment/masks").to_pylist()}
    q = json.loads((grounded / "data/segment/summary.json").read_text())["mask_quality"]
    assert q["reference_nouns"] == len(ref)
    assert q["reference_nouns_compared"] == len({r["noun_id"] for r in ref} & masks)
    assert q["reference_nouns_compared"] + q["reference_nouns_without_mask"] == q["reference_nouns"]
    assert q["quality_measure"] is False and "plumbing" in q["note"]
    rows = list(csv.DictReader((grounded / "data/segment/mask_iou_by_category.csv").open()))
    assert sum(int(r["nouns"]) for r in rows) == q["reference_nouns_compared"]
    assert all(0.0 <= float(r["mean_iou"]) <= 1.0 for r in rows)
    if q["reference_nouns_compared"]:
        assert 0.0 <= q["mean_iou"] <= 1.0 and 0.0 <= q["share_iou_ge_0_5"] <= 1.0
    assert (grounded / "data/segment/mask_iou_worst.png").stat().st_size > 0
    b = json.loads((grounded / "data/ground/summary.json").read_text())["box_quality"]
    assert b["reference_instances"] == sum(not r["iscrowd"] for r in instances)
    assert b["reference_crowd_instances_skipped"] == sum(r["iscrowd"] for r in instances)
    assert 0 <= b["reference_instances_found"] <= b["reference_instances"]
    assert b["quality_measure"] is False


def test_kill_9_then_resume_gives_the_same_outputs(workspace: Path, grounded: Path, tmp_path: Path):
    ws = clone_workspace(workspace, tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "stages.ground", "--params", "params.yaml"], cwd=ws, env=ENV)
    partial = ws / "data/.partial"
    deadline = time.time() + HANG_TIMEOUT_S
    while time.time() < deadline and not list(partial.glob("ground-*/part-*[0-9].parquet")):
        assert proc.poll() is None, "ground finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(partial.glob("ground-*/part-*[0-9].parquet")))
    total = len(list((grounded / "data/ground/boxes").glob("part-*.parquet")))
    assert 1 <= done_before < total
    assert not (ws / "data/ground/boxes").exists()
    out = run_stage(ws, "stages.ground", "--log-level", "INFO")
    assert "resuming" in out.stderr
    shards_equal(ws / "data/ground/boxes", grounded / "data/ground/boxes")
    assert not list(partial.glob("ground-*"))


@pytest.mark.slow
def test_two_processes_give_the_same_outputs_as_one(workspace: Path, grounded: Path, tmp_path: Path):
    ws = clone_workspace(workspace, tmp_path / "two")
    # on a CPU-only machine `--multi_gpu` makes accelerate start a torchrun world, which
    # accelerate's PartialState(cpu=True) turns into a 2-process gloo group
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29517", "-m"]
    out = run_stage(ws, "stages.ground", "--log-level", "INFO", launcher=launch)
    assert "process 0 of 2" in out.stderr and "process 1 of 2" in out.stderr
    assert len(list((ws / "data/ground/boxes").glob("part-*.parquet"))) >= 2
    shards_equal(ws / "data/ground/boxes", grounded / "data/ground/boxes")
    run_stage(ws, "stages.segment", launcher=launch)
    shards_equal(ws / "data/segment/masks", grounded / "data/segment/masks")


def test_a_new_threshold_does_not_reuse_old_shards(workspace: Path, grounded: Path, tmp_path: Path):
    ws = clone_workspace(workspace, tmp_path / "thr", **{"ground.box_threshold": 0.3, "ground.text_threshold": 0.3})
    # leave a stale partial shard from another fingerprint behind: it must be ignored
    stale = ws / "data/.partial/ground-0000000000000000"
    stale.mkdir(parents=True)
    shutil.copy(next((grounded / "data/ground/boxes").glob("part-*.parquet")), stale / "part-00000.parquet")
    run_stage(ws, "stages.ground")
    high = read_table(ws / "data/ground/boxes").to_pylist()
    low = read_table(grounded / "data/ground/boxes").to_pylist()
    assert all(b["score"] > 0.3 for b in high if b["found"])
    assert sum(b["found"] for b in high) < sum(b["found"] for b in low)


def test_image_deleted_after_captions_is_rejected_with_its_nouns(workspace: Path, tmp_path: Path):
    ws = clone_workspace(workspace, tmp_path / "gone")
    captions = read_table(ws / "data/captions/captions.parquet").to_pylist()
    victim = captions[0]
    (ws / victim["path"]).unlink()
    run_stage(ws, "stages.ground")
    rejects = pq.read_table(ws / "data/ground/rejects.parquet").to_pylist()
    nouns = read_table(ws / "data/nouns/nouns.parquet").to_pylist()
    victim_nouns = {str(n["noun_id"]) for n in nouns if n["image_id"] == victim["image_id"]}
    assert {r["key"] for r in rejects} == victim_nouns
    assert {r["reason"] for r in rejects} == {"unreadable_image"}
    boxes = read_table(ws / "data/ground/boxes").to_pylist()
    assert victim["image_id"] not in {b["image_id"] for b in boxes}


def test_overlay_command_renders_one_image(grounded: Path):
    image_id = read_table(grounded / "data/ground/boxes").column("image_id")[0].as_py()
    out = grounded / "overlays" / "one.png"
    run_stage(grounded, "stages.overlay", "--image-id", str(image_id), "--out", str(out))
    from PIL import Image

    img = Image.open(out)
    captions = {r["image_id"]: r for r in read_table(grounded / "data/captions/captions.parquet").to_pylist()}
    assert img.width == captions[image_id]["width"]
    assert img.height > captions[image_id]["height"]  # the text panel below
    assert np.asarray(img).std() > 0
    bad = run_stage(grounded, "stages.overlay", "--image-id", "999999999", check=False)
    assert bad.returncode != 0 and "not in" in bad.stderr


@pytest.mark.slow
def test_real_coco_images_through_every_data_stage(coco_mini: Path, workspace: Path, tmp_path: Path):
    """coco-mini's real photos and captions (one per image, first 16) through captions -> segment."""
    params = small_params()
    params["dataset"].update(
        captions=str(coco_mini / "annotations" / "captions_train2017.json"),
        images_dir=str(coco_mini / "train2017"),
        instances=str(coco_mini / "annotations" / "instances_train2017.json"),
    )
    params["captions"].update(select="first_n", first_n=16)
    ws = tmp_path / "coco"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(workspace / "models", ws / "models")
    for stage in ("captions", "nouns", "reference_masks", "ground", "segment"):
        run_stage(ws, f"stages.{stage}")
    captions = read_table(ws / "data/captions/captions.parquet").to_pylist()
    assert len(captions) == 16 and all(c["path"].startswith(str(coco_mini)) for c in captions)
    nouns = read_table(ws / "data/nouns/nouns.parquet").to_pylist()
    boxes = read_table(ws / "data/ground/boxes").to_pylist()
    masks = read_table(ws / "data/segment/masks").to_pylist()
    assert len({b["noun_id"] for b in boxes}) == len(nouns)
    assert {m["noun_id"] for m in masks} == {b["noun_id"] for b in boxes if b["found"]}
    sizes = {c["image_id"]: (c["height"], c["width"]) for c in captions}
    assert all((m["height"], m["width"]) == sizes[m["image_id"]] for m in masks)
