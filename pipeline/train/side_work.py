"""Side work of a training step: attention heatmaps and the attention share on held-out images.

It runs after the step's checkpoint is written, so nothing it does can cost a checkpoint.
Every process takes its share of the examples (``indices[rank::processes]``) and the results
meet in collectives that every process reaches whatever happened in its local work: a
failure is logged, returned as an error string for the summary, and never ends the run or
leaves a process waiting in a collective.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.train.attention import average_maps
from pipeline.train.attention_metrics import GroundingTotals, grounding_totals
from pipeline.train.dataset import collate
from pipeline.train.step import encode_batch

log = logging.getLogger(__name__)


def _attempt(what: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(fn(), None)``, or ``(None, "<what>: <error>")`` with the traceback logged."""
    try:
        return fn(), None
    except Exception as exc:  # side work must never end a run
        log.error("%s failed (training goes on):\n%s", what, traceback.format_exc())
        return None, f"{what}: {type(exc).__name__}: {exc}"


def _gather(accelerator, obj: Any) -> list[Any]:
    """``[obj of process 0, obj of process 1, ...]`` on every process (a collective)."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


@dataclass
class SideWork:
    """Heatmaps of a few fixed training captions and the held-out attention share, on every process.

    models: ``unet`` (unwrapped), ``vae``, ``text`` (a ``TextConditioner``), ``scheduler``; capture: the training
    :class:`AttentionCapture`; heat_indices: dataset indices drawn at every heatmap step.
    """

    cfg: Any
    accelerator: Any
    models: Any
    capture: Any
    dataset: Any
    heldout_set: Any | None
    resolutions: list[int]
    heat_indices: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def _mine(self, indices: list[int]) -> list[int]:
        return indices[self.accelerator.process_index::self.accelerator.num_processes]

    def _collect_errors(self, step: int, error: str | None) -> bool:
        """Gather every process's error; record them (main process); True when any process failed."""
        errors = [e for e in _gather(self.accelerator, error) if e]
        if self.accelerator.is_main_process:
            self.errors += [f"step {step}: {e}" for e in errors]
        return bool(errors)

    def heldout(self, step: int) -> dict[str, float] | None:
        """Held-out share and IoU of the current UNet (None: not measured, or failed on some process)."""
        if self.heldout_set is None:
            return None
        cfg, m = self.cfg, self.models

        def local() -> torch.Tensor:
            totals = grounding_totals(m.unet, m.vae, m.text, self.heldout_set,
                                      self._mine(list(range(len(self.heldout_set)))), cfg.attn_blocks,
                                      seed=cfg.seed, scheduler=m.scheduler)
            return totals.to_tensor(self.resolutions)

        values, error = _attempt(f"held-out attention share at step {step}", local)
        if self._collect_errors(step, error):
            return None
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum")
        means = GroundingTotals.from_tensor(values, self.resolutions).means()
        return {k: v for k, v in means.items() if k == "iou" or k.startswith("share")}

    def heatmap_rows(self, step: int) -> list[dict] | None:
        """Rows for ``render_heatmaps`` on the main process (None elsewhere, or on failure)."""
        mine = self._mine(self.heat_indices)
        rows, error = _attempt(f"attention heatmaps at step {step}", lambda: [self._heat_row(i) for i in mine])
        gathered = _gather(self.accelerator, rows or [])
        if self._collect_errors(step, error) or not self.accelerator.is_main_process:
            return None
        return sorted((r for part in gathered for r in part), key=lambda r: r["index"])

    @torch.no_grad()
    def _heat_row(self, idx: int) -> dict:
        """One caption: its item, nouns and each group's head/layer-averaged map ``{r: (r*r, 77)}`` on the CPU."""
        m, unet = self.models, self.models.unet
        item = self.dataset[idx]
        device = unet.device
        # fixed draws at position -(idx + 1): independent of the training stream
        noisy, _, _, (hidden, added) = encode_batch(collate([item]), [-(idx + 1)], self.cfg.seed, m.vae, m.text,
                                                    m.scheduler, device)
        t = torch.full((1,), m.scheduler.config.num_train_timesteps // 2, device=device, dtype=torch.long)
        was_training = unet.training
        unet.eval()
        try:
            with self.capture.active(True):
                unet(noisy, t, hidden, added_cond_kwargs=added)
                maps = {r: a[0] for r, a in average_maps(self.capture.groups(), device="cpu").items()}
        finally:
            self.capture.clear()
            unet.train(was_training)
        example = self.dataset.examples[idx]
        return {"index": idx, "item": item, "maps": maps, "caption": example.caption,
                "nouns": [n.text for n in example.nouns]}
