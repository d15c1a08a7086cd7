"""Training checkpoints in safetensors, written atomically, rotated, matched to their run.

A checkpoint is a folder ``<root>/step-<NNNNNN>/``::

    unet/                         diffusers save_pretrained (safetensors)
    optimizer.safetensors         every tensor of the optimizer state, flat keys (absent when
    optimizer.json                the rest of the optimizer state        train.checkpoint_optimizer is false)
    state.json                    {"step": N, "fingerprint": "...", "last": {values logged at N}}

It is written as ``.step-<N>.tmp`` and renamed when complete, so a killed run never leaves a
half checkpoint under a real name. ``fingerprint`` identifies the run's settings: a checkpoint
of other settings (another lambda, other data) is never resumed from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

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


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(root: str | Path, step: int, unet, optimizer: torch.optim.Optimizer | None, fingerprint: str,
                    keep: int, last: dict[str, float] | None = None) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep``.

    ``optimizer`` None: the UNet only (SD1.4: 3.4 GB instead of 10.3 GB with AdamW's moments).
    """
    root = Path(root)
    final = root / f"step-{step:06d}"
    tmp = root / f".step-{step:06d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    if optimizer is not None:
        tensors, rest = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(rest))
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "last": last or {}}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for _, old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    log.info("checkpoint %s", final)
    return final


def latest_checkpoint(root: str | Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint of this run; checkpoints of other settings are removed."""
    root = Path(root)
    for stale in root.glob(".step-*.tmp") if root.is_dir() else []:
        shutil.rmtree(stale)
    mine = []
    for step, path in list_checkpoints(root):
        state = json.loads((path / "state.json").read_text())
        if state.get("fingerprint") == fingerprint:
            mine.append(path)
        else:
            log.warning("removing checkpoint of other settings: %s", path)
            shutil.rmtree(path)
    return mine[-1] if mine else None


def checkpoint_step(path: Path) -> int:
    return int(json.loads((path / "state.json").read_text())["step"])


def checkpoint_last_values(path: Path) -> dict[str, float]:
    """The values logged at the checkpoint's step (losses, held-out attention share)."""
    return dict(json.loads((path / "state.json").read_text()).get("last", {}))


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> bool:
    """Load the checkpoint's optimizer state into ``optimizer``; False if it holds none."""
    if not (path / "optimizer.safetensors").is_file():
        return False
    tensors = load_file(str(path / "optimizer.safetensors"))
    rest = json.loads((path / "optimizer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, rest))
    return True
