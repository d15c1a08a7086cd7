"""GPU smoke run: the stage code of ground, segment, train and evaluate on CUDA, a tiny SDXL LoRA, SD1.4 steps.

    python -m bench.gpu_smoke [--out DIR] [--work DIR]   # make gpu-smoke: one GPU, at most 6 min 40 s
    python -m bench.gpu_smoke --dry-run                  # the same plumbing on the CPU, tiny sizes (tested)

Parts, in order; each is isolated (an exception is recorded with the tail of its traceback and
the next part runs) and has a time budget (a part past it is stopped and recorded as timed out):

- ``prepare``: the demo dataset (``stages.demo_data``, 8 images), the tiny models
  (``stages.demo_models``), ``captions``, ``nouns`` and ``reference_masks``. The nouns are the
  demo's own ground truth, written as a TokenCompose ``metadata.jsonl`` (``dataset.format:
  tokencompose``, ``nouns.source: official``, as the paper profiles), so spaCy is not needed.
- ``ground``: ``stages.ground`` on the tiny Grounding DINO, ``ground.device`` cuda.
- ``segment``: ``stages.segment`` on the tiny SAM, cuda.
- ``train``: ``stages.train`` on the tiny Stable Diffusion, cuda: heatmap, held-out grounding and
  checkpoint at step 1 (``max_train_steps: 1``), then the same stage again with
  ``max_train_steps: 2``, which must resume from that checkpoint (``resumed_from_step: 1``).
- ``evaluate``: ``stages.evaluate --model tokencompose`` (the UNet just trained): MultiGen,
  Object Accuracy, FID and attention grounding with the tiny detectors, cuda.
- ``sdxl_lora``: ``stages.train`` on the tiny SDXL of ``demo_models`` (two text encoders, pooled
  embedding, time ids; ``expect.family: sdxl``): a LoRA (rank 4), bf16, cached latents and text, 2 steps
  with heatmaps, held-out grounding and a checkpoint after each (``TRAIN['sdxl']``). It must end
  with no side-work error, the LoRA file written, checkpoints, finite losses (each step's logged
  total and the summary's ``final_*``).
- ``sd14_build``: Stable Diffusion 1.4's architecture with random weights
  (``pipeline.models.rehearsal.build_sd``), built here, saved as a diffusers folder.
- ``sd14_fp32``, ``sd14_bf16``: ``stages.train`` (``run_train`` itself) on it at 512 px,
  2 optimizer steps of batch 1 x accumulation 2, the paper's losses, gradient checkpointing,
  heatmap, held-out grounding and checkpoint (the UNet; AdamW's state is checkpointed and resumed
  in ``train``) at step 1, in fp32 and in bf16 mixed precision: time per optimizer step (forward,
  losses, backward, clipping, AdamW), of the heatmap, the held-out grounding and the checkpoint.

``--dry-run`` runs every part on the CPU with tiny sizes (the SD1.4 parts train the tiny Stable
Diffusion instead, ``sd14_build`` does nothing; ``sdxl_lora`` is the same run, bf16 on the CPU).
Without ``--dry-run`` a machine without CUDA stops before any work.

``prepare`` and ``ground`` (groundingdino-py needs transformers < 5), and the SDXL and the two SD1.4
training parts (each its own CUDA context and mixed-precision state), run in a child process
(``python -m bench.gpu_smoke --child PART``), with ``GPU_REPORT_GDINO_SITE`` first on its
``PYTHONPATH`` for the first two when it is set (``bench/gpu_run.sh`` installs transformers 4.57
there); the others run in this process. Every stage's settings come from the repository's
``params.yaml`` with the overrides below (``overrides``; train's in ``TRAIN``, one place).

The report (``gpu_smoke.md`` and ``gpu_smoke.json``, rewritten after every part, in ``--out``,
default ``$OUT`` or ``bench/out``) names the card, torch, CUDA and library versions, and per part:
pass or the error, seconds, CUDA peak memory (``torch.cuda.max_memory_allocated``) and what it
measured; heatmaps and summaries are copied beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

log = logging.getLogger("bench.gpu_smoke")
REPO = Path(__file__).resolve().parents[1]
SITE_ENV = "GPU_REPORT_GDINO_SITE"   # a folder with transformers < 5, for groundingdino-py
FAIL_ENV = "GPU_SMOKE_FAIL"          # names a part that raises at its start (to check the isolation)
COMMAND = "python -m bench.gpu_smoke"
SHIMS = str(REPO / "bench" / "shims")

#: The training settings of every training part, by name, over params.yaml's ``train`` section.
#: BATCH is the one place that says how large a step is.
BATCH = {"global_batch_size": 2, "train_batch_size": 1}
TRAIN = {
    "tiny": {**BATCH, "max_train_steps": 2, "checkpointing_steps": 1, "heatmap_steps": 1, "heatmap_captions": 2,
             "holdout_images": 2, "num_workers": 0},
    "sd14": {**BATCH, "pretrained": "models/sd14", "expect": {"cross_attention_dim": 768, "prediction_type": "epsilon"},
             "resolution": 512, "max_train_steps": 2, "checkpointing_steps": 1, "heatmap_steps": 1,
             "heatmap_captions": 1, "holdout_images": 2, "lambda_token": 1.0e-3, "gamma_pixel": 5.0e-5,
             "learning_rate": 5.0e-6, "gradient_checkpointing": True, "num_workers": 2,
             # the UNet alone in its checkpoints: AdamW's state (6.9 GB) would double the write time; the
             # tiny run checkpoints and resumes it on the GPU
             "checkpoint_optimizer": False},
    # the tiny SDXL of demo_models (two text encoders, pooled embedding, time ids): a LoRA in bf16 from
    # cached latents, as tests/test_sdxl.py trains it through the stage
    "sdxl": {**BATCH, "pretrained": "models/tiny/sdxl",
             "expect": {"cross_attention_dim": 64, "prediction_type": "epsilon", "family": "sdxl"},
             "adapter": "lora", "lora_rank": 4, "lora_alpha": 4.0, "mixed_precision": "bf16", "cache_latents": True,
             "cache_text": True,
             "max_train_steps": 2, "checkpointing_steps": 1, "heatmap_steps": 1, "heatmap_captions": 2,
             "holdout_images": 2, "card_samples": 1, "card_sample_steps": 2, "num_workers": 0,
             "out_dir": "data/train-sdxl"},
}
#: --dry-run: the SD1.4 parts train the tiny Stable Diffusion at this size instead
DRY_SD = {"pretrained": "models/tiny/sd", "expect": {"cross_attention_dim": 32, "prediction_type": "epsilon"},
          "resolution": 64, "num_workers": 0}
#: seconds per part on the GPU, 6 minutes 40 s in all; a part also gets what the parts before it left
#: unused (its deadline is the sum of the budgets so far), never less than its own budget while
#: the 400 s last. --dry-run: DRY_BUDGET_S each.
BUDGET_S = {"prepare": 40, "ground": 25, "segment": 15, "train": 35, "evaluate": 35, "sdxl_lora": 40,
            "sd14_build": 70, "sd14_fp32": 80, "sd14_bf16": 60}
DRY_BUDGET_S = 120
#: parts run in a child process, and those of them that get the Grounding DINO site
CHILD_PARTS = ("prepare", "ground", "sdxl_lora", "sd14_fp32", "sd14_bf16")
#: versions named in the report (this process's; the children with the site get transformers from it)
DISTRIBUTIONS = ("transformers", "diffusers", "accelerate", "peft", "dvclive", "groundingdino-py", "segment-anything",
                 "pycocotools", "timm", "torchvision", "scipy")
SITE_PARTS = ("prepare", "ground")


def overrides(device: str, dry_run: bool) -> dict[str, dict]:
    """params.yaml sections -> the keys this run sets (the rest as in params.yaml).

    The OWL detectors' default (PIL) image processors need scipy with transformers 5; without
    scipy the evaluate part uses their torchvision processors (``fast_processor``), and says so.
    """
    fast = not _has("scipy")
    return {
        "demo_data": {"num_images": 8},
        "dataset": {"format": "tokencompose", "captions": "data/demo/annotations/metadata.jsonl",
                    "coco_captions": "data/demo/annotations/captions_train.json"},
        "nouns": {"source": "official", "occurrence": "first", "token_rule": "official"},
        "ground": {"device": device, "shard_size": 6},
        "segment": {"device": device, "shard_size": 6},
        "train": {**TRAIN["tiny"], "device": device},
        "evaluate": {
            "device": device, "grid_images": 2,
            "models": {"base": "models/tiny/sd/unet", "tokencompose": "data/train/unet"},
            "generation": {"steps": 4, "batch_size": 4},
            "multigen": {"num_prompts": 2, "images_per_prompt": 1, "heatmap_prompts": 1, "fast_processor": fast},
            "object_accuracy": {"num_prompts": 2, "fast_processor": fast},
            "fid": {"num_images": 4, "batch_size": 4},
            "attention": {"holdout_images": TRAIN["tiny"]["holdout_images"], "timesteps": [500]},
        },
    }


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "expect" else v
    return out


def smoke_params(device: str, dry_run: bool) -> dict:
    return _merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides(device, dry_run))


def sd14_params(ws: Path, precision: str, dry_run: bool) -> Path:
    """A params file for one SD1.4 training part: the workspace's, train section from ``TRAIN['sd14']``."""
    train = {**TRAIN["sd14"], **(DRY_SD if dry_run else {}), "mixed_precision": precision,
             "out_dir": f"data/train-sd14-{precision}"}
    return train_params(ws, train, f"sd14-{precision}")


