"""The user's commands on a fresh clone: ``dvc repro`` twice, then ``dvc exp run -S``.

Runs the real DAG of the default demo profile (at a third of its size) in a temporary git repository made from the
project's files, so nothing in the working copy is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from stagerun import HANG_TIMEOUT_S, assert_readable_metrics

REPO = Path(__file__).resolve().parents[1]
ALL_STAGES = ["demo_data", "demo_models", "rehearsal_models", "coco_download", "captions", "nouns", "ground", "segment",
              "reference_masks", "train", "multigen_prompts", "evaluate@base", "evaluate@tokencompose"]


def sh(cmd: list[str], cwd: Path, timeout: int = HANG_TIMEOUT_S) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def smaller_demo(path: Path) -> None:
    """The demo profile at a third of its size: the same stages and code paths, fewer images and steps."""
    params = yaml.safe_load(path.read_text())
    params["demo_data"]["num_images"] = 16
    params["train"].update(max_train_steps=4, checkpointing_steps=2, heatmap_steps=2, holdout_images=4)
    ev = params["evaluate"]
    ev.update(grid_images=2)
    ev["generation"]["steps"] = 4
    ev["multigen"].update(num_prompts=2, images_per_prompt=1, heatmap_prompts=1)
    ev["object_accuracy"]["num_prompts"] = 2
    ev["fid"]["num_images"] = 4
    ev["attention"]["holdout_images"] = 4
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The project's tracked and untracked-but-not-ignored files, committed in a new repo."""
    dst = tmp_path_factory.mktemp("clone") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "models/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    smaller_demo(dst / "params.yaml")
    sh(["git", "init", "-q", "-b", "main"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "add", "-A"], dst)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "clone"], dst)
    return dst


@pytest.mark.slow
def test_repro_then_up_to_date_then_threshold_experiment_then_plots(clone: Path):
    first = sh(["dvc", "repro"], clone)
    assert set(ran_stages(first)) == set(ALL_STAGES)
    summary = json.loads((clone / "data/segment/summary.json").read_text())
    assert summary["masks"] > 0
    assert (clone / "dvc.lock").exists()

    second = sh(["dvc", "repro"], clone)
    assert ran_stages(second) == []
    assert "up to date" in second.lower()
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "add", "-A"], clone)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "repro"], clone)

    base = json.loads((clone / "data/ground/summary.json").read_text())  # cached by DVC, not in git
    # the SAM-mask path, one -S away from the demo's exact masks
    exp = sh(["dvc", "exp", "run", "-S", "ground.box_threshold=0.3", "-S", "train.masks=data/segment/masks",
              "-n", "thr03"], clone)
    # the base model's evaluation does not depend on the masks: only the fine-tuned one reruns
    assert sorted(ran_stages(exp)) == ["evaluate@tokencompose", "ground", "segment", "train"]
    trained = json.loads((clone / "data/train/summary.json").read_text())
    assert trained["full_image_masks"] > 0  # the tiny random SAM's masks cover the image: flagged, not supervised
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["ground"]["box_threshold"] == 0.3

    shown = json.loads(sh(["dvc", "exp", "show", "--json"], clone))
    text = json.dumps(shown)
    assert "thr03" in text
    now = json.loads((clone / "data/ground/summary.json").read_text())
    assert now["boxes"] < base["boxes"]
    assert str(now["boxes"]) in text and str(base["boxes"]) in text

    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], clone))
    text = json.dumps(shown)
    files = {f: v["data"] for rev in shown.values() for f, v in rev["data"].items()}
    assert {"data/reference_masks/summary.json", "data/train/summary.json"} <= set(files)
    for f, data in files.items():  # one screen per stage; breakdowns are CSV plots
        assert_readable_metrics(data, f)
    for model in ("base", "tokencompose"):
        m = json.loads((clone / f"data/evaluate/{model}/metrics.json").read_text())
        assert f"data/evaluate/{model}/metrics.json" in text
        assert {"MG2", "MG5_std"} <= set(m["multigen"]) and "fid" in m and "iou" in m["attention"]

    # a LoRA instead of the full fine-tune: the same outs, so only train and the tuned model's evaluation rerun
    lora = sh(["dvc", "exp", "run", "-S", "train.adapter=lora", "-S", "train.learning_rate=1e-2", "-n", "lora"], clone)
    assert sorted(ran_stages(lora)) == ["evaluate@tokencompose", "train"]
    assert {"pytorch_lora_weights.safetensors", "adapter.json", "README.md"} <= {
        p.name for p in (clone / "data/train/unet").iterdir()}
    assert "MG2" in json.loads((clone / "data/evaluate/tokencompose/metrics.json").read_text())["multigen"]
    card = (clone / "data/evaluate/tokencompose/figures/model_card.md").read_text()  # the LoRA's card + metrics
    assert "load_lora_weights" in card and "| multigen.MG2 |" in card

    # one more model to evaluate (a training checkpoint's LoRA): only its own stage runs
    run = json.loads((clone / "data/train/summary.json").read_text())["run"]
    more = sh(["dvc", "exp", "run", "-S", f"+evaluate.models.step4=data/train/checkpoints/{run}/step-000004/unet",
               "-n", "step4"], clone)
    assert ran_stages(more) == ["evaluate@step4"]
    assert "data/evaluate/step4/metrics.json" in sh(["dvc", "metrics", "show"], clone)

    plots = json.loads(sh(["dvc", "plots", "show", "--json"], clone))
    text = json.dumps(plots)
    # the workspace holds the SAM-path experiment: no supervised noun, so no held-out share curve
    # (the demo's own curve is checked in test_train)
    for name in ("loss/total.tsv", "loss/token_16.tsv", "loss/pixel_4.tsv", "attention/step-",
                 "reference_masks/matched_by_category.csv",
                 "evaluate/base/category_recall.csv", "evaluate/tokencompose/category_recall.csv"):
        assert name in text, name
