"""Objects rendered as rotated, shaded sprites (or crowds of them) and placed on an image
so that no earlier object is hidden too much."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipeline.demo.kinds import Kind, Variant
from pipeline.demo.sprite import _Sprite, _u

MIN_VISIBLE_FRACTION = 0.7  # an object may lose at most 30% of its pixels to later objects
MIN_AREA = 64  # pixels; a placement leaving any instance smaller than this is rejected


def _render_sprite(kind: Kind, variant: Variant, size: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One object: ``(rgb float32 (h, w, 3), mask bool (h, w))``, rotated, shaded, textured."""
    w = max(8, int(round(size * kind.aspect[0])))
    h = max(8, int(round(size * kind.aspect[1])))
    colours = {
        name: tuple(int(np.clip(v + rng.integers(-14, 15), 0, 255)) for v in col)
        for name, col in variant.colours.items()
    }
    sprite = _Sprite(w, h)
    kind.draw(sprite, rng, colours)  # type: ignore[arg-type]
    rgb_img, mask_img = sprite.rgb, sprite.mask
    if kind.mirror and rng.random() < 0.5:
        rgb_img = rgb_img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask_img = mask_img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = _u(rng, -kind.max_rotation, kind.max_rotation)
    if abs(angle) >= 1:
        rgb_img = rgb_img.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
        mask_img = mask_img.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    mask = np.asarray(mask_img) > 127
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    rgb = np.asarray(rgb_img, dtype=np.float32)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    hh, ww = mask.shape
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, hh), np.linspace(-0.5, 0.5, ww), indexing="ij")
    a = _u(rng, 0, 2 * math.pi)
    light = 1 - _u(rng, 0.15, 0.35) * (xx * math.cos(a) + yy * math.sin(a))
    grain = 1 + rng.normal(0, 0.035, (hh, ww, 1)).astype(np.float32)
    rgb = rgb * (light[..., None] * grain) + rng.normal(0, 3, (hh, ww, 3)).astype(np.float32)
    return rgb.astype(np.float32), mask


def _render_crowd(kind: Kind, variant: Variant, size: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A cluster of 4-7 small objects of one kind, overlapping: ``(rgb, union mask)``."""
    members = [_render_sprite(kind, variant, size * _u(rng, 0.42, 0.55), rng)
               for _ in range(int(rng.integers(4, 8)))]
    spread = size * 0.45
    offsets = [(rng.normal(0, spread / 2), rng.normal(0, spread / 3)) for _ in members]
    boxes = [(ox - m.shape[1] / 2, oy - m.shape[0] / 2) for (ox, oy), (_, m) in zip(offsets, members)]
    x_min = min(b[0] for b in boxes)
    y_min = min(b[1] for b in boxes)
    places = [(int(round(bx - x_min)), int(round(by - y_min))) for bx, by in boxes]
    w = max(px + m.shape[1] for (px, _), (_, m) in zip(places, members))
    h = max(py + m.shape[0] for (_, py), (_, m) in zip(places, members))
    rgb = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), bool)
    for (px, py), (m_rgb, m_mask) in zip(places, members):
        win = (slice(py, py + m_mask.shape[0]), slice(px, px + m_mask.shape[1]))
        rgb[win][m_mask] = m_rgb[m_mask]
        mask[win] |= m_mask
    return rgb, mask


def _find_place(mask: np.ndarray, shape: tuple[int, int], visible: list[np.ndarray],
                drawn: list[int], rng: np.random.Generator,
                tries: int = 16) -> tuple[int, int] | None:
    """A top-left corner for ``mask`` leaving every earlier instance enough of its pixels.

    Half the time the candidate covering the fewest earlier pixels is taken, otherwise a
    random valid one (so some objects overlap, as in photos).
    """
    H, W = shape
    h, w = mask.shape
    if h > H or w > W:
        return None
    valid: list[tuple[int, int, int]] = []
    for _ in range(tries):
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        total, ok = 0, True
        for vis, area0 in zip(visible, drawn):
            cover = int(np.count_nonzero(vis[y0:y0 + h, x0:x0 + w] & mask))
            if cover:
                left = int(np.count_nonzero(vis)) - cover
                if left < max(MIN_VISIBLE_FRACTION * area0, MIN_AREA):
                    ok = False
                    break
            total += cover
        if ok:
            valid.append((total, y0, x0))
    if not valid:
        return None
    choice = min(valid) if rng.random() < 0.5 else valid[int(rng.integers(len(valid)))]
    return choice[1], choice[2]
