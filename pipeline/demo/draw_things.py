"""Procedural drawings of the kinds that are not food: street objects, sports things,
tableware, the clock and the teddy bear."""

from __future__ import annotations

import math

import numpy as np

from pipeline.demo.sprite import RGB, _shade, _Sprite, _u


def _draw_traffic_light(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    s.rect((0.42, 0.72, 0.58, 1.0), c["pole"])
    s.rounded((0.04, 0.0, 0.96, 0.76), 0.2, c["body"])
    s.rounded((0.12, 0.03, 0.88, 0.73), 0.15, _shade(c["body"], 0.8), solid=False)
    lit = int(rng.integers(3))
    for i, lamp in enumerate(((225, 35, 30), (245, 175, 25), (35, 205, 80))):
        cy = 0.14 + 0.24 * i
        s.circle(0.5, cy, 0.34, _shade(c["body"], 0.55), solid=False)
        s.circle(0.5, cy, 0.28, lamp if i == lit else _shade(lamp, 0.45), solid=False)
        if i == lit:
            s.circle(0.43, cy - 0.03, 0.08, _shade(lamp, 1.6), solid=False)


def _octagon(cx: float, cy: float, r: float, w: int, h: int) -> list[float]:
    m = min(w, h)
    pts: list[float] = []
    for k in range(8):
        a = math.radians(22.5 + 45 * k)
        pts += [cx + r * m * math.cos(a) / w, cy + r * m * math.sin(a) / h]
    return pts


def _draw_stop_sign(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    d = s.w / s.h  # the octagon spans the sprite's width
    s.rect((0.45, d * 0.8, 0.55, 1.0), c["pole"])
    r = 0.5 / math.cos(math.radians(22.5)) * 0.98
    s.polygon(_octagon(0.5, d / 2, r, s.w, s.h), (245, 245, 245))
    s.polygon(_octagon(0.5, d / 2, r * 0.88, s.w, s.h), c["red"], solid=False)
    s.text(0.5, d / 2, "STOP", 0.27, (250, 250, 250))


def _draw_fire_hydrant(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    main, dark = c["main"], _shade(c["main"], 0.7)
    s.rect((0.42, 0.02, 0.58, 0.14), dark)
    s.ellipse((0.2, 0.1, 0.8, 0.42), main)
    s.rounded((0.22, 0.27, 0.78, 0.9), 0.06, main)
    s.rect((0.16, 0.26, 0.84, 0.32), dark)
    s.rect((0.03, 0.46, 0.24, 0.6), main)
    s.rect((0.76, 0.46, 0.97, 0.6), main)
    s.rect((0.0, 0.44, 0.07, 0.62), c["cap"])
    s.rect((0.93, 0.44, 1.0, 0.62), c["cap"])
    s.circle(0.5, 0.55, 0.12, c["cap"], solid=False)
    s.rect((0.1, 0.88, 0.9, 1.0), dark)
    s.line((0.33, 0.34, 0.33, 0.86), 0.05, _shade(main, 1.35), solid=False)


def _draw_umbrella(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    top, bottom = 0.04, 0.5
    box = (0.0, top, 1.0, top + 2 * (bottom - top))
    s.pieslice(box, 180, 360, c["a"])
    n = int(rng.integers(6, 9))
    for k in range(n):
        if k % 2:
            s.pieslice(box, 180 + 180 * k / n, 180 + 180 * (k + 1) / n, c["b"], solid=False)
    for k in range(n):
        cx = (k + 0.5) / n
        s.erase_ellipse((cx - 0.45 / n, bottom - 0.04, cx + 0.45 / n, bottom + 0.04))
    s.rect((0.48, 0.0, 0.52, top + 0.02), (60, 60, 60))
    s.line((0.5, top + 0.05, 0.5, 0.9), 0.035, (70, 60, 50))
    s.arc((0.36, 0.82, 0.52, 0.98), 0, 180, 0.035, (70, 60, 50))


def _draw_ball(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    s.ellipse((0.02, 0.02, 0.98, 0.98), c["a"])
    if "pent" in c:  # football
        for cx, cy, r in ((0.5, 0.5, 0.13), (0.5, 0.12, 0.1), (0.14, 0.38, 0.1),
                          (0.86, 0.38, 0.1), (0.27, 0.84, 0.1), (0.73, 0.84, 0.1)):
            pts: list[float] = []
            for k in range(5):
                a = math.radians(-90 + 72 * k)
                pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
            s.polygon(pts, c["pent"], solid=False)
    elif "stripe" in c:  # beach ball
        cols = [c["a"], c["stripe"], (40, 90, 210), (250, 250, 250), (30, 170, 80), (240, 200, 30)]
        off = _u(rng, 0, 60)
        for k in range(6):
            s.pieslice((0.02, 0.02, 0.98, 0.98), off + 60 * k, off + 60 * (k + 1), cols[k],
                       solid=False)
        s.circle(0.5, 0.5, 0.08, (250, 250, 250), solid=False)
    else:
        s.arc((-0.45, 0.05, 0.35, 0.95), -60, 60, 0.04, c["seam"], solid=False)
        s.arc((0.65, 0.05, 1.45, 0.95), 120, 240, 0.04, c["seam"], solid=False)
    s.circle(0.36, 0.32, 0.08, _shade(c["a"], 1.5), solid=False)


def _draw_kite(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    cx, cy, bottom = 0.5, 0.24, 0.62
    s.polygon((0.5, 0.0, 0.98, cy, 0.5, bottom, 0.02, cy), c["a"])
    s.polygon((0.5, 0.0, 0.98, cy, cx, cy), c["b"], solid=False)
    s.polygon((0.5, bottom, 0.02, cy, cx, cy), c["b"], solid=False)
    s.line((0.5, 0.0, 0.5, bottom), 0.025, (60, 45, 30), solid=False)
    s.line((0.02, cy, 0.98, cy), 0.025, (60, 45, 30), solid=False)
    phase, amp = _u(rng, 0, 6.28), _u(rng, 0.04, 0.09)
    pts: list[float] = []
    for k in range(13):
        t = k / 12
        pts += [0.5 + amp * math.sin(phase + 2 * math.pi * t), bottom + t * (0.99 - bottom)]
    s.line(pts, 0.03, (70, 70, 70))
    for k in (3, 7, 11):
        x, y = pts[2 * k], pts[2 * k + 1]
        s.polygon((x, y, x - 0.09, y - 0.025, x - 0.09, y + 0.025), c["b"])
        s.polygon((x, y, x + 0.09, y - 0.025, x + 0.09, y + 0.025), c["b"])


def _draw_wine_glass(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    glass = c["glass"]
    pts: list[float] = []
    for k in range(25):
        a = math.pi * k / 24
        pts += [0.5 + 0.42 * math.cos(a), 0.02 + 0.48 * math.sin(a)]
    s.polygon(pts, glass)
    if "wine" in c:
        level = _u(rng, 0.2, 0.3)
        s.rect((0.0, level, 1.0, 0.6), c["wine"], solid=False)
        s.line((0.15, level, 0.85, level), 0.03, _shade(c["wine"], 1.3), solid=False)
    s.line((0.2, 0.1, 0.24, 0.36), 0.06, _shade(glass, 1.6), solid=False)
    s.line((0.08, 0.025, 0.92, 0.025), 0.04, _shade(glass, 0.8), solid=False)
    s.rect((0.45, 0.48, 0.55, 0.92), glass)
    s.ellipse((0.1, 0.88, 0.9, 1.0), glass)
    s.ellipse((0.2, 0.9, 0.8, 0.96), _shade(glass, 1.3), solid=False)


def _draw_cup(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    main = c["main"]
    s.ellipse((0.52, 0.2, 0.97, 0.74), main)
    s.erase_ellipse((0.63, 0.33, 0.86, 0.61))
    s.polygon((0.05, 0.06, 0.73, 0.06, 0.64, 0.98, 0.14, 0.98), main)
    s.ellipse((0.05, 0.0, 0.73, 0.12), _shade(main, 1.2))
    s.ellipse((0.09, 0.02, 0.69, 0.10), c["drink"], solid=False)
    y = _u(rng, 0.45, 0.6)
    s.polygon((0.0, y, 1.0, y, 1.0, y + 0.1, 0.0, y + 0.1), c["band"], solid=False)
    s.line((0.18, 0.2, 0.22, 0.85), 0.05, _shade(main, 1.3), solid=False)



def _draw_clock(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    s.ellipse((0.01, 0.01, 0.99, 0.99), c["rim"])
    s.ellipse((0.09, 0.09, 0.91, 0.91), c["face"], solid=False)
    ink = (35, 35, 40)
    for k in range(12):
        a = math.radians(30 * k)
        r0 = 0.33 if k % 3 else 0.3
        s.line((0.5 + r0 * math.cos(a), 0.5 + r0 * math.sin(a),
                0.5 + 0.38 * math.cos(a), 0.5 + 0.38 * math.sin(a)),
               0.035 if k % 3 == 0 else 0.018, ink, solid=False)
    hour, minute = _u(rng, 0, 12), _u(rng, 0, 60)
    for value, period, length, width in ((hour, 12, 0.2, 0.05), (minute, 60, 0.32, 0.032)):
        a = math.radians(value / period * 360 - 90)
        s.line((0.5, 0.5, 0.5 + length * math.cos(a), 0.5 + length * math.sin(a)), width, ink,
               solid=False)
    a = math.radians(_u(rng, 0, 360))
    s.line((0.5, 0.5, 0.5 + 0.34 * math.cos(a), 0.5 + 0.34 * math.sin(a)), 0.012,
           (200, 30, 30), solid=False)
    s.circle(0.5, 0.5, 0.035, ink, solid=False)


def _draw_teddy_bear(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    fur, light = c["fur"], _shade(c["fur"], 1.45)
    for x in (0.3, 0.7):
        s.circle(x, 0.09, 0.11, fur)
        s.circle(x, 0.09, 0.055, light, solid=False)
    s.ellipse((0.02, 0.42, 0.32, 0.66), fur)
    s.ellipse((0.68, 0.42, 0.98, 0.66), fur)
    s.ellipse((0.14, 0.78, 0.46, 1.0), fur)
    s.ellipse((0.54, 0.78, 0.86, 1.0), fur)
    s.ellipse((0.18, 0.38, 0.82, 0.92), fur)
    s.ellipse((0.2, 0.04, 0.8, 0.46), fur)
    s.ellipse((0.32, 0.52, 0.68, 0.84), light, solid=False)
    s.ellipse((0.2, 0.86, 0.4, 0.98), light, solid=False)
    s.ellipse((0.6, 0.86, 0.8, 0.98), light, solid=False)
    s.ellipse((0.37, 0.24, 0.63, 0.38), light, solid=False)
    s.ellipse((0.45, 0.25, 0.55, 0.3), (30, 20, 15), solid=False)
    s.circle(0.37, 0.19, 0.035, (20, 15, 10), solid=False)
    s.circle(0.63, 0.19, 0.035, (20, 15, 10), solid=False)
    if rng.random() < 0.5:
        s.polygon((0.5, 0.44, 0.36, 0.38, 0.36, 0.5), c["bow"], solid=False)
        s.polygon((0.5, 0.44, 0.64, 0.38, 0.64, 0.5), c["bow"], solid=False)
