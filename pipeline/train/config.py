"""Section ``train`` of params.yaml as a typed config, and how its batch splits over processes.

The paper's recipe is a *global batch* (``global_batch_size``, paper: 4) per optimizer step.
Processes and the per-process micro-batch (``train_batch_size``) only decide how that batch is
computed: ``accumulation = global_batch_size / (processes * train_batch_size)``, which must be
a whole number, so the same recipe runs unchanged on 1, 4 or 8 GPUs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.core.config import ConfigError
from pipeline.models.stable_diffusion import SDExpectation

#: at most this many heatmap captions: side work stays a few UNet forwards per heatmap step
MAX_HEATMAP_CAPTIONS = 16


@dataclass(frozen=True)
class TrainConfig:
    """Section ``train`` of params.yaml. Steps count optimizer updates."""

    pretrained: str = "models/tiny/sd"        # diffusers folder or hub id (CompVis/stable-diffusion-v1-4)
    expect: SDExpectation | None = None        # the architecture pretrained must have (another one stops the stage)
    revision: str | None = None
    masks: str = "data/segment/masks"          # a masks table: segment's, or reference_masks'
    resolution: int = 64
    attn_blocks: tuple[str, ...] = ("mid", "up")
    lambda_token: float = 1e-3
    gamma_pixel: float = 5e-5
    loss_mode: Literal["official", "paper"] = "official"
    learning_rate: float = 5e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    global_batch_size: int = 4                 # examples per optimizer step, over all processes (paper: 4)
    train_batch_size: int = 1                  # examples per process and forward pass
    max_train_steps: int = 24000
    mixed_precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # not "no": YAML 1.1 reads it as false
    gradient_checkpointing: bool = True
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2           # per run; checkpoints of other runs are never touched
    resume: Literal["auto", "never"] = "auto"  # never: start afresh in a new run folder, old ones kept
    heatmap_steps: int = 500
    heatmap_captions: int = 3
    holdout_images: int = 0                    # images kept out of training; attention share is measured on them
    max_mask_coverage: float = 0.9             # a mask covering more of an attention map is not supervised
    num_workers: int = 0                       # DataLoader worker processes decoding and resizing images
    checkpoint_optimizer: bool = True          # keep AdamW's state in checkpoints (SD1.4: 6.9 GB each)
    card_samples: int = 4                      # captions drawn with the trained weights for the model card (0: none)
    card_sample_steps: int = 25                # their sampling steps (guidance 7.5)
    cache_latents: bool = False                # encode each image once (the VAE posterior's mean and std)
    cache_text: bool = False                   # encode each caption once (the text encoders are frozen)
    adapter: Literal["full", "lora"] = "full"  # full: the whole UNet trains (paper); lora: a peft LoRA on it
    lora_rank: int = 4                         # LoRA settings: used with adapter: lora (checked always)
    lora_alpha: float = 4.0                    # scale alpha / rank (diffusers' script: alpha = rank)
    lora_target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    lora_dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    out_dir: str = "data/train"

    def validate(self) -> None:
        bad = set(self.attn_blocks) - {"down", "mid", "up"}
        if bad or not self.attn_blocks:
            raise ConfigError(f"train.attn_blocks must be a non-empty subset of down, mid, up; got {self.attn_blocks}")
        for name in ("resolution", "global_batch_size", "train_batch_size", "max_train_steps",
                     "checkpointing_steps", "checkpoints_total_limit", "heatmap_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.card_samples < 0 or self.card_sample_steps < 1:
            raise ConfigError(f"train.card_samples must be >= 0 and card_sample_steps >= 1, got "
                              f"{self.card_samples}, {self.card_sample_steps}")
        if self.global_batch_size % self.train_batch_size:
            raise ConfigError(f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                              f"train.train_batch_size={self.train_batch_size}")
        if not 0 <= self.heatmap_captions <= MAX_HEATMAP_CAPTIONS:
            raise ConfigError(f"train.heatmap_captions must lie in [0, {MAX_HEATMAP_CAPTIONS}], "
                              f"got {self.heatmap_captions}")
        if self.lambda_token < 0 or self.gamma_pixel < 0 or self.learning_rate <= 0:
            raise ConfigError("train.lambda_token and gamma_pixel must be >= 0, learning_rate > 0")
        self._validate_lora()
        if not 0.0 < self.max_mask_coverage <= 1.0:
            raise ConfigError(f"train.max_mask_coverage must lie in (0, 1] (1 keeps every mask), "
                              f"got {self.max_mask_coverage}")

    def _validate_lora(self) -> None:
        if self.lora_rank < 1:
            raise ConfigError(f"train.lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"train.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"train.lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not self.lora_target_modules or any(not t for t in self.lora_target_modules):
            raise ConfigError(f"train.lora_target_modules must name UNet layers (to_q, ...), "
                              f"got {list(self.lora_target_modules)}")

    @property
    def supervise(self) -> bool:
        """Whether L_token or L_pixel is on (otherwise no attention map is captured)."""
        return self.lambda_token > 0 or self.gamma_pixel > 0


#: settings that do not change what is trained: they may differ between a run and its resume
RESUMABLE = ("train_batch_size", "max_train_steps", "gradient_checkpointing", "checkpointing_steps",
             "checkpoints_total_limit", "resume", "heatmap_steps", "heatmap_captions", "num_workers",
             "checkpoint_optimizer", "expect", "device", "out_dir", "cache_latents", "cache_text",
             "card_samples", "card_sample_steps")


#: the settings of ``train.adapter: lora``; a full fine-tune leaves them (and ``adapter``) out of its run key
LORA_SETTINGS = ("adapter", "lora_rank", "lora_alpha", "lora_target_modules", "lora_dropout")


def trained_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that define the trained weights (everything but :data:`RESUMABLE`), as JSON reads them back.

    With ``adapter: full`` the LoRA settings are left out, so a full fine-tune keeps the run key
    (and resumes the checkpoints) it had before they existed.
    """
    skip = set(RESUMABLE) | (set(LORA_SETTINGS) if cfg.adapter == "full" else set())
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}))


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's global batch ``G`` is split: ``G = processes * per_process * accumulation``.

    Global stream positions of step ``s``: ``[s*G, (s+1)*G)``; micro-batch ``a`` of process ``p``
    takes the ``per_process`` positions starting at ``s*G + (a*processes + p)*per_process``.
    """

    global_batch: int
    per_process: int
    processes: int

    @classmethod
    def of(cls, cfg: TrainConfig, processes: int) -> BatchLayout:
        """The layout of ``cfg`` on ``processes`` processes; an inexact split is a ConfigError."""
        if cfg.global_batch_size % (processes * cfg.train_batch_size):
            raise ConfigError(
                f"train.global_batch_size={cfg.global_batch_size} cannot be split over {processes} process(es) "
                f"x train.train_batch_size={cfg.train_batch_size}: it must be a multiple of "
                f"{processes * cfg.train_batch_size}; change train_batch_size or the number of processes, "
                f"not the recipe")
        return cls(cfg.global_batch_size, cfg.train_batch_size, processes)

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.per_process * self.processes)

    def positions(self, step: int, micro: int, rank: int) -> list[int]:
        """Global stream positions of process ``rank``'s micro-batch ``micro`` of step ``step``."""
        start = step * self.global_batch + (micro * self.processes + rank) * self.per_process
        return list(range(start, start + self.per_process))
