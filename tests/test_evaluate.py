"""The ``evaluate`` stage end to end on tiny models: outputs, seeds, resume, processes, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from stagerun import ENV, HANG_TIMEOUT_S, assert_readable_metrics, run_stage

from pipeline.core.tables import read_table
from pipeline.evaluate.multigen import Prompt, image_seed, score

LAUNCH_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "29531", "-m"]


def eval_params(ws: Path) -> dict:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    ev = params["evaluate"]
    ev["models"] = {"base": "models/tiny/sd/unet", "tuned": "models/tuned/unet"}
    ev["grid_images"] = 4
    ev["generation"].update(steps=3, resolution=32, batch_size=4)
    ev["multigen"].update(num_prompts=3, images_per_prompt=2, heatmap_prompts=1, detect_batch_size=4)
    ev["object_accuracy"].update(num_prompts=3, detect_batch_size=4)
    ev["fid"].update(num_images=4, batch_size=3)
    ev["attention"].update(holdout_images=2, timesteps=[500])
    return params


def write_params(ws: Path, params: dict) -> None:
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def eval_ws(workspace: Path, tmp_path_factory) -> Path:
    """Demo data, tiny models, captions, nouns, reference masks, and a perturbed copy of the UNet as 'tuned'."""
    from diffusers import UNet2DConditionModel

    ws = tmp_path_factory.mktemp("eval") / "ws"
    for name in ("data/demo", "data/captions", "data/nouns", "models"):
        shutil.copytree(workspace / name, ws / name)
    write_params(ws, eval_params(workspace))
    run_stage(ws, "stages.reference_masks")
    unet = UNet2DConditionModel.from_pretrained(ws / "models/tiny/sd/unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    unet.save_pretrained(ws / "models/tuned/unet")
    return ws


@pytest.fixture(scope="module")
def evaluated(eval_ws: Path) -> Path:
    run_stage(eval_ws, "stages.evaluate", "--model", "base")
    run_stage(eval_ws, "stages.evaluate", "--model", "tuned")
    return eval_ws


def clone(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("data/demo", "data/captions", "data/nouns", "data/reference_masks", "models", "params.yaml"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, dst / name)
    return dst


def metrics(ws: Path, model: str) -> dict:
    return json.loads((ws / f"data/evaluate/{model}/metrics.json").read_text())


def results(ws: Path, model: str) -> dict:
    """metrics.json without the timing (latency and the images it was measured on), which no rerun repeats."""
    m = metrics(ws, model)
    m.pop("latency_s_per_image")
    m["counts"].pop("latency_images")
    skipped = m.pop("skipped", {})
    skipped.pop("latency_s_per_image", None)
    return {**m, "skipped": skipped} if skipped else m


def images_equal(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.png"))
    assert names and names == sorted(p.name for p in b.glob("*.png"))
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_outputs_add_up_and_scores_follow_the_detections(evaluated: Path):
    out = evaluated / "data/evaluate/base"
    m = metrics(evaluated, "base")
    assert set(m["multigen"]) == {f"MG{k}{s}" for k in (2, 3, 4, 5) for s in ("", "_std")}
    assert 0 <= m["object_accuracy"] <= 100 and np.isfinite(m["fid"]) and m["fid"] >= 0
    for key in ("share", "iou", "share_r4", "iou_r4"):
        assert 0 <= m["attention"][key] <= 1, key
    assert m["attention"]["full_image_masks"] == 0 and m["attention"]["pairs"] > 0  # exact demo masks
    ev = eval_params(evaluated)["evaluate"]   # tiny random models: the metrics say their numbers test the code
    assert [f.split(":")[0] for f in m["flags"]] == ["random_weights"] and m["flagged"] == 1
    assert ev["pretrained"] in m["flags"][0] and ev["multigen"]["detector"] in m["flags"][0]
    assert_readable_metrics(m, "evaluate")
    manifest = read_table(out / "multigen/manifest.parquet").to_pylist()
    assert len(manifest) == 3 * 2 == m["counts"]["multigen_images"]
    assert len(list((out / "multigen/images").glob("*.png"))) == 6
    assert all(r["seed"] == image_seed(0, r["prompt_id"], r["image_index"]) for r in manifest)
    dets = read_table(out / "multigen/detections").to_pylist()
    cats = {r["key"]: set(r["categories"]) for r in manifest}
    assert dets and all(d["label"] in cats[d["key"]] and d["score"] > 0.01 for d in dets)
    prompts = {r["prompt_id"]: Prompt(r["prompt_id"], r["text"], tuple(r["categories"])) for r in manifest}
    again = score([(d["prompt_id"], d["image_index"], d["label"], d["score"]) for d in dets],
                  list(prompts.values()), 2, 0.1)
    assert {k: again[k] for k in m["multigen"]} == m["multigen"]
    assert read_table(out / "rejects.parquet").num_rows == 0
    assert len(read_table(out / "fid/manifest.parquet")) == 4 == m["counts"]["fid_images"]
    recall = (out / "category_recall.csv").read_text().splitlines()
    assert recall[0] == "category,images,found,recall"
    named = sorted({c for r in manifest for c in r["categories"]})
    assert [line.split(",")[0] for line in recall[1:]] == named
    assert sum(int(line.split(",")[1]) for line in recall[1:]) == 6 * 5  # 6 images, 5 categories each
    for fig in ("samples.png", "heatmaps.png"):
        assert Image.open(out / "figures" / fig).size[0] > 100


def test_models_share_seeds_but_not_images(evaluated: Path):
    base, tuned = (read_table(evaluated / f"data/evaluate/{m}/multigen/manifest.parquet") for m in ("base", "tuned"))
    assert base.equals(tuned)  # same prompts, same seeds: a paired comparison
    a = np.asarray(Image.open(evaluated / "data/evaluate/base/multigen/images/0_0.png"), np.int16)
    b = np.asarray(Image.open(evaluated / "data/evaluate/tuned/multigen/images/0_0.png"), np.int16)
    assert np.abs(a - b).mean() > 1
    assert metrics(evaluated, "base")["attention"] != metrics(evaluated, "tuned")["attention"]


def test_one_image_drawn_alone_matches_the_stage(evaluated: Path, tmp_path: Path):
    run_stage(evaluated, "stages.evaluate", "--model", "tuned", "--only", "multigen:1_1", "--out", str(tmp_path / "x.png"))
    alone = np.asarray(Image.open(tmp_path / "x.png"), np.int16)
    staged = np.asarray(Image.open(evaluated / "data/evaluate/tuned/multigen/images/1_1.png"), np.int16)
    assert alone.shape == staged.shape and np.abs(alone - staged).max() <= 2


def test_kill_9_then_resume_gives_the_same_outputs(evaluated: Path, tmp_path: Path):
    ws = clone(evaluated, tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-m", "stages.evaluate", "--params", "params.yaml", "--model", "base"],
                            cwd=ws, env=ENV)
    cache = ws / "data/.partial"
    images, shards = "evaluate-base-multigen-images-*/*.png", "evaluate-base-multigen-detect-*/part-*[0-9].parquet"
    deadline = time.time() + HANG_TIMEOUT_S
    while time.time() < deadline and not list(cache.glob(shards)):
        assert proc.poll() is None, "evaluate finished before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ws / "data/evaluate/base/metrics.json").exists()
    stamps = {p: p.stat().st_mtime_ns for pattern in (images, shards) for p in cache.glob(pattern)}
    assert len([p for p in stamps if p.suffix == ".png"]) == 6
    run_stage(ws, "stages.evaluate", "--model", "base")
    for p, stamp in stamps.items():  # images and detection shards on disk are not redone
        assert p.stat().st_mtime_ns == stamp, p
    assert results(ws, "base") == results(evaluated, "base")
    images_equal(ws / "data/evaluate/base/multigen/images", evaluated / "data/evaluate/base/multigen/images")
    assert read_table(ws / "data/evaluate/base/multigen/detections").equals(
        read_table(evaluated / "data/evaluate/base/multigen/detections"))


def test_unreadable_cached_image_is_drawn_again(evaluated: Path, tmp_path: Path):
    ws = clone(evaluated, tmp_path / "corrupt")
    shutil.copytree(evaluated / "data/.partial", ws / "data/.partial")
    victim = next(ws.glob("data/.partial/evaluate-base-multigen-images-*/0_1.png"))
    victim.write_bytes(b"\x89PNG broken")
    out = run_stage(ws, "stages.evaluate", "--model", "base", "--log-level", "WARNING")
    assert "unreadable" in out.stderr and "0_1" in out.stderr
    assert results(ws, "base") == results(evaluated, "base")
    images_equal(ws / "data/evaluate/base/multigen/images", evaluated / "data/evaluate/base/multigen/images")


@pytest.mark.slow
def test_two_processes_give_the_same_outputs_as_one(evaluated: Path, tmp_path: Path):
    ws = clone(evaluated, tmp_path / "two")
    run_stage(ws, "stages.evaluate", "--model", "tuned", launcher=LAUNCH_2)
    assert results(ws, "tuned") == results(evaluated, "tuned")
    for bench in ("multigen", "object_accuracy", "fid"):
        images_equal(ws / f"data/evaluate/tuned/{bench}/images", evaluated / f"data/evaluate/tuned/{bench}/images")
    for bench in ("multigen", "object_accuracy"):
        assert read_table(ws / f"data/evaluate/tuned/{bench}/detections").equals(
            read_table(evaluated / f"data/evaluate/tuned/{bench}/detections"))


def test_bad_inputs_fail_clearly_or_are_recorded(evaluated: Path, tmp_path: Path):
    ws = clone(evaluated, tmp_path / "bad")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    # a prompt file with the wrong schema
    (ws / "bad.json").write_text(json.dumps([{"unique_id": 0, "text": "a photo of a cat."}]))
    params["evaluate"]["multigen"].update(prompts="bad.json", num_prompts=None)
    write_params(ws, params)
    proc = run_stage(ws, "stages.evaluate", "--model", "base", check=False)
    assert proc.returncode != 0 and "entry 0: missing key 'num_objects'" in proc.stderr
    # more prompts asked of a file than it holds: refused at the start
    params["evaluate"]["multigen"]["num_prompts"] = 3
    write_params(ws, params)
    proc = run_stage(ws, "stages.evaluate", "--model", "base", check=False)
    assert proc.returncode != 0 and "evaluate.multigen.num_prompts = 3 but bad.json holds 1 (on disk)" in proc.stderr
    # a missing UNet folder
    params["evaluate"]["multigen"]["prompts"] = None
    params["evaluate"]["models"]["gone"] = "models/gone/unet"
    write_params(ws, params)
    proc = run_stage(ws, "stages.evaluate", "--model", "gone", check=False)
    assert proc.returncode != 0 and "UNet folder models/gone/unet not found" in proc.stderr
    # more FID images than the captions hold: refused at the start, before any image is drawn
    partial = sorted(p.name for p in (ws / "data/.partial").iterdir()) if (ws / "data/.partial").exists() else []
    params["evaluate"]["fid"]["num_images"] = 10_000
    write_params(ws, params)
    proc = run_stage(ws, "stages.evaluate", "--model", "base", check=False)
    assert proc.returncode != 0 and "evaluate.fid.num_images (real images) = 10000" in proc.stderr
    assert (sorted(p.name for p in (ws / "data/.partial").iterdir()) if partial else []) == partial
    params["evaluate"]["fid"]["num_images"] = 4
    # a category the detector is not asked about: the prompt is a recorded reject, the rest is scored
    prompts = [{"unique_id": i, "num_objects": 2, "obj_1_attributes": [a], "obj_2_attributes": [b],
                "text": f"a photo of a {a} and a {b}."} for i, (a, b) in enumerate([("cup", "kite"), ("cup", "yak")])]
    (ws / "two.json").write_text(json.dumps(prompts))
    params["evaluate"]["multigen"].update(prompts="two.json", num_prompts=None)
    write_params(ws, params)
    run_stage(ws, "stages.evaluate", "--model", "base")
    m = metrics(ws, "base")
    rejects = read_table(ws / "data/evaluate/base/rejects.parquet").to_pylist()
    assert [(r["key"], r["reason"]) for r in rejects] == [("multigen:1", "category_not_in_vocabulary")]
    assert m["counts"]["rejected_prompts"] == 1 and m["counts"]["multigen_prompts"] == 1
    assert m["counts"]["multigen_images"] == 2


def test_parts_can_be_switched_off(evaluated: Path, tmp_path: Path):
    ws = clone(evaluated, tmp_path / "off")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for part in ("object_accuracy", "fid", "attention"):
        params["evaluate"][part]["enabled"] = False
    # Flickr30K configured but not supplied: skipped, with the reason recorded
    params["evaluate"]["fid_flickr30k"] = {"captions": "data/flickr30k/captions_val.json",
                                           "images_dir": "data/flickr30k/images", "num_images": 4}
    write_params(ws, params)
    run_stage(ws, "stages.evaluate", "--model", "base")
    m = metrics(ws, "base")
    assert set(m) == {"multigen", "latency_s_per_image", "skipped", "counts", "flags", "flagged"}
    assert m["multigen"] == metrics(evaluated, "base")["multigen"]
    assert "Flickr30K not supplied: data/flickr30k/captions_val.json" in m["skipped"]["fid_flickr30k"]
    assert m["latency_s_per_image"] > 0 and m["counts"]["latency_images"] == m["counts"]["multigen_images"]
    for name in ("object_accuracy", "fid", "figures"):  # DVC's outputs exist all the same
        assert (ws / "data/evaluate/base" / name).is_dir()


def test_table1_in_one_run_two_prompt_sets_flickr_fid_latency(evaluated: Path, tmp_path: Path, shared_dir: Path):
    """Two MultiGen prompt sets (an official file and generated prompts) with their own metrics keys and
    folders, FID on COCO and on user-supplied "Flickr30K" images, latency; then stages.table1."""
    ws = clone(evaluated, tmp_path / "table1")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    ev = params["evaluate"]
    generated = dict(ev["multigen"])
    official = dict(generated, prompts=str(shared_dir / "multigen/coco_obj_comp_5_1k.json"), categories=None,
                    num_prompts=2, images_per_prompt=1, heatmap_prompts=0)
    ev["multigen"] = {"coco": official, "mine": generated}
    ev["object_accuracy"]["enabled"] = ev["attention"]["enabled"] = False
    ev["fid_flickr30k"] = dict(ev["fid"], num_images=3,             # the demo images stand in for Flickr30K
                               captions=params["dataset"]["fid_captions"], images_dir=params["dataset"]["fid_images_dir"])
    write_params(ws, params)
    run_stage(ws, "stages.evaluate", "--model", "base")
    m = metrics(ws, "base")
    out = ws / "data/evaluate/base"
    assert set(m["multigen_coco"]) == set(m["multigen_mine"]) == {f"MG{k}{s}" for k in (2, 3, 4, 5) for s in ("", "_std")}
    assert m["multigen_mine"] == metrics(evaluated, "base")["multigen"]     # same prompts, seeds and images
    assert len(list((out / "multigen/coco/images").glob("*.png"))) == 2 == m["counts"]["multigen_coco_images"]
    assert len(list((out / "multigen/mine/images").glob("*.png"))) == 6 == m["counts"]["multigen_mine_images"]
    assert (out / "category_recall.csv").is_file() and (out / "multigen/mine/category_recall.csv").is_file()
    assert np.isfinite(m["fid"]) and np.isfinite(m["fid_flickr30k"]) and "skipped" not in m
    assert m["counts"]["fid_flickr30k_images"] == 3 and len(list((out / "fid/flickr30k/images").glob("*.png"))) == 3
    assert m["latency_s_per_image"] > 0 and m["counts"]["latency_images"] == 2 + 6 + 4 + 3
    # a rerun draws nothing: latency cannot be measured and says so, never a made-up number
    run_stage(ws, "stages.evaluate", "--model", "base")
    again = metrics(ws, "base")
    assert again["latency_s_per_image"] is None and "no image was drawn" in again["skipped"]["latency_s_per_image"]
    table = run_stage(ws, "stages.table1").stdout
    lines = table.splitlines()
    assert lines[0].startswith("| model | Object Accuracy | COCO MG2 |") and "FID (Flickr30K) | latency (s/img) |" in lines[0]
    assert "| SD 1.4 (published) | 29.86 | 90.72 ± 1.33 |" in table and "| 7.56 |" in table
    base = next(r for r in lines if r.startswith("| base (flagged) |")).split(" | ")  # tiny random models
    assert base[1] == "n/a" and f"{m['multigen_coco']['MG2']:.2f} ± {m['multigen_coco']['MG2_std']:.2f}" == base[2]
    assert base[-1] == "skipped |" and next(r for r in lines if r.startswith("| tuned |")).count("not evaluated") > 0
    assert "- base, latency_s_per_image: skipped: no image was drawn" in table
    assert "- base: random_weights: " in table
