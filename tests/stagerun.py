"""Running the real stage scripts in throwaway workspaces (params.yaml + data + models)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.core.tables import read_table

REPO = Path(__file__).resolve().parents[1]


# one intra-op thread everywhere: torchrun sets it for its workers, and CPU float results
# depend on the thread count, so single- and multi-process runs must use the same
#: upper bound on one subprocess or wait in the tests: only there so that a hung run cannot
#: block the suite forever; far above any correct run, even on a loaded 2-core machine
HANG_TIMEOUT_S = 3600

ENV = {**os.environ, "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def run_stage(ws: Path, module: str, *args: str, launcher: list[str] | None = None, check: bool = True):
    cmd = (launcher or [sys.executable, "-m"]) + [module, "--params", "params.yaml", *args]
    proc = subprocess.run(cmd, cwd=ws, env=ENV, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def small_params(num_images: int = 12, shard_size: int = 3) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["demo_data"]["num_images"] = num_images
    params["ground"]["shard_size"] = shard_size
    params["segment"]["shard_size"] = shard_size
    return params


def make_workspace(root: Path, params: dict, models: Path | None = None) -> Path:
    """A folder with params.yaml, the demo data and tiny models, captions and nouns run."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage(root, "stages.demo_data")
    if models is None:
        run_stage(root, "stages.demo_models")
    else:
        shutil.copytree(models, root / "models" / "tiny")
    run_stage(root, "stages.captions")
    run_stage(root, "stages.nouns")
    run_stage(root, "stages.reference_masks")
    return root


def link_workspace(src: Path, dst: Path, params: dict) -> Path:
    """A new workspace whose training inputs (demo data, tables, masks, models) link to ``src``'s."""
    dst.mkdir(parents=True)
    for name in ("data/demo", "data/captions", "data/nouns", "data/reference_masks", "models"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).symlink_to(src / name)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


def clone_workspace(src: Path, dst: Path, **overrides) -> Path:
    """Copy the inputs of ``ground`` (not its outputs) into a fresh folder."""
    dst.mkdir(parents=True)
    for name in ("data/demo", "data/captions", "data/nouns", "data/reference_masks", "models"):
        shutil.copytree(src / name, dst / name)
    params = yaml.safe_load((src / "params.yaml").read_text())
    for key, value in overrides.items():
        section, field = key.split(".")
        params[section][field] = value
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


def shards_equal(a: Path, b: Path) -> None:
    ta, tb = read_table(a), read_table(b)
    assert ta.num_rows == tb.num_rows
    assert ta.equals(tb), f"{a} and {b} differ"




#: the most values one stage's summary or metrics file may show in ``dvc metrics show``
MAX_METRICS_COLUMNS = 40


def metric_leaves(obj, prefix: str = "") -> list[str]:
    """Flattened keys as ``dvc metrics show`` makes columns of them (nested dicts joined by '.')."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in metric_leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def assert_readable_metrics(metrics: dict, name: str) -> None:
    """A stage's summary fits a screen: headline counts only, breakdowns live in CSV plots."""
    leaves = metric_leaves(metrics)
    assert len(leaves) <= MAX_METRICS_COLUMNS, f"{name}: {len(leaves)} metrics columns: {leaves}"
