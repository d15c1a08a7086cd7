"""The ``train`` stage: fine-tune the UNet with L_LDM + lambda * L_token + gamma * L_pixel.

One optimizer step consumes the global batch ``train.global_batch_size`` (paper: 4), whatever
the number of processes (``config.BatchLayout``). Which examples, and every random draw for
each of them, are functions of (seed, step, position in the global batch) only
(``order``, ``step``), so a resumed run continues exactly as an uninterrupted one would, on
any number of processes.

Per step: micro-batches (``step.micro_step``) -> clip, AdamW -> log -> checkpoint (main
process) -> side work (``side_work``: heatmaps and held-out grounding, split over the
processes, after the checkpoint, never ending the run). Checkpoints live in a folder of their
run (``runs``): other settings train beside them, and nothing is deleted by a mismatch.

Only the UNet trains (VAE and text encoder frozen, in the mixed-precision dtype), AdamW with a
constant learning rate and gradient clipping, as in the official code; with ``train.adapter:
lora`` a peft LoRA on the frozen UNet trains instead (``adapter``), and checkpoints and the
final ``<out_dir>/unet`` hold the LoRA. Cross-attention maps
are captured only on the supervised layers (``attn_blocks``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.train.adapter import load_trained, save_trained
from pipeline.train.attention import AttentionCapture
from pipeline.train.checkpoints import (
    checkpoint_last_values,
    checkpoint_step,
    load_optimizer,
    load_scaler,
    save_checkpoint,
    scaler_state,
    update_last,
)
from pipeline.train.config import BatchLayout, TrainConfig
from pipeline.train.order import ExampleOrder
from pipeline.train.runs import RunIdentity, ResumePlan, describe_other_runs
from pipeline.train.sampler import MicroBatchSampler, micro_batch_loader
from pipeline.train.setup import (
    Models,
    TrainData,
    attach_latent_cache,
    attach_text_cache,
    identify_run,
    load_data,
    load_models,
    make_accelerator,
)
from pipeline.train.side_work import SideWork
from pipeline.train.step import TrainingDiverged, check_finite, micro_step

__all__ = ["TrainConfig", "TrainingDiverged", "run_train"]
from pipeline.train.summary import build_summary, official_ratios

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a training loop needs, made by :func:`start_run`."""

    cfg: TrainConfig
    accelerator: Any
    layout: BatchLayout
    ident: RunIdentity
    plan: ResumePlan
    models: Models
    data: TrainData
    capture: AttentionCapture
    optimizer: Any
    side: SideWork
    logger: Any
    start_step: int = 0
    last: dict[str, float] = field(default_factory=dict)
    base: dict[str, float] = field(default_factory=dict)
    other_runs: int = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def run_train(cfg: TrainConfig, captions_path: str | Path, nouns_path: str | Path) -> dict | None:
    """Train; returns a summary on the main process (None on the others)."""
    run = start_run(cfg, captions_path, nouns_path)
    t0 = time.perf_counter()
    train_steps(run)
    run.accelerator.wait_for_everyone()
    if not run.is_main:
        return None
    save_trained(run.accelerator.unwrap_model(run.models.unet), Path(cfg.out_dir) / "unet", cfg)
    summary = build_summary(cfg, run.layout, _run_record(run), run.data, run.base, run.last, run.side.errors,
                            official_ratios(captions_path, run.data.summary))
    run.logger.finish(summary, run.data.rejects)
    log.info("trained %d steps in %.1f s", cfg.max_train_steps - run.start_step, time.perf_counter() - t0)
    return summary


def start_run(cfg: TrainConfig, captions_path, nouns_path) -> Run:
    """Checks, run identity and resume plan, models, data, optimizer, side work; the base held-out share."""
    from pipeline.train.live import TrainLogger

    accelerator = make_accelerator(cfg)
    layout = BatchLayout.of(cfg, accelerator.num_processes)  # an inexact split stops before any work
    ident, plan = identify_run(cfg, accelerator, captions_path, nouns_path)
    models = load_models(cfg, accelerator)
    data = load_data(cfg, models, captions_path, nouns_path)
    if cfg.cache_latents:
        attach_latent_cache(cfg, data, models, accelerator)
    if cfg.cache_text:
        attach_text_cache(cfg, data, models, accelerator)
    capture = AttentionCapture(models.unet, blocks=cfg.attn_blocks)
    heldout_set = data.heldout_set if data.heldout_nouns else None
    side = SideWork(cfg, accelerator, models, capture, data.dataset, heldout_set, data.resolutions,
                    heat_indices=[i for i, e in enumerate(data.examples) if e.nouns][: cfg.heatmap_captions])
    base = side.heldout(0) or {}  # the pretrained UNet on the held-out images: what training should improve on
    start_step, last = _load_checkpoint_weights(plan, models, cfg)
    if cfg.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
    models.unet.train()
    optimizer = torch.optim.AdamW(models.trainable, lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                                  eps=cfg.adam_epsilon)
    models.unet, optimizer = accelerator.prepare(models.unet, optimizer)
    side.models = dataclasses.replace(models, unet=accelerator.unwrap_model(models.unet))
    if plan.checkpoint is not None:
        _load_checkpoint_state(plan.checkpoint, optimizer, accelerator, start_step)
    logger = TrainLogger(Path(cfg.out_dir), enabled=accelerator.is_main_process, resume_step=start_step)
    if base and start_step == 0:
        logger.log_heldout(0, base)
    others = describe_other_runs(Path(cfg.out_dir) / "checkpoints", ident) if accelerator.is_main_process else 0
    return Run(cfg, accelerator, layout, ident, plan, models, data, capture, optimizer, side, logger,
               start_step, last, base, others)


