"""Through DVC: your own COCO data with `dvc exp run -S dataset.*`, and a failed stage's
summary restored by `dvc checkout`.

Runs in a temporary git repository made from the project's files, on ../shared/coco-mini
(outside the repository: DVC hashes it as an external dependency). Only the cheap stages run
(captions -> nouns -> reference_masks); ``nouns.tokenizer`` points at a tokenizer built here so
that `demo_models` is not needed.
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

from pipeline.models.clip_tokenizer import build_clip_tokenizer

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def readme_command() -> list[str]:
    """The `dvc exp run -S dataset.*` command of the README's "Your own data" section, as argv."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(dvc exp run .*?)```", section, re.S).group(1)
    return block.replace("\\\n", " ").split("#", 1)[0].split()


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("dvc-dataset") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "models/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    sh(["git", "init", "-q", "-b", "main"], dst)
    sh([*GIT, "add", "-A"], dst)
    sh([*GIT, "commit", "-qm", "clone"], dst)
    return dst


@pytest.mark.slow
def test_own_data_in_one_command_then_a_broken_input_fails_and_checkout_restores(
        clone: Path, coco_mini: Path, tmp_path: Path):
    tokenizer = build_clip_tokenizer(tmp_path / "clip-tokenizer", save_fast=False)
    cmd = [arg.replace("path/to/coco", str(coco_mini)) for arg in readme_command()]
    assert cmd[:3] == ["dvc", "exp", "run"] and sum(a.startswith("dataset.") for a in cmd) == 5
    proc = sh([*cmd, "-S", f"nouns.tokenizer={tokenizer}", "reference_masks"], clone)
    ran = re.findall(r"Running stage '([^']+)'", proc.stdout + proc.stderr)
    assert ran == ["captions", "nouns", "reference_masks"]  # no demo data: every path comes from dataset.*

    captions = json.loads((clone / "data/captions/summary.json").read_text())
    assert (captions["kept"], captions["rejected"], captions["images"]) == (400, 0, 80)
    nouns = json.loads((clone / "data/nouns/summary.json").read_text())
    assert nouns["captions_with_nouns"] == 400 and nouns["nouns"] > 1000
    masks = json.loads((clone / "data/reference_masks/summary.json").read_text())
    assert masks["input_nouns"] == nouns["nouns"] and masks["matched"] > 0.3 * masks["input_nouns"]  # 524 of 1,313: many nouns name no COCO category
    assert masks["images_with_masks"] >= 70  # 76 of the 80 images

    # break the input: an images folder that exists but is the wrong one
    before = (clone / "data/captions/summary.json").read_text()
    params = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(params.replace(f"images_dir: {coco_mini / 'train2017'}",
                                                      f"images_dir: {coco_mini / 'annotations'}"))
    failed = sh(["dvc", "repro", "captions"], clone, check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "all 400 captions rejected as missing_image" in out and "dvc checkout captions" in out
    assert not (clone / "data/captions/summary.json").exists()  # DVC removed the outputs before the run

    sh(["dvc", "checkout", "captions"], clone)
    assert (clone / "data/captions/summary.json").read_text() == before
    assert (clone / "data/captions/captions.parquet").exists()
