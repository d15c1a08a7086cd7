"""Pictures of what the data stages did: an image with its captions, nouns, boxes and masks.

``render_overlay`` draws one image: every distinct noun phrase gets a colour; its mask is
blended over the image, its boxes are outlined and labelled with their score, and a panel
below lists the captions and each noun with its colour (``no box`` for nouns that Grounding
DINO did not find).
"""

from __future__ import annotations

import colorsys
import logging
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from pipeline.core.images import load_rgb
from pipeline.core.masks import decode_rle
from pipeline.core.tables import read_table, write_bytes

log = logging.getLogger(__name__)


@dataclass
class NounView:
    """One noun phrase of an image as drawn: boxes ``(x0, y0, x1, y1, score)``, mask (H, W) bool."""

    text: str
    boxes: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    mask: np.ndarray | None = None


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated saturated colours (golden-ratio hues)."""
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95))  # type: ignore[misc]
        for i in range(n)
    ]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_overlay(image: Image.Image, captions: list[str], nouns: list[NounView], alpha: float = 0.45) -> Image.Image:
    """Image + masks + boxes, with a text panel below. Returns a new RGB image."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    colors = palette(len(nouns))
    for noun, color in zip(nouns, colors):
        if noun.mask is not None and noun.mask.any():
            m = noun.mask[..., None]
            base = np.where(m, (1 - alpha) * base + alpha * np.asarray(color, np.float32), base)
    canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    small = _font(max(10, image.width // 40))
    for noun, color in zip(nouns, colors):
        for x0, y0, x1, y1, score in noun.boxes:
            draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
            label = f"{noun.text} {score:.2f}"
            tw = draw.textlength(label, font=small)
            draw.rectangle([x0, y0, x0 + tw + 4, y0 + small.size + 4], fill=color)
            draw.text((x0 + 2, y0 + 1), label, fill=(0, 0, 0), font=small)

    font = _font(max(11, image.width // 32))
    line_h = font.size + 4
    width_chars = max(20, int(canvas.width / (font.size * 0.55)))
    lines: list[tuple[str, tuple[int, int, int]]] = []
    for c in captions:
        lines += [(t, (255, 255, 255)) for t in textwrap.wrap(f'"{c}"', width_chars)]
    for noun, color in zip(nouns, colors):
        status = f"{len(noun.boxes)} box(es)" if noun.boxes else "no box"
        area = f", mask {int(noun.mask.sum())} px" if noun.mask is not None else ""
        lines.append((f"{noun.text}: {status}{area}", color))
    panel = Image.new("RGB", (canvas.width, line_h * len(lines) + 8), (24, 24, 24))
    pdraw = ImageDraw.Draw(panel)
    n_caption_lines = len(lines) - len(nouns)
    for i, (text, color) in enumerate(lines):
        x, y = 6, 4 + i * line_h
        if i >= n_caption_lines:  # a colour swatch before each noun
            pdraw.rectangle([x, y + 2, x + font.size - 2, y + font.size], fill=color)
            x += font.size + 4
        pdraw.text((x, y), text, fill=color, font=font)
    out = Image.new("RGB", (canvas.width, canvas.height + panel.height))
    out.paste(canvas, (0, 0))
    out.paste(panel, (0, canvas.height))
    return out


class OverlaySource:
    """Reads the captions, boxes and masks tables once; renders any image's overlay."""

    def __init__(self, captions_path: str | Path, boxes_path: str | Path, masks_path: str | Path | None):
        caps = read_table(captions_path, columns=["image_id", "caption_id", "path", "caption"]).to_pylist()
        self.paths = {r["image_id"]: r["path"] for r in caps}
        self.captions: dict[int, list[str]] = defaultdict(list)
        for r in sorted(caps, key=lambda r: r["caption_id"]):
            self.captions[r["image_id"]].append(r["caption"])
        self.boxes: dict[int, list[dict]] = defaultdict(list)
        for r in read_table(boxes_path).to_pylist():
            self.boxes[r["image_id"]].append(r)
        self.masks: dict[int, dict[int, dict]] = defaultdict(dict)
        if masks_path is not None and Path(masks_path).exists():
            for r in read_table(masks_path).to_pylist():
                self.masks[r["image_id"]][r["noun_id"]] = r

    def image_ids(self) -> list[int]:
        return sorted(self.paths)

    def nouns(self, image_id: int) -> list[NounView]:
        """Distinct noun phrases of an image (lower-cased), with boxes and union mask."""
        from pipeline.data.phrase_boxes import normalize_phrase

        views: dict[str, NounView] = {}
        seen_boxes: dict[str, set] = defaultdict(set)
        for r in sorted(self.boxes.get(image_id, []), key=lambda r: (r["noun_id"], r["box_index"])):
            key = normalize_phrase(r["text"])
            view = views.setdefault(key, NounView(text=key))
            if r["found"]:
                box = (r["x0"], r["y0"], r["x1"], r["y1"], r["score"])
                if box[:4] not in seen_boxes[key]:
                    seen_boxes[key].add(box[:4])
                    view.boxes.append(box)
            m = self.masks.get(image_id, {}).get(r["noun_id"])
            if m is not None:
                mask = decode_rle(m["rle"], m["height"], m["width"])
                view.mask = mask if view.mask is None else (view.mask | mask)
        return list(views.values())

    def render(self, image_id: int) -> Image.Image:
        if image_id not in self.paths:
            raise KeyError(f"image id {image_id} is not in the captions table")
        return render_overlay(load_rgb(self.paths[image_id]), self.captions[image_id], self.nouns(image_id))


def render_all_overlays(
    captions_path: str | Path, boxes_path: str | Path, masks_path: str | Path, out_dir: str | Path
) -> int:
    """Write ``out_dir/<image_id>.png`` for every image in the boxes table; returns the count."""
    source = OverlaySource(captions_path, boxes_path, masks_path)
    ids = sorted(source.boxes)
    for image_id in tqdm(ids, desc="overlays", unit="img", disable=None):
        write_bytes(to_png(source.render(image_id)), Path(out_dir) / f"{image_id}.png")
    return len(ids)


def to_png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def sample_grid(images: list[Image.Image], titles: list[str], cell: int = 192, cols: int = 4) -> Image.Image:
    """Generated samples in a grid, each over its (wrapped) prompt: ``len(images)`` cells of ``cell`` px."""
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    font, line = _font(11), 13
    wrap = max(8, cell // 7)
    lines = [textwrap.wrap(t, wrap)[:4] for t in titles]
    text_h = line * max((len(ls) for ls in lines), default=1) + 4
    cols = max(1, min(cols, len(images)))
    rows = max(1, -(-len(images) // cols))
    grid = Image.new("RGB", (cols * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (image, ls) in enumerate(zip(images, lines)):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        for k, text in enumerate(ls):
            draw.text((x + 3, y + 2 + k * line), text, fill=(0, 0, 0), font=font)
        grid.paste(image.convert("RGB").resize((cell, cell), Image.BICUBIC), (x, y + text_h))
    return grid
