"""The canvas an object is drawn on (colour image plus exact mask), and small helpers."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]


class _Sprite:
    """An object drawn in its own box: a colour image and the boolean mask of its pixels.

    ``solid`` shapes add to the mask, details only colour pixels (and are visible only
    where the mask is set), ``erase`` removes from the mask (holes).
    """

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.rgb = Image.new("RGB", (w, h), (0, 0, 0))
        self.mask = Image.new("L", (w, h), 0)
        self._dc = ImageDraw.Draw(self.rgb)
        self._dm = ImageDraw.Draw(self.mask)

    def px(self, f: float) -> int:
        """A line width: fraction ``f`` of the shorter side, at least one pixel."""
        return max(1, int(round(f * min(self.w, self.h))))

    def _xy(self, pts: Sequence[float]) -> list[float]:
        return [p * (self.w if i % 2 == 0 else self.h) for i, p in enumerate(pts)]

    def _draw(self, shape: str, pts: Sequence[float], fill: RGB, solid: bool, **kw: Any) -> None:
        xy = self._xy(pts)
        getattr(self._dc, shape)(xy, fill=fill, **kw)
        if solid:
            getattr(self._dm, shape)(xy, fill=255, **kw)

    def ellipse(self, box: Sequence[float], fill: RGB, solid: bool = True) -> None:
        self._draw("ellipse", box, fill, solid)

    def circle(self, cx: float, cy: float, r: float, fill: RGB, solid: bool = True) -> None:
        """A circle centred at fractional (cx, cy), radius ``r`` of the shorter side."""
        rx, ry = r * min(self.w, self.h) / self.w, r * min(self.w, self.h) / self.h
        self._draw("ellipse", (cx - rx, cy - ry, cx + rx, cy + ry), fill, solid)

    def polygon(self, pts: Sequence[float], fill: RGB, solid: bool = True) -> None:
        self._draw("polygon", pts, fill, solid)

    def rect(self, box: Sequence[float], fill: RGB, solid: bool = True) -> None:
        self._draw("rectangle", box, fill, solid)

    def rounded(self, box: Sequence[float], radius: float, fill: RGB, solid: bool = True) -> None:
        self._draw("rounded_rectangle", box, fill, solid, radius=self.px(radius))

    def pieslice(self, box: Sequence[float], start: float, end: float, fill: RGB,
                 solid: bool = True) -> None:
        self._draw("pieslice", box, fill, solid, start=start, end=end)

    def line(self, pts: Sequence[float], width: float, fill: RGB, solid: bool = True) -> None:
        self._draw("line", pts, fill, solid, width=self.px(width))

    def arc(self, box: Sequence[float], start: float, end: float, width: float, fill: RGB,
            solid: bool = True) -> None:
        self._draw("arc", box, fill, solid, start=start, end=end, width=self.px(width))

    def erase_ellipse(self, box: Sequence[float]) -> None:
        self._dm.ellipse(self._xy(box), fill=0)

    def text(self, cx: float, cy: float, text: str, size: float, fill: RGB) -> None:
        """Detail text centred at fractional (cx, cy), font height ``size`` of the width."""
        font = ImageFont.load_default(size=max(6, int(size * self.w)))
        self._dc.text((cx * self.w, cy * self.h), text, fill=fill, font=font, anchor="mm")


def _shade(c: RGB, f: float) -> RGB:
    """``c`` darkened (f < 1) or lightened towards white (f > 1)."""
    if f <= 1:
        return tuple(int(round(v * f)) for v in c)  # type: ignore[return-value]
    t = min(f - 1, 1.0)
    return tuple(int(round(v + (255 - v) * t)) for v in c)  # type: ignore[return-value]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]
