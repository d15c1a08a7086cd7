"""Training checkpoints of one run in safetensors, written atomically and rotated.

A checkpoint is a folder ``<run folder>/step-<NNNNNN>/``::

    unet/                         diffusers save_pretrained (safetensors), or with train.adapter: lora
                                  the LoRA (pytorch_lora_weights.safetensors + adapter.json)
    optimizer.safetensors         every tensor of the optimizer state, flat keys (absent when
    optimizer.json                the rest of the optimizer state        train.checkpoint_optimizer is false)
    state.json                    {"step": N, "run": key, "settings": {...}, "data_digest": ..,
                                   "code_digest": .., "last": {values logged at N},
                                   "scaler": fp16 GradScaler state or null}

It is written as ``.step-<N>.tmp`` and renamed when complete, so a killed run never leaves a
half checkpoint under a real name. Rotation (``keep``) only ever touches the folder it writes
to: which run a folder belongs to, and that other runs are kept, is ``pipeline.train.runs``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from pipeline.core.tables import write_json

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors with flat keys, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in tensors.items():
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints directly under ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def scaler_state(scaler) -> dict[str, float] | None:
    """A GradScaler's state as plain numbers (fp16 on CUDA), None without a scaler."""
    if scaler is None:
        return None
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in scaler.state_dict().items()}


def save_checkpoint(folder: str | Path, step: int, unet, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], keep: int,
                    save_weights: Callable[[Any, Path], Any] | None = None) -> Path:
    """Write checkpoint ``step`` of one run atomically, then delete all but this folder's newest ``keep``.

    ``optimizer`` None: the UNet only (SD1.4: 3.4 GB instead of 10.3 GB with AdamW's moments).
    ``save_weights(unet, folder)`` writes the trained weights into ``unet/`` (default:
    ``unet.save_pretrained``; a LoRA run writes its adapter only).
    ``state``: the run's identity and logged values, stored in ``state.json`` with ``step``.
    """
    folder = Path(folder)
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # an interrupted write of this very checkpoint
    tmp.mkdir(parents=True)
    if save_weights is None:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
    else:
        save_weights(unet, tmp / "unet")
    if optimizer is not None:
        tensors, rest = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(rest))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
    if final.exists():
        raise FileExistsError(f"{final} exists already: a run never writes the same step twice")
    tmp.rename(final)
    for _, old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    log.info("checkpoint %s", final)
    return final


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``."""
    return json.loads((Path(path) / "state.json").read_text())


def update_last(path: Path, values: dict[str, float]) -> None:
    """Add values logged after the checkpoint was written (side work of its step), atomically."""
    state = read_state(path)
    state["last"] = {**state.get("last", {}), **values}
    write_json(state, Path(path) / "state.json")


def checkpoint_step(path: Path) -> int:
    return int(read_state(path)["step"])


def checkpoint_last_values(path: Path) -> dict[str, float]:
    """The values logged at the checkpoint's step (losses, held-out attention share)."""
    return dict(read_state(path).get("last", {}))


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> bool:
    """Load the checkpoint's optimizer state into ``optimizer``; False if it holds none."""
    if not (path / "optimizer.safetensors").is_file():
        return False
    tensors = load_file(str(path / "optimizer.safetensors"))
    rest = json.loads((path / "optimizer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, rest))
    return True


def load_scaler(path: Path, scaler) -> bool:
    """Restore the fp16 GradScaler's state; False when the checkpoint holds none (or no scaler runs)."""
    saved = read_state(path).get("scaler")
    if scaler is None or not saved:
        return False
    scaler.load_state_dict(saved)
    return True