def train_params(ws: Path, train: dict, name: str) -> Path:
    """``<ws>/params-<name>.yaml``: the workspace's params with ``train`` over its train section."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"] = _merge(params["train"], train)
    path = ws / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- helpers


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _peak_gib() -> float | None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def _cwd(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _stage(module: str, *args: str, params: str = "params.yaml") -> None:
    """Run ``stages.<module>.main`` in this process (the workspace is the working directory)."""
    import importlib

    importlib.import_module(f"stages.{module}").main(["--params", params, *args])


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def instrument_train():
    """Time ``run_train``'s own step code from outside: each optimizer step (first micro-step to
    the logged step), heatmaps, held-out grounding and checkpoints (CUDA synchronised).

    Yields a dict filled during the run: ``step_s`` (one value per step), ``total`` (each step's logged
    loss), ``heatmap_s``,
    ``heldout_s`` (step 0: the pretrained UNet), ``checkpoint_s``, ``not_timed``: hooks the training
    code no longer has.
    """
    import pipeline.train.live as live
    import pipeline.train.loop as loop
    from pipeline.train.side_work import SideWork

    timing: dict[str, Any] = {"step_s": [], "total": [], "heatmap_s": [], "heldout_s": [], "checkpoint_s": [],
                              "not_timed": []}
    state: dict[str, float | None] = {"start": None}
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner, name: str, wrap) -> None:
        orig = getattr(owner, name, None)
        if orig is None:
            timing["not_timed"].append(name)
            return
        patched.append((owner, name, orig))
        setattr(owner, name, wrap(orig))

    def micro(orig):
        def wrapper(*a, **k):
            if state["start"] is None:
                _sync()
                state["start"] = time.perf_counter()
            return orig(*a, **k)
        return wrapper

    def logged(orig):
        def wrapper(self, *a, **k):
            if state["start"] is not None:
                _sync()
                timing["step_s"].append(round(time.perf_counter() - state["start"], 4))
                state["start"] = None
            values = a[1] if len(a) > 1 else k.get("values", {})
            total = values.get("total") if isinstance(values, dict) else None
            timing["total"].append(None if total is None else round(float(total), 5))
            return orig(self, *a, **k)
        return wrapper

    def timed(key):
        def wrap(orig):
            def wrapper(*a, **k):
                _sync()
                t0 = time.perf_counter()
                out = orig(*a, **k)
                _sync()
                timing[key].append(round(time.perf_counter() - t0, 3))
                return out
            return wrapper
        return wrap

    patch(loop, "micro_step", micro)
    patch(live.TrainLogger, "log_step", logged)
    patch(SideWork, "heatmap_rows", timed("heatmap_s"))
    patch(SideWork, "heldout", timed("heldout_s"))
    patch(loop, "save_checkpoint", timed("checkpoint_s"))
    try:
        yield timing
    finally:
        for owner, name, orig in reversed(patched):
            setattr(owner, name, orig)


# ----------------------------------------------------------------------------- parts


def write_metadata(ws: Path) -> Path:
    """The demo's captions as a TokenCompose ``metadata.jsonl``: each caption's ground-truth nouns."""
    objects = _read_json(ws / "data/demo/annotations/demo_objects.json")
    files = {img["image_id"]: img["file_name"] for img in objects["images"]}
    path = ws / "data/demo/annotations/metadata.jsonl"
    with path.open("w") as f:
        for cap in objects["captions"]:
            # TokenCompose's mask paths are not read: the masks come from reference_masks
            attn = [[m["word"], f"mask/{cap['caption_id']}_{i}.png"] for i, m in enumerate(cap["mentions"])]
            f.write(json.dumps({"file_name": files[cap["image_id"]], "text": cap["caption"], "attn_list": attn}) + "\n")
    return path


def build_models_but_grounding_dino(out: Path, seed: int = 0) -> None:
    """What ``demo_models`` builds, less Grounding DINO (``build_tiny_models``' builders, in its order)."""
    from pipeline.core.provenance import write_random_weights_marker
    from pipeline.models.clip_tokenizer import build_clip_tokenizer
    from pipeline.models.clip_vision_tiny import build_tiny_clip_vision
    from pipeline.models.owl_tiny import build_tiny_owlv2, build_tiny_owlvit
    from pipeline.models.sam import build_tiny_sam
    from pipeline.models.sdxl import build_tiny_sdxl
    from pipeline.models.stable_diffusion import build_tiny_sd

    tok = build_clip_tokenizer(out / "clip-tokenizer")
    build_tiny_sam(out / "sam", seed)
    build_tiny_sd(out / "sd", seed, tokenizer_dir=tok)
    build_tiny_sdxl(out / "sdxl", seed, tokenizer_dir=tok)
    build_tiny_owlv2(out / "owlv2", seed, tok)
    build_tiny_owlvit(out / "owlvit", seed, tok)
    build_tiny_clip_vision(out / "clip-vision", seed)
    write_random_weights_marker(out, "demo_models", seed)


def part_prepare(ws: Path, device: str, dry_run: bool) -> dict:
    import transformers

    _stage("demo_data")
    try:
        _stage("demo_models")
        failed = None
    except Exception as e:   # noqa: BLE001  most likely groundingdino-py: the other parts still get their models
        log.exception("demo_models failed; building the tiny models but Grounding DINO")
        build_models_but_grounding_dino(ws / "models/tiny")
        failed = e
    write_metadata(ws)
    _stage("captions")
    _stage("nouns")
    _stage("reference_masks")
    if failed is not None:
        raise failed
    nouns = _read_json(ws / "data/nouns/summary.json")
    return {"captions": _read_json(ws / "data/captions/summary.json").get("kept"),
            "nouns": nouns.get("nouns", nouns.get("total_nouns")),
            "transformers": transformers.__version__}


def part_ground(ws: Path, device: str, dry_run: bool) -> dict:
    import transformers

    _stage("ground")
    s = _read_json(ws / "data/ground/summary.json")
    return {"nouns_with_box": s.get("nouns_with_box"), "nouns_without_box": s.get("nouns_without_box"),
            "transformers": transformers.__version__}


def part_segment(ws: Path, device: str, dry_run: bool) -> dict:
    _stage("segment")
    s = _read_json(ws / "data/segment/summary.json")
    return {"masks": s.get("masks"), "rejected_nouns": s.get("rejected_nouns")}


def _train_run(params: str, out_dir: Path) -> tuple[dict, dict]:
    with instrument_train() as timing:
        _stage("train", params=params)
    return _read_json(out_dir / "summary.json"), timing


def _train_facts(summary: dict, timing: dict, out_dir: Path) -> dict:
    heat = sorted((out_dir / "dvclive/plots/images/attention").glob("step-*.png"))
    ckpts = sorted(p.name for p in (out_dir / "checkpoints").glob("*/step-*"))
    facts = {"resumed_from_step": summary.get("resumed_from_step"), "final_total": summary.get("final_total"),
             "heatmaps": [p.name for p in heat], "checkpoints": ckpts,
             "heldout_share": summary.get("final_heldout_attention_share"),
             "base_heldout_share": summary.get("base_heldout_attention_share"),
             "side_work_errors": summary.get("side_work_errors"), **timing}
    if not timing["not_timed"]:
        facts.pop("not_timed")
    return facts


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def part_train(ws: Path, device: str, dry_run: bool) -> dict:
    out = ws / "data/train"
    params = yaml.safe_load((ws / "params.yaml").read_text())
    first = copy.deepcopy(params)
    first["train"]["max_train_steps"] = 1
    (ws / "params-train-1.yaml").write_text(yaml.safe_dump(first, sort_keys=False))
    s1, t1 = _train_run("params-train-1.yaml", out)
    f1 = _train_facts(s1, t1, out)
    _require(s1.get("resumed_from_step") == 0, f"first run: resumed_from_step {s1.get('resumed_from_step')}")
    _require(any((out / "checkpoints").glob("*/step-000001")), "no checkpoint at step 1")
    _require((out / "dvclive/plots/images/attention/step-000001.png").is_file(), "no heatmap at step 1")
    _require("final_heldout_attention_share" in s1, "no held-out attention share at step 1")
    s2, t2 = _train_run("params.yaml", out)
    _require(s2.get("resumed_from_step") == 1, f"rerun to step 2: resumed_from_step {s2.get('resumed_from_step')}, not 1")
    for f in [*sorted(out.glob("dvclive/plots/images/attention/*.png")), out / "summary.json"]:
        _keep(ws, f, "train")
    return {"run_to_1": f1, "resumed_to_2": _train_facts(s2, t2, out)}


def part_evaluate(ws: Path, device: str, dry_run: bool) -> dict:
    _stage("evaluate", "--model", "tokencompose")
    m = _read_json(ws / "data/evaluate/tokencompose/metrics.json")
    out = {k: m.get("multigen", {}).get(k) for k in ("MG2", "MG3", "MG4", "MG5")}
    out.update({k: m.get(k) for k in ("object_accuracy", "fid", "latency_s_per_image")})
    out["attention_share"] = m.get("attention", {}).get("share")
    out["images"] = {k: v for k, v in m.get("counts", {}).items() if k.endswith("images")}
    params = yaml.safe_load((ws / "params.yaml").read_text())["evaluate"]
    if params["multigen"]["fast_processor"]:
        out["note"] = "no scipy: OWL detectors with their torchvision image processors (fast_processor)"
    return out


def part_sdxl_lora(ws: Path, device: str, dry_run: bool) -> dict:
    """The tiny SDXL's LoRA through ``stages.train`` in bf16: heatmaps, held-out grounding, checkpoints."""
    train = TRAIN["sdxl"]
    params = train_params(ws, train, "sdxl-lora")
    out = ws / train["out_dir"]
    try:
        summary, timing = _train_run(params.name, out)
    finally:
        for f in [*sorted(out.glob("dvclive/plots/images/attention/*.png")), *out.glob("summary.json")]:
            _keep(ws, f, "sdxl_lora")
    facts = _train_facts(summary, timing, out)
    lora = out / "unet/pytorch_lora_weights.safetensors"
    _require(summary.get("side_work_errors") == [], f"side_work_errors {summary.get('side_work_errors')}")
    _require(lora.is_file(), f"no LoRA written: {lora}")
    _require(bool(facts["checkpoints"]), "no checkpoint")
    _require(bool(facts["heatmaps"]) and facts["heldout_share"] is not None,
             f"heatmaps {facts['heatmaps']}, held-out share {facts['heldout_share']}")
    losses = {k: v for k, v in summary.items() if k.startswith("final_") and isinstance(v, (int, float))}
    losses.update({f"step {i + 1} total": v for i, v in enumerate(timing["total"])})
    _require(bool(losses) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses.values()),
             f"losses not all finite: {losses}")
    return {"family": "sdxl", "adapter": "lora", "lora_rank": train["lora_rank"],
            "precision": train["mixed_precision"], "lora_kb": round(lora.stat().st_size / 1024, 1), **facts}


