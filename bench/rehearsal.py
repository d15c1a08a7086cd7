"""The rehearsal: the whole DAG on a rehearsal profile, one table of wall time, peak memory, items/s.

    python -m bench.rehearsal [--profile rehearsal-sd14]      # or: make rehearsal

Switches ``params.yaml`` to the profile (``stages.profiles use``), then runs every stage of
``dvc.yaml`` in its order with ``dvc repro --single-item``, each in its own child process:
``train`` first with ``max_train_steps: 1``, then again with the profile's value, so the second
run resumes from the step-1 checkpoint (the table has both rows). ``TORCH_HOME`` points at
``models/rehearsal/torch``, where ``rehearsal_models`` writes torch-fidelity's Inception file
(the ``evaluate`` FID loads it from there; torchmetrics takes no path through our params).

Peak memory: the child's ``ru_maxrss`` from ``os.wait4`` (the largest RSS of dvc and the stage
process it waited for). On a GPU the stage's CUDA peak is not seen from here (a separate
process); each stage logs its device. Items: a count from the stage's summary/metrics json
(``STAGE_ITEMS``), per second of the stage's wall time. ``params.yaml`` is left on the
profile; ``python -m stages.profiles use demo`` goes back.

Disk: rehearsal-sd14 needs about 66 GB (the models, three 10 GB SD1.4 checkpoints with AdamW
state, and DVC's cache copy of each output). The runner stops before any work when the disk has
less than ``--min-free-gb`` free, and ends with the disk use of ``models/``, ``data/`` and the
DVC cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.core.logs import setup_logging

log = logging.getLogger("bench.rehearsal")

#: stage -> (summary file relative to the stage's out_dir section, key, unit)
STAGE_ITEMS = {
    "captions": ("captions", "summary.json", "kept", "captions"),
    "nouns": ("nouns", "summary.json", "input_captions", "captions"),
    "ground": ("ground", "summary.json", "images", "images"),
    "segment": ("segment", "summary.json", "images", "images"),
    "reference_masks": ("reference_masks", "summary.json", None, ""),
    "train": ("train", "summary.json", "steps", "optimizer steps"),
}


def stage_order(dvc_yaml: Path, params: dict) -> list[str]:
    """Stage names in dvc.yaml's order, ``foreach`` stages expanded as ``name@key``."""
    names = []
    for name, spec in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "foreach" in spec:
            section, _, key = spec["foreach"].strip("${} ").partition(".")
            names += [f"{name}@{k}" for k in params[section][key]]
        else:
            names.append(name)
    return names


def run_measured(cmd: list[str], env: dict) -> tuple[int, float, float]:
    """(return code, wall seconds, peak RSS in GiB of the child and the processes it waited for)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 2**20


def items_of(stage: str, params: dict) -> tuple[float | None, str]:
    base = stage.split("@")[0]
    if base == "evaluate":  # generated images kept in the outputs (multigen, object_accuracy, fid)
        folder = Path(params["evaluate"]["out_dir"]) / stage.split("@")[1]
        n = sum(1 for f in folder.rglob("*.png") if "figures" not in f.parts) if folder.is_dir() else 0
        return (float(n) or None), "images"
    if base not in STAGE_ITEMS:
        return None, ""
    section, name, key, unit = STAGE_ITEMS[base]
    path = Path(params[section]["out_dir"]) / name
    if key is None or not path.is_file():
        return None, unit
    value = json.loads(path.read_text()).get(key)
    return (float(value) if isinstance(value, (int, float)) else None), unit


def table(rows: list[dict]) -> str:
    lines = ["| stage | wall | peak RSS | items | items/s |", "|---|---:|---:|---|---:|"]
    for r in rows:
        rate = f"{r['items'] / r['seconds']:.3g}" if r["items"] else "-"
        items = f"{r['items']:g} {r['unit']}" if r["items"] else "-"
        lines.append(f"| {r['stage']} | {r['seconds']:.0f} s | {r['rss_gib']:.1f} GiB | {items} | {rate} |")
    return "\n".join(lines)


def disk_gb(path: Path) -> float:
    """Bytes under ``path`` (files counted once per inode), in GB."""
    seen, total = set(), 0
    for f in path.rglob("*") if path.is_dir() else []:
        st = f.lstat()
        if f.is_file() and not f.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total / 1e9


def check_free_disk(root: Path, min_free_gb: float) -> None:
    free = shutil.disk_usage(root).free / 1e9
    if free < min_free_gb:
        raise SystemExit(f"the rehearsal needs about {min_free_gb:.0f} GB free on {root.resolve()}, "
                         f"it has {free:.1f} GB: free space or pass --min-free-gb")


def set_train_steps(path: Path, steps: int) -> None:
    params = yaml.safe_load(path.read_text())
    params["train"]["max_train_steps"] = steps
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="rehearsal-sd14")
    p.add_argument("--dvc", default="dvc")
    p.add_argument("--only", nargs="+", metavar="STAGE",
                   help="run and time only these stages (e.g. evaluate@base), the others as they are")
    p.add_argument("--min-free-gb", type=float, default=70.0,
                   help="stop before any work when the disk has less free space (default 70)")
    args = p.parse_args(argv)
    setup_logging("INFO")
    check_free_disk(Path("."), args.min_free_gb)
    # the profile switch as a user runs it (validates, then writes params.yaml)
    subprocess.run([sys.executable, "-m", "stages.profiles", "use", args.profile], check=True)
    params_path = Path("params.yaml")
    params = yaml.safe_load(params_path.read_text())
    torch_home = Path(params["rehearsal_models"]["out_dir"]).resolve() / "torch"
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    steps = int(params["train"]["max_train_steps"])
    rows = []
    plan = []
    for stage in stage_order(Path("dvc.yaml"), params):
        if args.only and stage not in args.only:
            continue
        if stage == "train" and steps > 1:
            plan += [("train", 1, "train (1 step)"), ("train", steps, f"train (resumed to {steps} steps)")]
        else:
            plan.append((stage, None, stage))
    done_steps = 0
    for stage, train_steps, label in plan:
        if train_steps is not None:
            set_train_steps(params_path, train_steps)
        log.info("running %s", label)
        rc, seconds, rss = run_measured([args.dvc, "repro", "--single-item", stage], env)
        items, unit = items_of(stage, params)
        if stage == "train" and items is not None and train_steps:
            items = min(items, train_steps) - done_steps  # the steps this run took (a resume skips the rest)
            done_steps = train_steps
        rows.append({"stage": label, "seconds": seconds, "rss_gib": rss, "items": items, "unit": unit})
        print(f"\n{table(rows[-1:])}\n", flush=True)
        if rc != 0:
            print(table(rows))
            raise SystemExit(f"{label} failed (exit {rc})")
    total = {"stage": "**total**", "seconds": sum(r["seconds"] for r in rows),
             "rss_gib": max((r["rss_gib"] for r in rows), default=0.0), "items": None, "unit": ""}
    disk = ", ".join(f"{d} {disk_gb(Path(d)):.1f} GB" for d in ("models", "data", ".dvc/cache"))
    print(f"\nprofile {args.profile}, load average {os.getloadavg()[0]:.2f}, disk: {disk}\n"
          f"{table(rows + [total])}")


if __name__ == "__main__":
    sys.exit(main())
