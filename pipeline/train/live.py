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
        """The heatmap grid of the fixed captions; without a supervised noun, a picture saying so."""
        if self.live is None:
            return
        self.live.log_image(f"attention/step-{step:06d}.png", render_heatmaps(rows) if rows else _nothing_to_show())

    def finish(self, summary: dict, rejects: list[tuple[str, str, str]]) -> None:
        if not self.enabled:
            return
        table = rejects_table("train", rejects) if rejects else REJECTS_SCHEMA.empty_table()
        write_table(table, self.out_dir / "rejects.parquet")
        write_json(summary, self.out_dir / "summary.json")
        if self.live is not None:
            self.live.end()


def _nothing_to_show():
    """A small picture for a step with no supervised noun among the heatmap captions."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (384, 48), (20, 20, 20))
    ImageDraw.Draw(image).text((8, 16), "no supervised noun: no attention to show", fill=(255, 255, 255))
    return image
