"""The train stage as a user runs it: the real script on the tiny Stable Diffusion.

Saved files and the pipeline swap, resume after ``kill -9``, two processes against one,
a diverging run, bf16, and the effect itself: supervision raises the share of attention
inside the masks on held-out images.
"""

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
from stagerun import ENV, HANG_TIMEOUT_S, assert_readable_metrics, link_workspace, run_stage

TRAIN = {
    "masks": "data/reference_masks/masks",
    "max_train_steps": 6,
    "global_batch_size": 2,
    "train_batch_size": 2,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 2,
    "heatmap_steps": 3,
    "heatmap_captions": 2,
    "holdout_images": 2,
    "learning_rate": 1e-3,
}


@pytest.fixture(scope="session")
def train_ws(workspace: Path, tmp_path_factory) -> Path:
    """The shared demo workspace plus reference masks (exact instance masks)."""
    run_stage(workspace, "stages.reference_masks")
    return workspace


def make_train_ws(src: Path, dst: Path, **train) -> Path:
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["train"].update({**TRAIN, **train})
    return link_workspace(src, dst, params)


def unet_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "diffusion_pytorch_model.safetensors"))


def run_dir(ws: Path) -> Path:
    """The one run folder under the workspace's checkpoints."""
    folders = [p for p in (ws / "data/train/checkpoints").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def all_files(ws: Path) -> set[Path]:
    return {p.relative_to(ws) for p in (ws / "data/train/checkpoints").rglob("*") if p.is_file()}


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    sa, sb = unet_state(a), unet_state(b)
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst <= atol, f"weights differ by up to {worst}"


def assert_same_training(a: Path, b: Path, base: Path) -> None:
    """Two runs took the same steps: equal loss curves, and weights equal up to float noise.

    Different batch layouts sum in another order; Adam's first steps (update ~ lr * sign(g))
    turn the last-bit differences of near-zero gradients into updates of either sign, so the
    weights are compared relative to how far training moved them.
    """
    curves = [[float(r.split("\t")[1]) for r in (p / "dvclive/plots/metrics/loss/total.tsv").read_text().splitlines()[1:]]
              for p in (a.parent, b.parent)]
    assert torch.allclose(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-4), curves
    sa, sb, s0 = unet_state(a), unet_state(b), unet_state(base)
    diff = sum(float((sa[k] - sb[k]).double().pow(2).sum()) for k in sa) ** 0.5
    moved = sum(float((sb[k] - s0[k]).double().pow(2).sum()) for k in sb) ** 0.5
    assert diff < 0.02 * moved, f"runs differ by {diff:.3g}, training moved the weights by {moved:.3g}"


@pytest.fixture(scope="session")
def trained(train_ws: Path, tmp_path_factory) -> Path:
    ws = make_train_ws(train_ws, tmp_path_factory.mktemp("train") / "ws")
    run_stage(ws, "stages.train")
    return ws


def test_writes_unet_checkpoints_curves_heatmaps_and_loads_into_the_pipeline(trained: Path, train_ws: Path):
    out = trained / "data/train"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["global_batch"] == 2 and summary["accumulation"] == 1
    assert summary["side_work_errors"] == [] and summary["resumed_across_code_change"] is None
    assert summary["attention_resolutions"] == [4, 8, 16]
    assert summary["captions"] == summary["examples"] + summary["rejected"]
    assert summary["heldout_examples"] > 0 and summary["heldout_supervised_nouns"] > 0
    for key in ("base_heldout_attention_share", "final_heldout_attention_share",
                "base_heldout_attention_iou", "final_heldout_attention_iou"):
        assert 0 < summary[key] < 1, key
    # the demo's tiny SD has random weights (demo_models marks it): the summary says so
    assert [f.split(":")[0] for f in summary["flags"]] == ["random_weights"] and "models/tiny/sd" in summary["flags"][0]
    assert summary["full_image_masks"] == 0 and summary["flagged"] == 1
    assert_readable_metrics(summary, "train")
    heldout = (out / "dvclive/plots/metrics/heldout/attention_share.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in heldout[1:]] == [0, 3, 6]  # 0: the pretrained UNet
    assert float(heldout[1].split("\t")[1]) == pytest.approx(summary["base_heldout_attention_share"])
    assert sorted(p.name for p in run_dir(trained).iterdir()) == ["step-000004", "step-000006"]
    assert run_dir(trained).name == summary["run"] and len(summary["run"]) == 16
    total = (out / "dvclive/plots/metrics/loss/total.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in total[1:]] == [1, 2, 3, 4, 5, 6]
    for group in (4, 8, 16):
        assert (out / f"dvclive/plots/metrics/loss/token_{group}.tsv").exists()
        assert (out / f"dvclive/plots/metrics/loss/pixel_{group}.tsv").exists()
    heatmaps = sorted((out / "dvclive/plots/images/attention").glob("*.png"))
    assert [p.name for p in heatmaps] == ["step-000003.png", "step-000006.png"]

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(train_ws / "models/tiny/sd", safety_checker=None)
    pipe.unet = UNet2DConditionModel.from_pretrained(out / "unet")
    image = pipe("a teddy bear next to an apple", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    base = unet_state(train_ws / "models/tiny/sd/unet")
    assert any(not torch.equal(base[k], v) for k, v in unet_state(out / "unet").items())


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_to_the_same_weights(train_ws: Path, trained: Path, tmp_path: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", checkpointing_steps=1, checkpoints_total_limit=2)
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "--params", "params.yaml"], cwd=ws, env=ENV)
    deadline = time.time() + HANG_TIMEOUT_S
    while time.time() < deadline and not list((ws / "data/train/checkpoints").glob("*/step-000002")):
        assert proc.poll() is None, "training finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ws / "data/train/unet").exists()
    out = run_stage(ws, "stages.train", "--log-level", "INFO")
    assert "resuming from" in out.stderr
    assert_same_weights(ws / "data/train/unet", trained / "data/train/unet")
    total = (ws / "data/train/dvclive/plots/metrics/loss/total.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in total[1:]] == [1, 2, 3, 4, 5, 6]


LAUNCH_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519",
            "-m"]


def _heldout_curve(ws: Path) -> dict[int, float]:
    rows = (ws / "data/train/dvclive/plots/metrics/heldout/attention_share.tsv").read_text().splitlines()[1:]
    return {int(r.split("\t")[0]): float(r.split("\t")[1]) for r in rows}


@pytest.mark.slow
def test_two_processes_with_heatmaps_and_heldout_at_step_1_equal_one_process(train_ws: Path, trained: Path,
                                                                            tmp_path: Path):
    """Held-out grounding split over the processes and gathered; heatmaps drawn from both processes' rows;
    the latent and text caches filled by both processes, each its share, and trained from."""
    ws = make_train_ws(train_ws, tmp_path / "ws", train_batch_size=1, heatmap_steps=1, cache_latents=True,
                       cache_text=True)
    run_stage(ws, "stages.train", launcher=LAUNCH_2)
    summary = json.loads((ws / "data/train/summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 2 and summary["side_work_errors"] == []
    for cache in ("latents", "text"):  # one shard of each process's share
        assert len(list((ws / "data/train" / cache).glob("*/part-*.safetensors"))) == 2, cache
    assert_same_training(ws / "data/train/unet", trained / "data/train/unet", train_ws / "models/tiny/sd/unet")
    two, one = _heldout_curve(ws), _heldout_curve(trained)
    assert sorted(two) == list(range(7))
    assert all(two[s] == pytest.approx(one[s], rel=1e-3) for s in one), (two, one)
    assert len(list((ws / "data/train/dvclive/plots/images/attention").glob("*.png"))) == 6


@pytest.mark.slow
def test_one_process_to_a_checkpoint_then_two_processes_equal_one_process_throughout(
        train_ws: Path, trained: Path, tmp_path: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", max_train_steps=3)
    run_stage(ws, "stages.train")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update(max_train_steps=6, train_batch_size=1)  # the same global batch of 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stage(ws, "stages.train", launcher=LAUNCH_2)
    summary = json.loads((ws / "data/train/summary.json").read_text())
    assert summary["processes"] == 2 and summary["resumed_from_step"] == 3 and summary["accumulation"] == 1
    assert_same_training(ws / "data/train/unet", trained / "data/train/unet", train_ws / "models/tiny/sd/unet")


def test_gradient_accumulation_equals_a_larger_batch(train_ws: Path, trained: Path, tmp_path: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", train_batch_size=1)
    run_stage(ws, "stages.train")
    assert_same_training(ws / "data/train/unet", trained / "data/train/unet", train_ws / "models/tiny/sd/unet")


def test_a_diverging_run_stops_naming_step_and_examples_and_keeps_the_last_good_checkpoint(
    train_ws: Path, tmp_path: Path
):
    ws = make_train_ws(train_ws, tmp_path / "ws", learning_rate=1e30, checkpointing_steps=1, max_train_steps=5)
    proc = run_stage(ws, "stages.train", check=False)
    assert proc.returncode != 0
    assert "TrainingDiverged" in proc.stderr and "non-finite loss" in proc.stderr
    assert "at step 2 on caption ids [" in proc.stderr
    assert f"last good checkpoint: data/train/checkpoints/{run_dir(ws).name}/step-000001" in proc.stderr
    assert [p.name for p in run_dir(ws).iterdir()] == ["step-000001"]
    assert not (ws / "data/train/unet").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_steps_with_heatmaps_heldout_grounding_and_a_checkpoint_at_step_1(train_ws: Path, tmp_path: Path,
                                                                             precision: str):
    """Side work after the checkpoint of its step, in fp32 and bf16: pictures, held-out values, checkpoints."""
    ws = make_train_ws(train_ws, tmp_path / "ws", mixed_precision=precision, max_train_steps=2, heatmap_steps=1,
                       checkpointing_steps=1)
    run_stage(ws, "stages.train")
    out = ws / "data/train"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["side_work_errors"] == []
    assert all(torch.isfinite(torch.tensor(v)) for k, v in summary.items() if k.startswith("final_"))
    assert [p.name for p in sorted((out / "dvclive/plots/images/attention").glob("*.png"))] == [
        "step-000001.png", "step-000002.png"]
    heldout = (out / "dvclive/plots/metrics/heldout/attention_share.tsv").read_text().splitlines()
    assert [int(r.split("\t")[0]) for r in heldout[1:]] == [0, 1, 2]
    assert sorted(p.name for p in run_dir(ws).iterdir()) == ["step-000001", "step-000002"]
    # the held-out values of a step reach its checkpoint although they are measured after it
    state = json.loads((run_dir(ws) / "step-000001/state.json").read_text())
    assert 0 < state["last"]["heldout_attention_share"] < 1 and state["settings"]["mixed_precision"] == precision


def _resume_with(trained: Path, ws: Path, *args: str, **train) -> tuple[dict, set[Path], str]:
    """Copy the trained workspace's checkpoints into a new workspace with other settings and run it."""
    shutil.copytree(trained / "data/train/checkpoints", ws / "data/train/checkpoints")
    before = all_files(ws)
    out = run_stage(ws, "stages.train", "--log-level", "INFO", *args)
    summary = json.loads((ws / "data/train/summary.json").read_text()) if not args else {}
    assert before <= all_files(ws), f"checkpoint files removed: {before - all_files(ws)}"
    return summary, before, out.stderr


def test_other_settings_train_beside_the_old_checkpoints_and_delete_none(trained: Path, tmp_path: Path,
                                                                         train_ws: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", lambda_token=0.0, gamma_pixel=0.0)
    summary, _, log = _resume_with(trained, ws)
    assert "resuming from" not in log and "lambda_token: 1.0 -> 0.0" in log
    assert summary["resumed_from_step"] == 0 and summary["final_token"] == 0.0 and summary["other_runs_kept"] == 1
    assert len([p for p in (ws / "data/train/checkpoints").iterdir()]) == 2
    # only when asked: --prune-other-runs removes the other run, and nothing of this one
    mine = {p for p in all_files(ws) if p.parts[3] == summary["run"]}
    out = run_stage(ws, "stages.train", "--prune-other-runs")
    assert all_files(ws) == mine and summary["run"] in out.stdout


def test_a_code_change_alone_resumes_and_says_so(trained: Path, tmp_path: Path, train_ws: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", max_train_steps=7)
    shutil.copytree(trained / "data/train/checkpoints", ws / "data/train/checkpoints")
    newest = run_dir(ws) / "step-000006/state.json"
    state = json.loads(newest.read_text())
    current, state["code_digest"] = state["code_digest"], "0" * 16  # as written by other code
    newest.write_text(json.dumps(state))
    before = all_files(ws)
    run_stage(ws, "stages.train")
    summary = json.loads((ws / "data/train/summary.json").read_text())
    assert summary["resumed_from_step"] == 6
    assert summary["resumed_across_code_change"] == {"from": "0" * 16, "to": current}
    assert before - {p for p in before if "step-000004" in str(p)} <= all_files(ws)  # step 4: rotated (limit 2)


def test_resume_never_starts_afresh_beside_the_old_run(trained: Path, tmp_path: Path, train_ws: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", resume="never", max_train_steps=1, checkpointing_steps=1)
    summary, _, _ = _resume_with(trained, ws)
    assert summary["resumed_from_step"] == 0
    key = summary["run"].split(".")[0]
    assert sorted(p.name for p in (ws / "data/train/checkpoints").iterdir()) == [key, key + ".1"]
    assert summary["run"].endswith(".1")


def test_a_global_batch_the_processes_cannot_make_stops_before_any_work(train_ws: Path, tmp_path: Path):
    ws = make_train_ws(train_ws, tmp_path / "ws", global_batch_size=3)
    proc = run_stage(ws, "stages.train", check=False)
    assert proc.returncode != 0 and "global_batch_size=3 is not a multiple of train.train_batch_size=2" in proc.stderr
    assert not (ws / "data/train").exists()


@pytest.mark.slow
def test_supervision_raises_attention_inside_masks_on_held_out_images(train_ws: Path, tmp_path: Path):
    """K steps with the demo's lambda, gamma and learning rate against the same K steps (same seed)
    with lambda = gamma = 0, and a LoRA with the demo's lambda and gamma.

    Exact demo instance masks; 3 of the 12 images held out. If the token indices or the losses
    were wrong, the supervised run would not move attention onto unseen images' objects.
    """
    demo = yaml.safe_load((train_ws / "params.yaml").read_text())["train"]
    assert demo["lambda_token"] > 0 and demo["gamma_pixel"] > 0
    runs = {}
    on_settings = {"lambda_token": demo["lambda_token"], "gamma_pixel": demo["gamma_pixel"]}
    for name, settings in {"on": on_settings, "off": {"lambda_token": 0.0, "gamma_pixel": 0.0},
                           # a LoRA (rank 4) with the README's demo command: 10x the learning rate
                           "lora": {**on_settings, "adapter": "lora", "learning_rate": 10 * demo["learning_rate"]}
                           }.items():
        ws = make_train_ws(train_ws, tmp_path / name, **{"max_train_steps": 30, "learning_rate": demo["learning_rate"],
                           "global_batch_size": 4, "train_batch_size": 4, "holdout_images": 3,
                           "checkpointing_steps": 1000, "heatmap_steps": 1000, "gradient_checkpointing": False,
                           **settings})
        run_stage(ws, "stages.train")
        runs[name] = json.loads((ws / "data/train/summary.json").read_text())
    on, off, lora = runs["on"], runs["off"], runs["lora"]
    assert lora["base_heldout_attention_share"] == on["base_heldout_attention_share"]  # a fresh LoRA is the base
    assert lora["final_heldout_attention_share"] > 1.25 * lora["base_heldout_attention_share"], lora
    assert on["base_heldout_attention_share"] == off["base_heldout_attention_share"]  # same pretrained UNet
    assert on["final_heldout_attention_share"] > 1.25 * off["final_heldout_attention_share"], runs
    assert on["final_heldout_attention_share"] > 1.25 * on["base_heldout_attention_share"], on
    assert on["final_heldout_attention_iou"] > on["base_heldout_attention_iou"], on


def test_full_image_masks_are_not_supervised_and_flagged(train_ws: Path, tmp_path: Path):
    """Masks covering the whole image (the tiny random SAM's) carry no signal: the summary says so
    instead of reporting a held-out share of 1.0."""
    from pipeline.core.masks import encode_rle
    from pipeline.core.schemas import MASKS_SCHEMA
    from pipeline.core.tables import read_table, write_rows

    rows = read_table(train_ws / "data/reference_masks/masks").to_pylist()
    for r in rows:
        r["rle"] = encode_rle(np.ones((r["height"], r["width"]), dtype=bool))
    ws = make_train_ws(train_ws, tmp_path / "ws", masks="full_masks", max_train_steps=1, heatmap_steps=1)
    write_rows(rows, MASKS_SCHEMA, ws / "full_masks" / "part-00000.parquet")
    run_stage(ws, "stages.train")
    summary = json.loads((ws / "data/train/summary.json").read_text())
    assert summary["full_image_masks"] == len(rows) and summary["supervised_nouns"] == 0
    assert summary["final_token"] == 0.0 and summary["heldout_supervised_nouns"] == 0
    assert not any(k.startswith(("final_heldout", "base_heldout")) for k in summary)
    assert [f.split(":")[0] for f in summary["flags"]] == [
        "random_weights", "no_supervised_nouns", "heldout_without_supervised_nouns", "full_image_masks"]
    rejects = read_table(ws / "data/train/rejects.parquet").to_pylist()
    assert len(rejects) == len(rows) and {r["reason"] for r in rejects} == {"mask_covers_image"}


def test_dataloader_workers_give_the_same_training_and_a_resume_without_optimizer_state_says_so(
        train_ws: Path, tmp_path: Path):
    """Two steps with 0 and with 2 DataLoader workers: equal losses and weights."""
    runs = {}
    for workers in (0, 2):
        ws = make_train_ws(train_ws, tmp_path / f"w{workers}", max_train_steps=2, checkpointing_steps=1,
                           num_workers=workers, checkpoint_optimizer=workers == 0)
        run_stage(ws, "stages.train")
        runs[workers] = ws
    curves = [(ws / "data/train/dvclive/plots/metrics/loss/total.tsv").read_text() for ws in runs.values()]
    assert curves[0] == curves[1] and len(curves[0].splitlines()) == 3
    assert_same_weights(runs[0] / "data/train/unet", runs[2] / "data/train/unet", atol=0.0)
    # train.checkpoint_optimizer: false keeps the UNet only; a resume restarts AdamW and says so
    ckpt = run_dir(runs[2]) / "step-000002"
    assert (ckpt / "unet/diffusion_pytorch_model.safetensors").is_file()
    assert not (ckpt / "optimizer.safetensors").exists()
    assert (run_dir(runs[0]) / "step-000002/optimizer.safetensors").is_file()
    params = yaml.safe_load((runs[2] / "params.yaml").read_text())
    params["train"]["max_train_steps"] = 3
    (runs[2] / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_stage(runs[2], "stages.train", "--log-level", "INFO")
    assert "resuming from" in out.stderr and "AdamW's moments restart from zero at step 2" in out.stderr


def test_lora_trains_checkpoints_its_adapter_resumes_and_loads_into_the_pipeline_and_evaluate(
        train_ws: Path, tmp_path: Path):
    """``train.adapter: lora``: the same stage, the same ``data/train/unet`` out holding the LoRA."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from pipeline.evaluate.run import model_digest
    from pipeline.models.stable_diffusion import SDExpectation, load_sd_pipeline

    lora = dict(adapter="lora", lora_rank=4, lora_alpha=8.0, max_train_steps=4, checkpointing_steps=2, heatmap_steps=2)
    ws = make_train_ws(train_ws, tmp_path / "ws", **lora)
    run_stage(ws, "stages.train")
    out = ws / "data/train"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["side_work_errors"] == [] and 0 < summary["final_heldout_attention_share"] < 1
    assert sorted(p.name for p in (out / "unet").iterdir()) == [
        "README.md", "adapter.json", "heatmap.png", "pytorch_lora_weights.safetensors", "samples.png"]
    card = (out / "unet/README.md").read_text()
    assert "library_name: diffusers" in card and "- lora" in card and "base_model: models/tiny/sd" in card
    assert 'pipe.load_lora_weights("data/train/unet")' in card and "![samples](samples.png)" in card
    assert "random_weights" in card and "lora_rank: 4" in card
    weights = load_file(str(out / "unet/pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("unet.") and ".lora." in k for k in weights)
    # checkpoints hold the adapter and AdamW's state of its parameters only
    ckpt = run_dir(ws) / "step-000002"
    assert sorted(p.name for p in (ckpt / "unet").iterdir()) == ["adapter.json", "pytorch_lora_weights.safetensors"]
    moments = load_file(str(ckpt / "optimizer.safetensors"))
    assert sum(v.numel() for k, v in moments.items() if k.endswith("exp_avg")) == sum(v.numel() for v in weights.values())
    assert json.loads((ckpt / "state.json").read_text())["settings"]["adapter"] == "lora"
    # resume from step 2 in another workspace: the same LoRA as the uninterrupted run
    again = make_train_ws(train_ws, tmp_path / "again", **lora)
    shutil.copytree(ckpt, again / "data/train/checkpoints" / run_dir(ws).name / ckpt.name)
    log = run_stage(again, "stages.train", "--log-level", "INFO").stderr
    assert "resuming from" in log
    resumed = load_file(str(again / "data/train/unet/pytorch_lora_weights.safetensors"))
    assert max(float((resumed[k] - weights[k]).abs().max()) for k in weights) <= 1e-6
    # the user's way: the base pipeline + load_lora_weights; and evaluate's loader with the profile's check
    base = train_ws / "models/tiny/sd"
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.load_lora_weights(out / "unet")
    image = pipe("a teddy bear next to an apple", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    evaluated = load_sd_pipeline(str(base), str(out / "unet"), "cpu",
                                 expect=SDExpectation(cross_attention_dim=32, prediction_type="epsilon"))
    x = (torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32))
    with torch.no_grad():
        assert torch.allclose(evaluated.unet(*x).sample, pipe.unet(*x).sample, atol=1e-6)
    assert model_digest(str(base), str(out / "unet")) != model_digest(str(base), str(base / "unet"))


def test_cached_latents_and_text_give_the_same_losses_and_weights(train_ws: Path, tmp_path: Path):
    """``train.cache_latents``: the posterior's mean and std of each image, encoded once; the draws per
    (seed, step, position) unchanged. ``train.cache_text``: each caption's conditioning, encoded once.
    Micro-batches of 1: bit for bit the same training."""
    from safetensors import safe_open

    runs = {}
    for cache in (False, True):
        ws = make_train_ws(train_ws, tmp_path / f"cache{int(cache)}", max_train_steps=2, train_batch_size=1,
                           checkpointing_steps=2, heatmap_steps=2, cache_latents=cache, cache_text=cache)
        run_stage(ws, "stages.train")
        runs[cache] = ws
    curves = [(ws / "data/train/dvclive/plots/metrics/loss/total.tsv").read_text() for ws in runs.values()]
    assert curves[0] == curves[1] and len(curves[0].splitlines()) == 3
    assert_same_weights(runs[False] / "data/train/unet", runs[True] / "data/train/unet", atol=0.0)
    assert not (runs[False] / "data/train/latents").exists()
    shards = sorted((runs[True] / "data/train/latents").glob("*/part-*.safetensors"))
    summary = json.loads((runs[True] / "data/train/summary.json").read_text())
    with safe_open(str(shards[0]), "pt") as f:
        images = json.loads(f.metadata()["images"])
        mean, std = f.get_tensor("mean"), f.get_tensor("std")
    assert len(shards) == 1 and len(images) == summary["train_examples"] // 2  # the demo: 2 captions per image
    assert mean.shape == std.shape == (len(images), 4, 16, 16) and mean.dtype == torch.float32 and (std > 0).all()
    texts = sorted((runs[True] / "data/train/text").glob("*/part-*.safetensors"))
    with safe_open(str(texts[0]), "pt") as f:
        captions = json.loads(f.metadata()["captions"])
        assert f.get_tensor("hidden").shape == (len(captions), 77, 32) and "pooled" not in f.keys()
    assert len(texts) == 1 and len(captions) == len({c for c, in captions}) >= summary["train_examples"] // 2
    # the settings are the same run: a cached rerun resumes the uncached run's checkpoint
    assert summary["run"] == json.loads((runs[False] / "data/train/summary.json").read_text())["run"]