def part_sd14_build(ws: Path, device: str, dry_run: bool) -> dict:
    if dry_run:
        return {"note": "--dry-run: the SD1.4 parts train the tiny Stable Diffusion"}
    from pipeline.core.provenance import write_random_weights_marker
    from pipeline.models.rehearsal import build_sd

    path = build_sd(ws / "models", "sd14", 0, ws / "models/tiny/clip-tokenizer")
    write_random_weights_marker(ws / "models", "gpu_smoke", 0)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"folder_gb": round(size / 1e9, 2)}


def _sd14(precision: str):
    def part(ws: Path, device: str, dry_run: bool) -> dict:
        params = sd14_params(ws, precision, dry_run)
        out = ws / f"data/train-sd14-{precision}"
        try:
            summary, timing = _train_run(params.name, out)
            facts = _train_facts(summary, timing, out)
            _require(facts["heatmaps"] and facts["checkpoints"], f"heatmaps {facts['heatmaps']}, checkpoints "
                     f"{facts['checkpoints']}")
            if not {"micro_step", "log_step"} & set(timing["not_timed"]):
                _require(len(timing["step_s"]) == 2, f"{len(timing['step_s'])} timed steps, not 2")
            facts["resolution"] = yaml.safe_load(params.read_text())["train"]["resolution"]
            return facts
        finally:
            for f in [*sorted(out.glob("dvclive/plots/images/attention/*.png")), *out.glob("summary.json")]:
                _keep(ws, f, f"sd14_{precision}")
            shutil.rmtree(out / "checkpoints", ignore_errors=True)   # GBs each
            shutil.rmtree(out / "unet", ignore_errors=True)
    return part