def _load_checkpoint_weights(plan: ResumePlan, models: Models, cfg: TrainConfig) -> tuple[int, dict[str, float]]:
    if plan.checkpoint is None:
        return 0, {}
    load_trained(models.unet, plan.checkpoint / "unet", cfg)
    log.info("resuming from %s (step %d)", plan.checkpoint, checkpoint_step(plan.checkpoint))
    return checkpoint_step(plan.checkpoint), checkpoint_last_values(plan.checkpoint)


def _load_checkpoint_state(checkpoint: Path, optimizer, accelerator, step: int) -> None:
    inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
    if not load_optimizer(checkpoint, inner):
        log.warning("%s holds no optimizer state (train.checkpoint_optimizer was false): AdamW's moments "
                    "restart from zero at step %d, so this run will not equal an uninterrupted one", checkpoint, step)
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and not load_scaler(checkpoint, scaler):
        log.warning("%s holds no fp16 loss-scaler state: the scale restarts from its initial value", checkpoint)


def train_steps(run: Run) -> None:
    """Steps ``start_step .. max_train_steps``, each followed by its checkpoint and side work when due."""
    cfg, acc = run.cfg, run.accelerator
    sampler = MicroBatchSampler(ExampleOrder(len(run.data.dataset), cfg.seed), run.layout, run.start_step,
                                cfg.max_train_steps, acc.process_index)
    loader = (micro_batch_loader(run.data.dataset, sampler, cfg.num_workers) if run.data.loader_set is None else
              micro_batch_loader(run.data.loader_set, sampler, cfg.num_workers, run.data.collate_fn))
    batches = iter(loader)
    bar = tqdm(total=cfg.max_train_steps, initial=run.start_step, desc="train", unit="step",
               disable=None if run.is_main else True)
    # the capture is held across steps: swapping processors every micro-step costs time
    with run.capture.active(cfg.supervise):
        for step in range(run.start_step, cfg.max_train_steps):
            run.last = optimizer_step(run, step, batches)
            done = step + 1
            run.logger.log_step(done, run.last)
            bar.update(1)
            bar.set_postfix(loss=f"{run.last['total']:.4f}")
            final = done == cfg.max_train_steps
            checkpoint = _checkpoint(run, done) if done % cfg.checkpointing_steps == 0 or final else None
            if done % cfg.heatmap_steps == 0 or final:
                _side_work(run, done, checkpoint)
    bar.close()


def optimizer_step(run: Run, step: int, batches) -> dict[str, float]:
    """One optimizer step over the process's micro-batches; returns the values logged (mean over processes)."""
    cfg, acc, unet = run.cfg, run.accelerator, run.models.unet
    accumulation = run.layout.accumulation
    parts_sum: dict[str, float] = {}
    for micro in range(accumulation):
        positions = run.layout.positions(step, micro, acc.process_index)
        batch = next(batches)
        sync = acc.no_sync(unet) if micro < accumulation - 1 else contextlib.nullcontext()
        # backward inside the capture: gradient checkpointing recomputes the supervised layers
        with sync, run.capture.active(cfg.supervise):
            loss, logged = micro_step(cfg, batch, positions, run.models, run.capture, acc.device)
            check_finite(acc, loss, step, batch, run.plan.folder)
            acc.backward(loss / accumulation)
        run.capture.clear()
        for k, v in logged.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v / accumulation
    grad_norm = acc.clip_grad_norm_(run.models.trainable, cfg.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    values = _mean_over_processes(acc, parts_sum)
    values["grad_norm"] = float(grad_norm)
    return values


def _checkpoint(run: Run, done: int) -> Path | None:
    """Write checkpoint ``done`` (main process); every process waits for it."""
    path = None
    if run.is_main:
        state = {**run.ident.state(), "last": run.last, "scaler": scaler_state(getattr(run.accelerator, "scaler", None))}
        path = save_checkpoint(run.plan.folder, done, run.accelerator.unwrap_model(run.models.unet),
                               run.optimizer if run.cfg.checkpoint_optimizer else None, state,
                               run.cfg.checkpoints_total_limit,
                               save_weights=lambda unet, folder: save_trained(unet, folder, run.cfg))
    run.accelerator.wait_for_everyone()
    return path


def _side_work(run: Run, done: int, checkpoint: Path | None) -> None:
    """Heatmaps and held-out grounding of step ``done``; their values join the step's checkpoint."""
    rows = run.side.heatmap_rows(done)
    if rows is not None:
        try:
            run.logger.log_heatmaps(done, rows)
        except Exception as exc:  # a picture must never end a run
            log.exception("drawing the heatmaps of step %d failed (training goes on)", done)
            run.side.errors.append(f"step {done}: heatmap picture: {type(exc).__name__}: {exc}")
    grounding = run.side.heldout(done)
    if grounding:
        values = {f"heldout_attention_{k}": v for k, v in grounding.items()}
        run.last.update(values)
        if run.is_main:
            run.logger.log_heldout(done, grounding)
            if checkpoint is not None:
                update_last(checkpoint, values)


def _mean_over_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def _run_record(run: Run) -> dict[str, Any]:
    """The run folder's name (``<key>`` or ``<key>.<attempt>``), how it started, the other runs kept."""
    return {"run": run.plan.folder.name, "resumed_from_step": run.start_step,
            "resumed_across_code_change": run.plan.code_change, "other_runs_kept": run.other_runs}
