"""Attention heatmaps: a colour map, a noun's map over its tokens and groups, a grid of examples.

Used by the ``train`` stage (``dvclive/plots/images/attention/``) and by ``evaluate`` (the
per-token heatmaps of generated samples).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

CELL = 128


def colormap(x: np.ndarray) -> np.ndarray:
    """A perceptually ordered blue-green-yellow-red map: (H, W) in [0, 1] -> (H, W, 3) uint8."""
    stops = np.array([[48, 18, 59], [40, 120, 240], [30, 200, 150], [200, 230, 40], [250, 120, 20], [122, 4, 3]],
                     np.float32)
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def _to_image(pixel_values: torch.Tensor) -> Image.Image:
    arr = ((pixel_values.detach().float().clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr).resize((CELL, CELL), Image.BILINEAR)


def noun_heatmap(maps: dict[int, torch.Tensor], tokens: list[int]) -> np.ndarray:
    """Groups' (r*r, 77) maps -> one (CELL, CELL) map for a noun: its tokens summed, groups averaged.

    The maps may live on any device; the picture is computed on the CPU.
    """
    ups = []
    for r, m in maps.items():
        a = m.detach().cpu()[:, tokens].sum(-1).view(1, 1, r, r).float()
        ups.append(F.interpolate(a, size=(CELL, CELL), mode="bilinear", align_corners=False)[0, 0])
    h = torch.stack(ups).mean(0).cpu().numpy()
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
            mask = item["masks"][big][j].detach().cpu().float()[None, None]
            edge = F.interpolate(mask, size=(CELL, CELL), mode="nearest")[0, 0].cpu().numpy() > 0.5
            padded = np.pad(edge, 1)
            interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            outline = edge & ~interior
            arr = np.asarray(cell).copy()
            arr[outline] = (255, 255, 255)
            grid.paste(Image.fromarray(arr), ((j + 1) * CELL, y + label_h))
            name = row.get("nouns", [None] * (j + 1))[j] or f"noun {j}"
            draw.text(((j + 1) * CELL + 2, y + 1), str(name)[:20], fill=(255, 255, 255), font=font)
    return grid
