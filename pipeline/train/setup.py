"""Start-up of a training run: the accelerator, the run's identity and resume plan, models and data.

The order is the user's: checks that can stop the run (the batch split, the run's checkpoint
folder) come before any model loads; the input digest is computed once, by the main process,
and shared with the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from pipeline.core.code import code_digest
from pipeline.core.devices import resolve_device
from pipeline.core.digests import on_main_process
from pipeline.models.conditioning import TextConditioner
from pipeline.models.stable_diffusion import load_sd_components, vae_scale_factor
from pipeline.train.adapter import check_lora_targets, prepare_trainable
from pipeline.train.attention import layer_resolutions
from pipeline.train.config import TrainConfig
from pipeline.train.dataset import MaskCoverage, TokenComposeDataset, build_examples, training_inputs_digest
from pipeline.train.holdout import split_holdout
from pipeline.train.runs import ResumePlan, RunIdentity, plan_resume

log = logging.getLogger(__name__)

#: how long a collective may wait (filling the caches of 118,287 images at 1024 px over 8 GPUs: ~10 min)
COLLECTIVE_TIMEOUT = timedelta(hours=2)
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Models:
    """The pipeline parts training uses; VAE and text encoder(s) frozen on the device.

    ``trainable``: the parameters the optimizer updates (the UNet's, or its LoRA's).
    SDXL: ``tokenizer_2`` and ``text_encoder_2`` too (None otherwise).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    scheduler: Any
    tokenizer: Any
    trainable: list = field(default_factory=list)
    tokenizer_2: Any = None
    text_encoder_2: Any = None

    @property
    def text(self) -> TextConditioner:
        """The batch -> ``(hidden, added_cond_kwargs)`` of these text encoders."""
        return TextConditioner(self.text_encoder, self.text_encoder_2)


@dataclass
class TrainData:
    """Training and held-out examples, their datasets, the rejects and counts of ``build_examples``."""

    examples: list
    heldout: list
    rejects: list
    summary: dict[str, Any]
    dataset: TokenComposeDataset
    heldout_set: TokenComposeDataset | None
    resolutions: list[int]
    loader_set: Any = None           # what the training loader reads: ``dataset``, or its cached latents
    collate_fn: Any = None

    @property
    def heldout_nouns(self) -> int:
        return sum(len(e.nouns) for e in self.heldout)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    device = resolve_device(cfg.device)
    # a barrier may wait for the other processes' share of filling a cache at COCO scale: longer than
    # NCCL's 10-minute default, so the process group gets COLLECTIVE_TIMEOUT
    return Accelerator(mixed_precision={"fp32": "no"}.get(cfg.mixed_precision, cfg.mixed_precision),
                       cpu=device == "cpu", kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])


def data_digest(cfg: TrainConfig, captions_path: str | Path, nouns_path: str | Path) -> str:
    """The bytes that define the training data: tables, every image, the files of the pretrained
    model its loaders read (or its hub id); unchanged files come from the digest cache."""
    return training_inputs_digest(captions_path, nouns_path, cfg.masks, cfg.pretrained)


def identify_run(cfg: TrainConfig, accelerator, captions_path, nouns_path) -> tuple[RunIdentity, ResumePlan]:
    """The run's identity and resume plan, computed once by the main process and shared (no rank
    rehashes; an error there stops every process)."""
    def plan() -> tuple[RunIdentity, ResumePlan]:
        ident = RunIdentity.of(cfg, data_digest(cfg, captions_path, nouns_path), code_digest("pipeline.train.loop"))
        return ident, plan_resume(Path(cfg.out_dir) / "checkpoints", ident, cfg.resume)

    return on_main_process(plan, accelerator.is_main_process, accelerator.num_processes)


def place_frozen(parts, device, dtype: torch.dtype) -> None:
    """``parts``' VAE and text encoder(s) (``vae``, ``text_encoder``, ``text_encoder_2`` or None) frozen, in
    eval mode, on ``device`` in ``dtype``; SDXL's VAE (``force_upcast`` in its config) stays fp32 under
    fp16, as diffusers' SDXL script and pipeline: it overflows in fp16."""
    sdxl = parts.text_encoder_2 is not None
    upcast = sdxl and dtype == torch.float16 and parts.vae.config.get("force_upcast", True)
    for frozen, to in ((parts.vae, torch.float32 if upcast else dtype), (parts.text_encoder, dtype),
                       (parts.text_encoder_2, dtype)):
        if frozen is not None:
            frozen.requires_grad_(False).eval()
            frozen.to(device) if to == torch.float32 else frozen.to(device, to)