PARTS: dict[str, Callable[[Path, str, bool], dict]] = {
    "prepare": part_prepare, "ground": part_ground, "segment": part_segment, "train": part_train,
    "evaluate": part_evaluate, "sdxl_lora": part_sdxl_lora, "sd14_build": part_sd14_build, "sd14_fp32": _sd14("fp32"),
    "sd14_bf16": _sd14("bf16"),
}


def _keep(ws: Path, path: Path, part: str) -> None:
    """Copy a small output into ``<ws>/keep/`` (the report's folder gets it at the end)."""
    dst = ws / "keep" / f"{part}-{path.name}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, dst)


# ----------------------------------------------------------------------------- running a part


class PartTimeout(Exception):
    """A part ran past its budget."""


@contextlib.contextmanager
def _budget(seconds: float):
    """Raise PartTimeout in this (main) thread after ``seconds``."""
    def on_alarm(signum, frame):
        raise PartTimeout(f"over its budget of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _error(e: BaseException) -> dict:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": tb[-2500:]}


def run_part_here(name: str, ws: Path, device: str, dry_run: bool, budget: float) -> dict:
    """One part in this process: ``{"status", "seconds", "peak_cuda_gib", "details" | "error"...}``."""
    _free()
    _reset_peak()
    t0 = time.perf_counter()
    rec: dict[str, Any] = {}
    try:
        with _budget(budget), _cwd(ws):
            if os.environ.get(FAIL_ENV) == name:
                raise RuntimeError(f"failure injected by {FAIL_ENV}={name}")
            rec = {"status": "pass", "details": PARTS[name](ws, device, dry_run)}
    except PartTimeout as e:
        rec = {"status": "timeout", **_error(e)}
    except Exception as e:   # noqa: BLE001  the report records it and goes on
        rec = {"status": "error", **_error(e)}
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["peak_cuda_gib"] = _peak_gib()
    _free()
    return rec


