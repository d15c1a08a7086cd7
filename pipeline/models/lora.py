"""LoRA adapters of a Stable Diffusion UNet in diffusers' format, and what a model entry holds.

A trained LoRA is a folder (the ``train`` stage's ``data/train/unet`` with ``train.adapter:
lora``)::

    pytorch_lora_weights.safetensors   StableDiffusionPipeline.save_lora_weights: keys
                                       ``unet.<module>.lora.down.weight`` / ``.lora.up.weight``, the
                                       peft LoraConfig (rank, alpha, targets) in the file's metadata
    adapter.json                       {"adapter": "lora", rank, alpha, target_modules, dropout,
                                        "base": the pretrained folder or hub id, "base_unet": the
                                        base UNet's architecture numbers}

It is used as diffusers' scripts do: ``pipe = StableDiffusionPipeline.from_pretrained(base)``
then ``pipe.load_lora_weights(folder)``. A model entry (``evaluate.models``) is either a UNet
folder (``config.json`` + weights) or such a LoRA (the folder or the ``.safetensors`` file);
:func:`entry_kind` tells which from the file names and headers alone, and every check here
reads configs and safetensors headers only, before any weight loads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Literal

log = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
ADAPTER_JSON = "adapter.json"
#: the architecture numbers of the base UNet a LoRA is recorded against (adapter.json "base_unet")
BASE_UNET_KEYS = ("cross_attention_dim", "block_out_channels", "layers_per_block", "attention_head_dim",
                  "down_block_types", "up_block_types", "transformer_layers_per_block")

EntryKind = Literal["unet", "lora"]


def _is_lora_file(path: Path) -> bool:
    """A safetensors file whose keys are LoRA down/up (or lora_A/lora_B) matrices."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    return bool(keys) and all(".lora" in k or "lora_" in k or k.endswith(".alpha") for k in keys)


def entry_kind(path: str | Path, where: str = "model entry") -> EntryKind:
    """``"unet"`` (a diffusers UNet folder) or ``"lora"`` (a LoRA folder or file); anything else is an error.

    The error names the path, what was expected (a UNet folder or a LoRA) and what it holds.
    """
    path = Path(path)
    expected = f"{where} {path}: expected a UNet folder (config.json + weights) or a LoRA ({LORA_WEIGHTS})"
    if path.is_file():
        if path.suffix == ".safetensors" and _is_lora_file(path):
            return "lora"
        raise ValueError(f"{expected}; found the file {path.name}, which is neither a LoRA nor a folder"
                         + ("; give the UNet folder that holds it" if path.name.startswith("diffusion_pytorch_model")
                            else ""))
    if not path.is_dir():
        raise FileNotFoundError(f"UNet folder {path} not found, nor a LoRA there ({expected})")
    if (path / LORA_WEIGHTS).is_file():
        return "lora"
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
            raise ValueError(f"{expected}; found {path / 'config.json'} of a {config['_class_name']}")
        return "unet"
    if (path / "model_index.json").is_file():
        raise ValueError(f"{expected}; found a whole pipeline folder (model_index.json): give its unet/ subfolder")
    raise FileNotFoundError(f"UNet folder {path} not found ({expected}); it holds "
                            f"{sorted(p.name for p in path.iterdir())[:8]}")


def lora_file(path: str | Path) -> Path:
    """The ``.safetensors`` file of a LoRA folder or file."""
    path = Path(path)
    return path if path.is_file() else path / LORA_WEIGHTS


def read_adapter_json(path: str | Path) -> dict[str, Any] | None:
    """``adapter.json`` beside a LoRA (None for a LoRA made elsewhere, which has none)."""
    path = Path(path)
    marker = (path.parent if path.is_file() else path) / ADAPTER_JSON
    return json.loads(marker.read_text()) if marker.is_file() else None


