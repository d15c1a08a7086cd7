"""The train stage's summary (``summary.json``, shown by ``dvc metrics show``) and its flags."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.official_list import SUMMARY_KEY, official_summary
from pipeline.core.provenance import random_weights_flags
from pipeline.train.config import BatchLayout, TrainConfig

log = logging.getLogger(__name__)


def flags(cfg: TrainConfig, data: dict, heldout: list, heldout_nouns: int) -> list[str]:
    """Why the run's grounding numbers cannot be read as success; empty when there is nothing to flag."""
    found = random_weights_flags([cfg.pretrained])
    if data["supervised_nouns"] == 0 and cfg.supervise:
        found.append("no_supervised_nouns: L_token and L_pixel were 0 throughout")
    if heldout and heldout_nouns == 0:
        found.append("heldout_without_supervised_nouns: no held-out attention share was measured")
    masked = data["supervised_nouns"] + data["full_image_masks"]
    if masked and data["full_image_masks"] > masked / 2:
        found.append(f"full_image_masks: {data['full_image_masks']} of {masked} masks cover more than "
                     f"train.max_mask_coverage={cfg.max_mask_coverage} of an attention map and were not supervised")
    for flag in found:
        log.warning("train: %s", flag)
    return found


def official_ratios(captions_path, data: dict) -> dict[str, Any]:
    """In the paper data mode: ``{"official_list": {"captions": examples / 4,526, "masked_nouns":
    supervised nouns / 13,634}}`` (the counts themselves are the summary's ``examples`` and
    ``supervised_nouns``); else ``{}``. Ratios only, so the summary stays one screen."""
    entries = official_summary(captions_path, captions=data["examples"], masked_nouns=data["supervised_nouns"])
    for name, e in entries.get(SUMMARY_KEY, {}).items():
        log.info("train: %s %d beside the official list's %d (%.3f)", name, e["here"], e["official"], e["ratio"])
    return {SUMMARY_KEY: {k: e["ratio"] for k, e in entries[SUMMARY_KEY].items()}} if entries else {}


def build_summary(cfg: TrainConfig, layout: BatchLayout, run: dict[str, Any], data, base: dict[str, float],
                  last: dict[str, float], side_errors: list[str], official: dict[str, Any]) -> dict[str, Any]:
    """Counts, the run's identity and resume, the headline values, flags and side-work failures.

    run: ``run`` (the run folder's name), ``resumed_from_step``, ``resumed_across_code_change``
    (None, or the code digests ``from``/``to``), ``other_runs_kept``; data: ``setup.TrainData``.
    Per-group values (``_r<r>``, ``/<r>``) live in the dvclive curves, not here.
    """
    summary = {
        "steps": cfg.max_train_steps,
        **run,
        "processes": layout.processes,
        "global_batch": layout.global_batch,
        "accumulation": layout.accumulation,
        "attention_resolutions": data.resolutions,
        "train_examples": len(data.examples),
        "heldout_examples": len(data.heldout),
        "heldout_supervised_nouns": data.heldout_nouns,
        **{f"base_heldout_attention_{k}": v for k, v in base.items() if k in ("share", "iou")},
        # per-group loss values are in the dvclive curves; the summary keeps the headline ones
        **{f"final_{k}": v for k, v in last.items() if "/" not in k and "_r" not in k},
        **data.summary,
        **official,
        "side_work_errors": side_errors,
        "flags": flags(cfg, data.summary, data.heldout, data.heldout_nouns),
    }
    summary["flagged"] = len(summary["flags"])  # a number, so `dvc metrics show` / `dvc exp show` list it
    return summary