def run_part_child(name: str, ws: Path, device: str, dry_run: bool, budget: float) -> dict:
    """One part in a child process (``--child``), with the Grounding DINO site first on its path."""
    site = os.environ.get(SITE_ENV, "") if name in SITE_PARTS else ""
    path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    cmd = [sys.executable, "-m", "bench.gpu_smoke", "--child", name, "--work", str(ws), "--device", device,
           "--budget", str(budget)] + (["--dry-run"] if dry_run else [])
    result = ws / f".{name}.json"
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
                              timeout=budget + 30)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {"status": "timeout", "error": f"child process killed after {budget + 30:.0f} s",
                "traceback": tail.decode(errors="replace") if isinstance(tail, bytes) else tail,
                "seconds": round(time.perf_counter() - t0, 1), "peak_cuda_gib": None}
    if result.is_file():
        rec = _read_json(result)
    else:
        rec = {"status": "error", "error": f"child process exited {proc.returncode} without a result",
               "traceback": proc.stderr[-2500:], "seconds": round(time.perf_counter() - t0, 1), "peak_cuda_gib": None}
    if site:
        rec["site"] = site
    return rec


# ----------------------------------------------------------------------------- the report


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": device, "card": torch.cuda.get_device_name() if device.startswith("cuda") else
           f"CPU ({platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})"}
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        env["card_memory_gib"] = round(total / 2**30, 1)
    from importlib.metadata import PackageNotFoundError, version

    for dist in DISTRIBUTIONS:
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            env[dist] = "missing"
    env[SITE_ENV] = os.environ.get(SITE_ENV, "")
    return env


