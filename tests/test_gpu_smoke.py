"""The GPU smoke run (bench/gpu_smoke.py): its plumbing on the CPU (--dry-run), a failing or slow part
recorded while the others run, the stop without CUDA, and how the lent machine gets its wheels."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from stagerun import ENV, HANG_TIMEOUT_S, REPO


def test_dry_run_passes_every_part_on_the_cpu(tmp_path: Path):
    from bench.gpu_smoke import PARTS

    out, ws = tmp_path / "out", tmp_path / "ws"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--dry-run", "--out", str(out), "--work", str(ws)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((out / "gpu_smoke.json").read_text())
    parts = report["parts"]
    assert list(parts) == list(PARTS)
    failed = {n: (p["status"], p.get("error"), p.get("traceback", "")[-1500:]) for n, p in parts.items()
              if p["status"] != "pass"}
    assert failed == {}
    md = (out / "gpu_smoke.md").read_text()
    assert f"{len(PARTS)} of {len(PARTS)} parts passed" in md and "command: python -m bench.gpu_smoke --dry-run" in md
    assert md == proc.stdout
    # train: heatmap, held-out grounding and checkpoint at step 1, then a resume from it
    train = parts["train"]["details"]
    assert train["run_to_1"]["resumed_from_step"] == 0 and train["resumed_to_2"]["resumed_from_step"] == 1
    assert train["run_to_1"]["heatmaps"] == ["step-000001.png"] and train["run_to_1"]["checkpoints"] == ["step-000001"]
    assert train["run_to_1"]["heldout_share"] is not None and len(train["run_to_1"]["step_s"]) == 1
    for precision in ("fp32", "bf16"):
        sd = parts[f"sd14_{precision}"]["details"]
        assert len(sd["step_s"]) == 2 and sd["checkpoint_s"] and sd["heatmap_s"] and sd["heldout_s"]
        assert (out / f"sd14_{precision}-step-000001.png").is_file()
    # the tiny SDXL's LoRA in bf16 through stages.train: heatmaps, held-out grounding, checkpoints, finite losses
    xl = parts["sdxl_lora"]["details"]
    assert xl["family"] == "sdxl" and xl["adapter"] == "lora" and xl["precision"] == "bf16" and xl["lora_kb"] > 0
    assert xl["side_work_errors"] == [] and xl["checkpoints"] == ["step-000001", "step-000002"]
    assert xl["heatmaps"] == ["step-000001.png", "step-000002.png"] and xl["heldout_share"] is not None
    assert len(xl["step_s"]) == 2 and len(xl["total"]) == 2 and all(math.isfinite(t) for t in xl["total"])
    assert (out / "sdxl_lora-step-000002.png").is_file() and (out / "sdxl_lora-summary.json").is_file()
    assert parts["ground"]["details"]["nouns_with_box"] > 0 and parts["segment"]["details"]["masks"] > 0
    assert parts["evaluate"]["details"]["images"]["multigen_images"] > 0
    assert (out / "train-step-000001.png").is_file()
    print(f"dry run: {seconds:.0f} s, load average {os.getloadavg()[0]:.2f}")


def test_a_failing_or_slow_part_is_recorded_and_the_others_still_run(tmp_path: Path, monkeypatch):
    import bench.gpu_smoke as smoke

    ran = []

    def ok(name):
        def part(ws, device, dry_run):
            ran.append(name)
            return {"ok": name}
        return part

    def boom(ws, device, dry_run):
        ran.append("segment")
        raise ValueError("segment broke")

    def slow(ws, device, dry_run):
        ran.append("train")
        time.sleep(5)
        return {}

    monkeypatch.setattr(smoke, "PARTS", {"prepare": ok("prepare"), "ground": ok("ground"), "segment": boom,
                                         "train": slow, "evaluate": ok("evaluate")})
    monkeypatch.setattr(smoke, "CHILD_PARTS", ("ground",))   # a real child process: fails by injection
    monkeypatch.setattr(smoke, "DRY_BUDGET_S", 1.0)
    monkeypatch.setenv(smoke.FAIL_ENV, "ground")
    report = smoke.smoke(tmp_path / "out", tmp_path / "ws", dry_run=True, total_s=60)
    parts = report["parts"]
    assert ran == ["prepare", "segment", "train", "evaluate"]
    assert {n: p["status"] for n, p in parts.items()} == {
        "prepare": "pass", "ground": "error", "segment": "error", "train": "timeout", "evaluate": "pass"}
    assert "failure injected by GPU_SMOKE_FAIL=ground" in parts["ground"]["error"]
    assert parts["segment"]["error"] == "ValueError: segment broke" and "in boom" in parts["segment"]["traceback"]
    assert "PartTimeout: over its budget of" in parts["train"]["error"] and parts["train"]["seconds"] < 4.5
    md = (tmp_path / "out" / "gpu_smoke.md").read_text()
    assert "2 of 5 parts passed" in md and "| segment | error |" in md and "ValueError: segment broke" in md
    assert json.loads((tmp_path / "out" / "gpu_smoke.json").read_text())["parts"] == json.loads(json.dumps(parts))


def test_without_cuda_it_stops_before_any_work(tmp_path: Path):
    env = {**ENV, "CUDA_VISIBLE_DEVICES": ""}
    out, ws = tmp_path / "out", tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_smoke", "--out", str(out), "--work", str(ws)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode != 0 and "gpu_smoke needs a CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not out.exists() and not ws.exists()
    proc = subprocess.run([sys.executable, "-m", "bench", "--gpu"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)
    assert proc.returncode != 0 and "the GPU report needs a GPU" in proc.stderr
    site = tmp_path / "site"     # the lent machine's entry point: nothing installed either
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "GPU_SITE": str(site),
           "OUT": str(out)}
    for what in ("smoke", "report"):
        proc = subprocess.run(["bash", "bench/gpu_run.sh", what], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=HANG_TIMEOUT_S)
        assert proc.returncode == 2 and "no CUDA GPU visible" in proc.stderr and "nothing installed or run" in proc.stderr
    assert not site.exists() and not out.exists()


def _wheel(folder: Path, dist: str, module: str) -> Path:
    """A minimal pure-Python wheel of ``dist`` holding ``module.py``."""
    info = f"{dist}-1.0.dist-info"
    files = {f"{module}.py": b"VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},"
                     f"{len(b)}\n" for n, b in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("with_pip", [True, False])
def test_gpu_env_installs_only_the_carried_wheels_the_machine_lacks(tmp_path: Path, with_pip: bool):
    (tmp_path / ".whl").mkdir()
    _wheel(tmp_path / ".whl", "tc_smoke_probe", "tc_smoke_probe")
    _wheel(tmp_path / ".whl", "pip", "not_pip")               # the machine has pip: left out
    site = tmp_path / "site"
    python = tmp_path / "python-without-pip"                  # a machine without pip: wheels unpacked
    python.write_text(f'#!/usr/bin/env bash\n[ "$1 $2" = "-m pip" ] && exit 1\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "GPU_SITE": str(site), "PYTHONPATH": "", "PYTHON": sys.executable if with_pip else str(python)}
    proc = subprocess.run(["bash", "-c", f"set -e; source {REPO}/bench/gpu_env.sh && echo \"$PYTHONPATH\""],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert (site / "tc_smoke_probe.py").is_file() and not (site / "not_pip.py").exists()
    assert proc.stdout.strip() == f"{site}:{tmp_path}"
    assert "installing 1 carried wheels" in proc.stderr


def test_plotting_stand_ins_import_for_grounding_dino_and_refuse_any_use():
    """groundingdino-py's model module imports cv2 and matplotlib for plotting; the lent machine has neither."""
    from bench.gpu_smoke import SHIMS

    code = ("import sys; sys.path.insert(0, %r); import cv2, matplotlib.pyplot as plt; from matplotlib import transforms; "
            "from matplotlib.collections import PatchCollection; from matplotlib.patches import Polygon\n"
            "for use in (lambda: cv2.imread, lambda: plt.figure, lambda: Polygon([])):\n"
            "    try:\n        use()\n    except ImportError as e:\n        print(e)\n" % SHIMS)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("is not installed (a stand-in from bench/shims)") == 3


def test_stand_ins_go_last_on_the_path_and_only_for_what_is_missing(monkeypatch):
    import importlib.util

    import bench.gpu_smoke as smoke

    monkeypatch.setattr(sys, "path", list(sys.path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else real(name, *a))
    assert smoke.add_shims() == ["cv2"] if real("matplotlib") else ["cv2", "matplotlib"]
    assert sys.path[-1] == smoke.SHIMS


def test_the_smoke_times_the_training_code_through_hooks_it_has():
    """Every hook the smoke run times (micro-step, logged step, heatmaps, held-out, checkpoint) exists."""
    import bench.gpu_smoke as smoke
    import pipeline.train.loop as loop
    from pipeline.train.side_work import SideWork

    original = SideWork.heatmap_rows
    with smoke.instrument_train() as timing:
        assert SideWork.heatmap_rows is not original
    assert timing["not_timed"] == [] and SideWork.heatmap_rows is original and callable(loop.micro_step)
