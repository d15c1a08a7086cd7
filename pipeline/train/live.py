"""What the train stage logs with dvclive: loss curves, held-out attention share, heatmap pictures.

``<out_dir>/dvclive/`` (main process only):
    plots/metrics/loss/{total,ldm,token,pixel,token_<r>,pixel_<r>}.tsv, grad_norm.tsv   (``dvc plots show``)
    plots/images/attention/step-<NNNNNN>.png   rows: fixed captions; columns: the image, then
                                               each supervised noun's attention (heads, layers
                                               and resolution groups averaged) over the image,
                                               its mask outlined
    plots/metrics/heldout/attention_{share,share_r<r>,iou}.tsv  attention inside the masks on
                                               held-out images; step 0: the pretrained UNet
    metrics.json                               the last step's values
A resumed run first drops the rows logged after its checkpoint, so curves never double.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.schemas import REJECTS_SCHEMA
from pipeline.core.tables import rejects_table, write_json, write_table
from pipeline.train.heatmaps import render_heatmaps

log = logging.getLogger(__name__)



def trim_dvclive(live_dir: Path, step: int) -> None:
    """Drop metric rows with step > ``step`` (they came after the checkpoint we resume from)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        col = header.split("\t").index("step")
        kept = [r for r in rows if int(r.split("\t")[col]) <= step]
        tsv.write_text("\n".join([header, *kept]) + "\n")
    images = live_dir / "plots" / "images" / "attention"
    for png in images.glob("step-*.png") if images.is_dir() else []:
        if int(png.stem.split("-")[1]) > step:
            png.unlink()


class TrainLogger:
    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.live = None
        if not enabled:
            return
        from dvclive import Live

        live_dir = self.out_dir / "dvclive"
        if resume_step > 0:
            trim_dvclive(live_dir, resume_step)
        self.live = Live(dir=str(live_dir), resume=resume_step > 0, dvcyaml=False, save_dvc_exp=False)
        # a DVC output even when no heatmap can be drawn (no supervised noun to show)
        (live_dir / "plots" / "images").mkdir(parents=True, exist_ok=True)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = step
        for key, value in values.items():
            # "token/16" -> "loss/token_16": a metric cannot be both a value and a folder
            name = key if key == "grad_norm" else "loss/" + key.replace("/", "_")
            self.live.log_metric(name, value)
        self.live.next_step()

    def log_heldout(self, step: int, grounding: dict[str, float]) -> None:
        """Attention on held-out images: ``heldout/attention_share``, ``_share_r<r>``, ``_iou``.

        Step 0 is the pretrained UNet.
        """
        if self.live is None:
            return
        self.live.step = step
        for key, value in grounding.items():
            self.live.log_metric(f"heldout/attention_{key}", value)
        self.live.make_summary()

    def log_heatmaps(self, step: int, rows: list[dict]) -> None:
        if self.live is None or not rows:
            return
        self.live.log_image(f"attention/step-{step:06d}.png", render_heatmaps(rows))

    def finish(self, summary: dict, rejects: list[tuple[str, str, str]]) -> None:
        if not self.enabled:
            return
        table = rejects_table("train", rejects) if rejects else REJECTS_SCHEMA.empty_table()
        write_table(table, self.out_dir / "rejects.parquet")
        write_json(summary, self.out_dir / "summary.json")
        if self.live is not None:
            self.live.end()