def load_models(cfg: TrainConfig, accelerator) -> Models:
    """The pretrained parts; VAE and text encoder(s) frozen in the mixed-precision dtype on the device
    (:func:`place_frozen`); the UNet ready to train (``adapter.prepare_trainable``)."""
    check_lora_targets(cfg)  # a target the UNet lacks stops the run before any weight loads
    parts = load_sd_components(cfg.pretrained, revision=cfg.revision, expect=cfg.expect)
    dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    place_frozen(parts, accelerator.device, dtype)
    trainable = prepare_trainable(parts.unet, cfg, accelerator.device, dtype)
    return Models(parts.unet, parts.vae, parts.text_encoder, parts.noise_scheduler, parts.tokenizer, trainable,
                  parts.tokenizer_2, parts.text_encoder_2)


def load_data(cfg: TrainConfig, models: Models, captions_path, nouns_path) -> TrainData:
    """Examples joined from the tables, the held-out split, datasets at the supervised resolutions."""
    latent = cfg.resolution // vae_scale_factor(models.vae)
    resolutions = sorted(set(layer_resolutions(models.unet, latent, cfg.attn_blocks).values()))
    coverage = MaskCoverage(cfg.resolution, tuple(resolutions), cfg.max_mask_coverage)
    examples, rejects, summary = build_examples(captions_path, nouns_path, cfg.masks, tokenizer=models.tokenizer,
                                                coverage=coverage)
    examples, heldout = split_holdout(examples, cfg.holdout_images, cfg.seed)
    dataset = TokenComposeDataset(examples, models.tokenizer, cfg.resolution, resolutions,
                                  tokenizer_2=models.tokenizer_2)
    heldout_set = (TokenComposeDataset(heldout, models.tokenizer, cfg.resolution, resolutions,
                                       tokenizer_2=models.tokenizer_2) if heldout else None)
    data = TrainData(examples, heldout, rejects, summary, dataset, heldout_set, resolutions)
    if heldout and not data.heldout_nouns:
        log.warning("no held-out caption has a supervised noun: the held-out attention share is not measured")
    return data


def attach_latent_cache(cfg: TrainConfig, data: TrainData, models: Models, accelerator) -> None:
    """``train.cache_latents``: each process encodes its share of the images not cached yet; every
    process then trains from the whole cache (``latent_cache``). Held-out grounding and heatmaps keep the images."""
    from pipeline.train.latent_cache import CachedLatentsDataset, cache_folder, collate_cached, fill_cache, read_cache

    folder = cache_folder(cfg.out_dir, cfg.pretrained, cfg.resolution, models.vae.dtype)
    fill_cache(folder, data.dataset, models.vae, accelerator.device, accelerator.process_index,
               accelerator.num_processes)
    accelerator.wait_for_everyone()
    data.loader_set = CachedLatentsDataset(data.dataset, read_cache(folder))
    data.collate_fn = collate_cached


def attach_text_cache(cfg: TrainConfig, data: TrainData, models: Models, accelerator) -> None:
    """``train.cache_text``: each process encodes its share of the captions not cached yet; every
    process then reads each caption's conditioning from the cache (``text_cache``), over the images or
    the cached latents."""
    from pipeline.train.dataset import collate
    from pipeline.train.text_cache import CachedTextDataset, fill_text_cache, read_text_cache, text_cache_folder

    folder = text_cache_folder(cfg.out_dir, cfg.pretrained, models.text_encoder.dtype)
    fill_text_cache(folder, data.dataset, models.text, accelerator.device, accelerator.process_index,
                    accelerator.num_processes)
    accelerator.wait_for_everyone()
    data.loader_set = CachedTextDataset(data.loader_set or data.dataset, read_text_cache(folder),
                                        sdxl=models.text_encoder_2 is not None)
    data.collate_fn = data.collate_fn or collate