def _fmt_details(d: dict | None) -> str:
    if not d:
        return ""
    parts = []
    for k, v in d.items():
        if isinstance(v, dict):
            parts.append(f"{k}: {{{_fmt_details(v)}}}")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        else:
            parts.append(f"{k} {v}")
    return "; ".join(parts).replace("|", "/")


def to_markdown(report: dict) -> str:
    env, parts = report["environment"], report["parts"]
    passed = sum(p["status"] == "pass" for p in parts.values())
    lines = [f"card: {env['card']}; torch {env['torch']} (CUDA {env['cuda']}); python {env['python']}",
             "libraries: " + ", ".join(f"{k} {env.get(k)}" for k in DISTRIBUTIONS)
             + (f"; Grounding DINO's site: {env[SITE_ENV]}" if env.get(SITE_ENV) else ""),
             f"command: {report['command']}; {report['started']}; {report['seconds']:.0f} s in all; "
             f"{passed} of {len(parts)} parts passed", "",
             "| part | result | time | budget | CUDA peak | details |", "|---|---|---:|---:|---:|---|"]
    for name, p in parts.items():
        peak = "" if p.get("peak_cuda_gib") is None else f"{p['peak_cuda_gib']:.2f} GiB"
        what = _fmt_details(p.get("details")) if p["status"] == "pass" else p.get("error", "")
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', 0):.1f} s | {p.get('budget_s', 0):.0f} s | {peak} "
                     f"| {what.replace(chr(10), ' ')} |")
    failed = {n: p for n, p in parts.items() if p["status"] != "pass" and p.get("traceback")}
    for name, p in failed.items():
        lines += ["", f"{name}: {p['error']}", "", "```", p["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_smoke.md").write_text(to_markdown(report))


def smoke(out: Path, work: Path | None = None, dry_run: bool = False, parts: list[str] | None = None,
          total_s: float | None = None) -> dict:
    """Run the parts, write the report after each; returns the report."""
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "use --dry-run for the CPU plumbing check")
    device = "cpu" if dry_run else "cuda"
    names = parts or list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; known: {list(PARTS)}")
    ws = Path(work) if work else Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(smoke_params(device, dry_run), sort_keys=False))
    flag = " --dry-run" if dry_run else ""
    report = {"command": COMMAND + flag, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "seconds": 0.0, "environment": environment(device), "parts": {}}
    total_s = total_s if total_s is not None else (DRY_BUDGET_S * len(PARTS) if dry_run else sum(BUDGET_S.values()))
    t0 = time.perf_counter()
    deadline = 0.0
    try:
        for name in names:
            own = DRY_BUDGET_S if dry_run else BUDGET_S[name]
            deadline += own
            elapsed = time.perf_counter() - t0
            left = total_s - elapsed
            budget = min(max(deadline - elapsed, own), left)
            if left < 5:
                rec = {"status": "skipped", "error": f"no time left of the {total_s:.0f} s in all", "seconds": 0.0}
            else:
                log.info("part %s (budget %.0f s)", name, budget)
                run = run_part_child if name in CHILD_PARTS else run_part_here
                rec = run(name, ws, device, dry_run, budget)
                log.info("part %s: %s in %.1f s%s", name, rec["status"], rec["seconds"],
                         "" if rec["status"] == "pass" else f": {rec.get('error')}")
            rec["budget_s"] = round(budget, 0)
            report["parts"][name] = rec
            report["seconds"] = round(time.perf_counter() - t0, 1)
            write_report(report, out)
            for f in sorted((ws / "keep").glob("*")):
                shutil.move(f, out / f.name)
    finally:
        if work is None:
            shutil.rmtree(ws, ignore_errors=True)
    return report