def lora_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a LoRA file's tensors, read from the safetensors header (no tensor loads)."""
    from safetensors import safe_open

    with safe_open(str(lora_file(path)), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def base_unet_numbers(unet_config: dict[str, Any]) -> dict[str, Any]:
    """The architecture numbers of a UNet config that a LoRA must match (JSON-normalised)."""
    return json.loads(json.dumps({k: unet_config.get(k) for k in BASE_UNET_KEYS}))


def check_lora_base(lora: str | Path, unet_config: dict[str, Any], base: str) -> None:
    """A LoRA must have been trained on a UNet of ``base``'s architecture; else a ValueError naming both.

    With ``adapter.json``: its ``base_unet`` numbers against ``unet_config``. Without (a LoRA made
    elsewhere): the cross-attention inputs (``attn2.to_k``/``to_v`` down matrices) must be
    ``cross_attention_dim`` wide.
    """
    marker = read_adapter_json(lora)
    if marker is not None:
        want, have = base_unet_numbers(unet_config), marker.get("base_unet", {})
        diff = [f"{k}: LoRA {have.get(k)!r}, base {want[k]!r}" for k in want if have.get(k) != want[k]]
        if diff:
            raise ValueError(f"LoRA {lora_file(lora)} was trained on {marker.get('base')!r}, a UNet of another "
                             f"architecture than {base}'s: {'; '.join(diff)}")
        return
    dim = unet_config.get("cross_attention_dim")
    for key, shape in lora_shapes(lora).items():
        if ("attn2.to_k" in key or "attn2.to_v" in key) and ("lora.down" in key or "lora_A" in key):
            if shape[-1] != dim:
                raise ValueError(f"LoRA {lora_file(lora)}: {key} takes {shape[-1]}-wide text features; the base "
                                 f"{base} has cross_attention_dim {dim}: a LoRA of another base model")


def unet_module_names(unet_config: dict[str, Any]) -> dict[str, str]:
    """``{module name: class name}`` of the UNet a config describes, built on the meta device (no weights)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    return {name: type(m).__name__ for name, m in unet.named_modules()}


def check_target_modules(modules: dict[str, str], targets: Iterable[str], where: str) -> None:
    """Every LoRA target must name (as peft matches: the whole name or its ending ``.<target>``) a
    Linear or Conv2d module of the UNet; else a ValueError naming the targets it does not have."""
    layers = [n for n, cls in modules.items() if cls in ("Linear", "Conv2d", "LoRACompatibleLinear")]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        leaves = sorted({n.split(".attn1.")[-1] for n in layers if ".attn1." in n})
        raise ValueError(f"{where}: the UNet has no Linear/Conv2d module {missing} to put a LoRA on; "
                         f"its attention layers have {leaves}")


def save_unet_lora(unet, folder: str | Path, info: dict[str, Any]) -> Path:
    """Write the LoRA of a peft-wrapped ``unet`` as ``folder/pytorch_lora_weights.safetensors`` + ``adapter.json``.

    ``info``: what ``adapter.json`` records besides the adapter's config (base model, base UNet numbers).
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from pipeline.core.tables import write_json

    folder = Path(folder)
    config = unet.peft_config["default"]
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True,
                                              unet_lora_adapter_metadata=config.to_dict())
    write_json({"adapter": "lora", "rank": config.r, "alpha": config.lora_alpha,
                "target_modules": sorted(config.target_modules), "dropout": config.lora_dropout, **info},
               folder / ADAPTER_JSON)
    return folder


def load_unet_lora(unet, folder: str | Path) -> None:
    """Load a LoRA written by :func:`save_unet_lora` into a ``unet`` wrapped with the same adapter config.

    Every key must land: a missing or unexpected one is an error naming it.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = lora_file(folder)
    raw = load_file(str(path))
    state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in raw.items()})
    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    lora_keys = {k for k in unet.state_dict() if "lora_" in k}
    loaded = {k.replace(".weight", ".default.weight") for k in state}
    missing = sorted(lora_keys - loaded)
    if unexpected or missing:
        raise ValueError(f"{path} does not fit this run's LoRA: unexpected keys {unexpected[:5]}, "
                         f"missing keys {missing[:5]}")
