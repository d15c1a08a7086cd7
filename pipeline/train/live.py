"""What the train stage shows a person: dvclive loss curves and attention heatmaps.

``<out_dir>/dvclive/`` (main process only):
    plots/metrics/loss/{total,ldm,token,pixel,token_<r>,pixel_<r>}.tsv, grad_norm.tsv   (``dvc plots show``)
    plots/images/attention/step-<NNNNNN>.png   rows: fixed captions; columns: the image, then
                                               each supervised noun's attention (heads, layers
                                               and resolution groups averaged) over the image,
                                               its mask outlined
    plots/metrics/heldout/attention_share_*.tsv  attention inside the masks on held-out images
    metrics.json                               the last step's values
A resumed run first drops the rows logged after its checkpoint, so curves never double.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .tables import REJECTS_SCHEMA, rejects_table, write_json, write_table

log = logging.getLogger(__name__)

CELL = 128


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

    def log_heldout(self, step: int, share: dict[str, float]) -> None:
        """Attention share inside the masks on held-out images (``heldout/attention_share_<r>``)."""
        if self.live is None:
            return
        self.live.step = step
        for key, value in share.items():
            self.live.log_metric(f"heldout/attention_share_{key}", value)
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


def colormap(x: np.ndarray) -> np.ndarray:
    """A perceptually ordered blue-green-yellow-red map: (H, W) in [0, 1] -> (H, W, 3) uint8."""
    stops = np.array([[48, 18, 59], [40, 120, 240], [30, 200, 150], [200, 230, 40], [250, 120, 20], [122, 4, 3]],
                     np.float32)
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def _to_image(pixel_values: torch.Tensor) -> Image.Image:
    arr = ((pixel_values.float().clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr).resize((CELL, CELL), Image.BILINEAR)


def noun_heatmap(maps: dict[int, torch.Tensor], tokens: list[int]) -> np.ndarray:
    """Groups' (r*r, 77) maps -> one (CELL, CELL) map for a noun: its tokens summed, groups averaged."""
    ups = []
    for r, m in maps.items():
        a = m[:, tokens].sum(-1).view(1, 1, r, r).float()
        ups.append(F.interpolate(a, size=(CELL, CELL), mode="bilinear", align_corners=False)[0, 0])
    h = torch.stack(ups).mean(0).numpy()
    return (h - h.min()) / max(float(h.max() - h.min()), 1e-12)


def render_heatmaps(rows: list[dict]) -> Image.Image:
    """A grid: one row per example, the image then one heatmap per supervised noun."""
    font = ImageFont.load_default()
    n_cols = 1 + max(len(r["item"]["token_indices"]) for r in rows)
    label_h = 14
    grid = Image.new("RGB", (n_cols * CELL, len(rows) * (CELL + label_h)), (20, 20, 20))
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        item, y = row["item"], i * (CELL + label_h)
        image = _to_image(item["pixel_values"])
        grid.paste(image, (0, y + label_h))
        title = row.get("caption") or f"caption {item['caption_id']}"
        draw.text((2, y + 1), title[: CELL // 6], fill=(255, 255, 255), font=font)
        big = max(item["masks"])
        for j, tokens in enumerate(item["token_indices"]):
            heat = colormap(noun_heatmap(row["maps"], tokens))
            blend = (0.45 * np.asarray(image, np.float32) + 0.55 * heat).astype(np.uint8)
            cell = Image.fromarray(blend)
            mask = item["masks"][big][j].float()[None, None]
            edge = F.interpolate(mask, size=(CELL, CELL), mode="nearest")[0, 0].numpy() > 0.5
            padded = np.pad(edge, 1)
            interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            outline = edge & ~interior
            arr = np.asarray(cell).copy()
            arr[outline] = (255, 255, 255)
            grid.paste(Image.fromarray(arr), ((j + 1) * CELL, y + label_h))
            name = row.get("nouns", [None] * (j + 1))[j] or f"noun {j}"
            draw.text(((j + 1) * CELL + 2, y + 1), str(name)[:20], fill=(255, 255, 255), font=font)
    return grid