def add_shims() -> list[str]:
    """Stand-ins for ``cv2`` and ``matplotlib`` at the end of ``sys.path`` when they are not installed:
    groundingdino-py's model module imports its plotting helper, which imports both (``bench/shims``).
    Returns the stand-ins now importable."""
    import importlib.util

    missing = [m for m in ("cv2", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing and SHIMS not in sys.path:
        sys.path.append(SHIMS)
    return missing


def child_main(args) -> None:
    """``--child PART``: run one part here, write its record to ``<work>/.<PART>.json``."""
    if args.child in SITE_PARTS:
        add_shims()
    rec = run_part_here(args.child, Path(args.work), args.device, args.dry_run, args.budget)
    (Path(args.work) / f".{args.child}.json").write_text(json.dumps(rec, default=str))


def default_out() -> Path:
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "out"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every part on the CPU with tiny sizes")
    p.add_argument("--out", default=None, help="report folder (default: $OUT, else bench/out)")
    p.add_argument("--work", default=None, help="workspace, kept (default: a temporary folder, removed)")
    p.add_argument("--parts", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--child", default=None, choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=DRY_BUDGET_S, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from pipeline.core.logs import setup_logging

    setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
    if args.child:
        child_main(args)
        return
    out = Path(args.out) if args.out else default_out()
    report = smoke(out, args.work, args.dry_run, args.parts.split(",") if args.parts else None)
    sys.stdout.write(to_markdown(report))
    log.info("report: %s/gpu_smoke.md, .json", out)
    if any(p["status"] != "pass" for p in report["parts"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
