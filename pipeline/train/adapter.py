"""What trains, ``train.adapter``: the whole UNet (``full``, the paper) or a LoRA on it (``lora``).

``lora`` follows diffusers' ``train_text_to_image_lora.py``: the base UNet frozen in the
mixed-precision dtype, a peft ``LoraConfig(r, lora_alpha, init_lora_weights="gaussian",
target_modules, lora_dropout)`` added with ``unet.add_adapter``, its parameters cast to fp32,
AdamW over them only. The gaussian init draws the down matrices from a generator seeded
with ``train.seed`` and sets the up matrices to zero, so step 0 is exactly the base UNet.

The attention capture needs nothing of its own: peft wraps the ``to_q``/``to_k``/``to_v``/
``to_out.0`` Linear layers that the capture processor calls, so the captured maps are those
of the adapted UNet (``tests/test_lora.py``: equal to the UNet with the LoRA merged in).

Trained weights, in checkpoints and in ``<out_dir>/unet`` (one DVC out for both adapters):
``full`` a diffusers UNet folder; ``lora`` ``pytorch_lora_weights.safetensors`` + ``adapter.json``
(:mod:`pipeline.models.lora`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.models.lora import (
    LORA_WEIGHTS,
    base_unet_numbers,
    entry_kind,
    check_target_modules,
    load_unet_lora,
    save_unet_lora,
    unet_module_names,
)
from pipeline.train.config import TrainConfig

log = logging.getLogger(__name__)


def check_lora_targets(cfg: TrainConfig) -> None:
    """Before any weight loads: every ``train.lora_target_modules`` entry names a layer of the UNet
    (read from ``<pretrained>/unet/config.json``; a hub id is checked once its UNet is loaded)."""
    if cfg.adapter != "lora":
        return
    config_file = Path(cfg.pretrained) / "unet" / "config.json"
    if config_file.is_file():
        check_target_modules(unet_module_names(json.loads(config_file.read_text())), cfg.lora_target_modules,
                             f"train.lora_target_modules (UNet {config_file})")


def prepare_trainable(unet, cfg: TrainConfig, device, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    """Put ``unet`` on ``device`` ready to train; returns the parameters the optimizer updates.

    ``full``: the UNet in fp32, every parameter. ``lora``: the base frozen in ``dtype``, a LoRA
    added (down matrices seeded by ``cfg.seed``), its parameters in fp32.
    """
    if cfg.adapter == "full":
        unet.to(device)
        return list(unet.parameters())
    from peft import LoraConfig

    modules = {name: type(m).__name__ for name, m in unet.named_modules()}
    check_target_modules(modules, cfg.lora_target_modules, "train.lora_target_modules")
    unet.requires_grad_(False)
    unet.to(device) if dtype == torch.float32 else unet.to(device, dtype)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                        target_modules=list(cfg.lora_target_modules), lora_dropout=cfg.lora_dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        unet.add_adapter(config)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    log.info("LoRA rank %d on %s: %d trainable parameters of %d", cfg.lora_rank, list(cfg.lora_target_modules),
             sum(p.numel() for p in trainable), sum(p.numel() for p in unet.parameters()))
    return trainable


def save_trained(unet, folder: str | Path, cfg: TrainConfig) -> Path:
    """The trained weights in ``folder``: the UNet (``full``) or its LoRA (``lora``), diffusers' formats."""
    folder = Path(folder)
    if cfg.adapter == "full":
        unet.save_pretrained(folder, safe_serialization=True)
        return folder
    return save_unet_lora(unet, folder, {"base": cfg.pretrained, "base_unet": base_unet_numbers(dict(unet.config))})


def load_trained(unet, folder: str | Path, cfg: TrainConfig) -> None:
    """Load weights written by :func:`save_trained` into the (prepared) ``unet``; a folder of the other
    adapter (a UNet where a LoRA is expected, or the reverse) is an error before anything loads."""
    kind = entry_kind(folder, "trained weights")
    if kind != {"full": "unet", "lora": "lora"}[cfg.adapter]:
        raise ValueError(f"{folder}: train.adapter is {cfg.adapter}, so a "
                         f"{'UNet folder' if cfg.adapter == 'full' else 'LoRA (' + LORA_WEIGHTS + ')'} was expected; "
                         f"found a {'LoRA' if kind == 'lora' else 'UNet folder'}")
    if cfg.adapter == "full":
        from diffusers import UNet2DConditionModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder).state_dict())
    else:
        load_unet_lora(unet, folder)
