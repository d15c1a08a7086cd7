"""`dvc repro` runs a stage on N processes from params (launch.<stage>), with the outputs of one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError, from_dict
from pipeline.core.launch import LaunchConfig
from pipeline.core.tables import read_table

REPO = Path(__file__).resolve().parents[1]


def test_launch_section_is_checked():
    assert from_dict(LaunchConfig, {"ground": "torchrun --nproc_per_node 2"}, "launch").ground.startswith("torchrun")
    from_dict(LaunchConfig, {"train": "accelerate launch --num_processes 8"}, "launch")
    for bad, match in (("bash -c", "must start with"), ("accelerate --num_processes 2", "accelerate launch"),
                       ("python -m", "leave out '-m'"), ("", "must start with")):
        with pytest.raises(ConfigError, match=match):
            from_dict(LaunchConfig, {"segment": bad}, "launch")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(LaunchConfig, {"grond": "python"}, "launch")


def sh(cmd: list[str], cwd: Path) -> str:
    # one intra-op thread: torchrun sets it for its workers, and CPU float results depend on it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_ground_on_two_processes_equals_one(tmp_path: Path):
    """``launch.ground: torchrun --nproc_per_node 2`` through ``dvc repro ground`` on 4 demo images."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file() and not rel.startswith(("data/", "models/")) and rel != "dvc.lock":
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["demo_data"].update(num_images=4, captions_per_image=1)
    params["ground"]["shard_size"] = 1
    params["launch"]["ground"] = "torchrun --nproc_per_node 2 --master-port 29533"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "clone"]):
        sh(cmd, repo)

    out = sh(["dvc", "repro", "ground"], repo)
    assert "torchrun --nproc_per_node 2" in out and "ground: process 1 of 2 takes 2 of 4 shards" in out
    two = read_table(repo / "data/ground/boxes").to_pylist()
    assert two and any(r["found"] for r in two)

    params["launch"]["ground"] = "python"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / "data/.partial")                    # no finished shard of the first run to reuse
    out = sh(["dvc", "repro", "ground"], repo)
    assert "Running stage 'ground'" in out and "Running stage 'nouns'" not in out
    assert "ground: process 0 of 1 takes 4 of 4 shards" in out
    one = read_table(repo / "data/ground/boxes").to_pylist()
    assert one == two
