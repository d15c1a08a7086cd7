"""Runs kept apart: every setting and input that changes what is trained gets its own checkpoints.

    <out_dir>/checkpoints/<run key>/step-<NNNNNN>/        the first attempt of a run
    <out_dir>/checkpoints/<run key>.<n>/step-<NNNNNN>/    train.resume: never started it afresh

``run key = fingerprint(trained settings, data digest)``: the settings of
``config.trained_settings`` and the bytes of the inputs (tables, images, pretrained model).
The code is not in the key: a changed module resumes the run and the summary says so
(``resumed_across_code_change`` with both code digests). So ``dvc exp run -S
train.lambda_token=...`` trains into a folder of its own beside the baseline's, and a resume
never removes a checkpoint of another run: only ``python -m stages.train --prune-other-runs``
does, when asked.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import ConfigError, fingerprint
from pipeline.train.checkpoints import list_checkpoints, read_state
from pipeline.train.config import TrainConfig, trained_settings

log = logging.getLogger(__name__)

_RUN_DIR = re.compile(r"^([0-9a-f]{16})(?:\.(\d+))?$")


@dataclass(frozen=True)
class RunIdentity:
    """What a run's checkpoints are matched on (key, settings, data) and what they record (code)."""

    key: str
    settings: dict[str, Any]
    data_digest: str
    code_digest: str

    @classmethod
    def of(cls, cfg: TrainConfig, data_digest: str, code_digest: str) -> RunIdentity:
        settings = trained_settings(cfg)
        return cls(fingerprint(settings, data_digest), settings, data_digest, code_digest)

    def state(self) -> dict[str, Any]:
        """The identity as stored in each checkpoint's state.json."""
        return {"run": self.key, "settings": self.settings, "data_digest": self.data_digest,
                "code_digest": self.code_digest}


@dataclass(frozen=True)
class ResumePlan:
    """Where this run writes its checkpoints, and the checkpoint it continues from (None: step 0)."""

    folder: Path
    checkpoint: Path | None
    code_change: dict[str, str] | None  # {"from": digest of the checkpoint's code, "to": this code's}


def run_folders(root: str | Path) -> list[tuple[str, int, Path]]:
    """``(key, attempt, folder)`` of every run folder under ``root`` (attempt 0: the first)."""
    root = Path(root)
    found = [(m.group(1), int(m.group(2) or 0), p) for p in root.iterdir()
             if p.is_dir() and (m := _RUN_DIR.match(p.name))] if root.is_dir() else []
    return sorted(found)


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["lambda_token: 0.001 -> 0.01", ...]`` for every setting that differs."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys if old.get(k) != new.get(k)]


def _check_same_run(checkpoint: Path, ident: RunIdentity) -> None:
    """A checkpoint in this run's folder must be of this run: else stop, naming what differs."""
    state = read_state(checkpoint)
    diff = settings_diff(state.get("settings", {}), ident.settings)
    if state.get("data_digest") != ident.data_digest:
        diff.append(f"inputs (tables, images, pretrained model): {state.get('data_digest')} -> {ident.data_digest}")
    if diff:
        raise ConfigError(f"{checkpoint} is in the folder of run {ident.key} but was written by other settings or "
                          f"inputs (another model or precision?): {'; '.join(diff)}. Move it out of "
                          f"{checkpoint.parent.parent}; nothing was deleted")


def describe_other_runs(root: Path, ident: RunIdentity) -> int:
    """Log each kept run of other settings with what differs; returns how many there are."""
    others = [(k, p) for k, _, p in run_folders(root) if k != ident.key]
    for key, folder in others:
        ckpts = list_checkpoints(folder)
        if not ckpts:
            continue
        state = read_state(ckpts[-1][1])
        diff = settings_diff(state.get("settings", {}), ident.settings)
        if state.get("data_digest") != ident.data_digest:
            diff.append("inputs changed")
        log.info("kept, not resumed: %s (step %d): %s", folder, ckpts[-1][0], "; ".join(diff) or "same settings")
    legacy = list_checkpoints(root)
    if legacy:
        log.warning("%d checkpoint(s) of an older layout directly in %s are kept and not resumed", len(legacy), root)
    return len(others) + len(legacy)


def plan_resume(root: str | Path, ident: RunIdentity, mode: str) -> ResumePlan:
    """Pick this run's folder and checkpoint; nothing is removed.

    ``mode="auto"``: the newest attempt of this run key, from its newest complete checkpoint.
    ``mode="never"``: a new attempt folder (``<key>.<n>``) when this key has checkpoints already.
    """
    root = Path(root)
    attempts = [(a, p) for k, a, p in run_folders(root) if k == ident.key]
    if mode == "never":
        used = [a for a, p in attempts if list_checkpoints(p)]
        folder = root / (f"{ident.key}.{max(used) + 1}" if used else ident.key)
        if used:
            log.info("train.resume=never: a fresh run in %s; %d earlier attempt(s) kept", folder, len(used))
        return ResumePlan(folder, None, None)
    if mode != "auto":
        raise ConfigError(f"train.resume must be auto or never, got {mode!r}")
    folder = attempts[-1][1] if attempts else root / ident.key
    for stale in folder.glob(".step-*.tmp") if folder.is_dir() else []:
        shutil.rmtree(stale)  # a checkpoint this run was killed while writing: never complete
    ckpts = list_checkpoints(folder)
    if not ckpts:
        return ResumePlan(folder, None, None)
    checkpoint = ckpts[-1][1]
    _check_same_run(checkpoint, ident)
    old_code = read_state(checkpoint).get("code_digest")
    change = {"from": old_code, "to": ident.code_digest} if old_code != ident.code_digest else None
    if change:
        log.warning("resuming %s across a code change (code digest %s -> %s): the steps before it ran the old code",
                    checkpoint, old_code, ident.code_digest)
    return ResumePlan(folder, checkpoint, change)


def prune_other_runs(root: str | Path, keep_key: str) -> list[Path]:
    """Remove every run folder of another key and old-layout checkpoints; returns what was removed.

    Only the user's explicit ``python -m stages.train --prune-other-runs`` calls this.
    """
    root = Path(root)
    removed = [p for k, _, p in run_folders(root) if k != keep_key] + [p for _, p in list_checkpoints(root)]
    for path in removed:
        shutil.rmtree(path)
        log.warning("removed %s", path)
    return removed


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_runs(root: str | Path, current: str | None = None) -> list[dict[str, Any]]:
    """One row per run folder (and old-layout checkpoints): key, folder, steps, bytes, current or not."""
    root = Path(root)
    rows = [{"run": k, "folder": str(p), "steps": [s for s, _ in list_checkpoints(p)], "bytes": folder_bytes(p),
             "current": k == current} for k, _, p in run_folders(root)]
    legacy = list_checkpoints(root)
    if legacy:
        rows.append({"run": "old layout", "folder": str(root), "steps": [s for s, _ in legacy],
                     "bytes": sum(folder_bytes(p) for _, p in legacy), "current": False})
    return rows
