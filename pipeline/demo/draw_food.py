"""Procedural drawings of the food kinds: banana, apple, orange, pizza, donut."""

from __future__ import annotations

import math

import numpy as np

from pipeline.demo.sprite import RGB, _pick, _shade, _Sprite, _u


def _draw_banana(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    top: list[float] = []
    bottom: list[float] = []
    for k in range(25):
        u = -1 + 2 * k / 24
        x = 0.5 + 0.47 * u
        yb = 0.96 - 0.6 * u * u
        yt = yb - (0.06 + 0.42 * (1 - u * u) ** 0.8)
        top += [x, yt]
        bottom = [x, yb] + bottom
    s.polygon(top + bottom, c["main"])
    ridge: list[float] = []
    for k in range(25):
        u = -1 + 2 * k / 24
        yb = 0.96 - 0.6 * u * u
        ridge += [0.5 + 0.47 * u, yb - 0.6 * (0.06 + 0.42 * (1 - u * u) ** 0.8)]
    s.line(ridge, 0.05, _shade(c["main"], 1.25), solid=False)
    s.circle(0.04, 0.33, 0.06, (70, 50, 25), solid=False)
    s.polygon((0.93, 0.34, 0.99, 0.18, 1.0, 0.22, 0.97, 0.38), (90, 80, 30))
    if "spot" in c:
        for _ in range(int(rng.integers(6, 12))):
            u = _u(rng, -0.8, 0.8)
            yb = 0.96 - 0.6 * u * u
            s.circle(0.5 + 0.47 * u, yb - _u(rng, 0.05, 0.3) * (1 - u * u), 0.025, c["spot"],
                     solid=False)


def _draw_apple(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    main = c["main"]
    s.line((0.5, 0.24, 0.55, 0.02), 0.05, (95, 60, 30))
    if rng.random() < 0.7:
        s.polygon((0.54, 0.07, 0.66, 0.0, 0.86, 0.0, 0.72, 0.07), (60, 150, 50))
    s.ellipse((0.04, 0.14, 0.62, 0.98), main)
    s.ellipse((0.38, 0.14, 0.96, 0.98), main)
    s.ellipse((0.15, 0.3, 0.85, 1.0), main)
    for x in (0.3, 0.5, 0.7):
        s.arc((x - 0.2, 0.25, x + 0.2, 0.95), 100, 260, 0.02, _shade(main, 0.8), solid=False)
    s.ellipse((0.2, 0.3, 0.34, 0.48), _shade(main, 1.45), solid=False)


def _draw_orange(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    main = c["main"]
    s.ellipse((0.02, 0.04, 0.98, 0.98), main)
    for _ in range(70):
        a, r = _u(rng, 0, 6.283), math.sqrt(_u(rng, 0, 1)) * 0.44
        s.circle(0.5 + r * math.cos(a), 0.51 + r * math.sin(a), 0.012, _shade(main, 0.82),
                 solid=False)
    s.ellipse((0.22, 0.22, 0.42, 0.38), _shade(main, 1.35), solid=False)
    s.circle(0.52, 0.11, 0.03, (110, 90, 30), solid=False)
    if rng.random() < 0.4:
        s.polygon((0.52, 0.08, 0.68, 0.0, 0.82, 0.02, 0.66, 0.1), (60, 140, 50))



def _draw_pizza(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    full = (0.02, 0.02, 0.98, 0.98)
    start = _u(rng, 0, 360)
    gap = 0.0 if rng.random() < 0.5 else 60.0
    s.pieslice(full, start, start + 360 - gap - 0.01, (195, 135, 60))
    s.ellipse((0.1, 0.1, 0.9, 0.9), (205, 60, 35), solid=False)
    s.ellipse((0.13, 0.13, 0.87, 0.87), (240, 200, 95), solid=False)
    for _ in range(int(rng.integers(5, 10))):
        a, r = _u(rng, 0, 6.283), _u(rng, 0.05, 0.3)
        x, y = 0.5 + r * math.cos(a), 0.5 + r * math.sin(a)
        s.circle(x, y, 0.065, (165, 35, 30), solid=False)
        s.circle(x + 0.02, y - 0.01, 0.012, (110, 20, 20), solid=False)
    for _ in range(int(rng.integers(4, 9))):
        a, r = _u(rng, 0, 6.283), _u(rng, 0.05, 0.33)
        s.circle(0.5 + r * math.cos(a), 0.5 + r * math.sin(a), 0.025, (50, 130, 45),
                 solid=False)


def _draw_donut(s: _Sprite, rng: np.random.Generator, c: dict[str, RGB]) -> None:
    s.ellipse((0.02, 0.02, 0.98, 0.98), c["dough"])
    s.erase_ellipse((0.36, 0.36, 0.64, 0.64))
    if "icing" in c:
        pts: list[float] = []
        phase = _u(rng, 0, 6.28)
        for k in range(48):
            a = 2 * math.pi * k / 48
            r = 0.41 + 0.04 * math.sin(7 * a + phase)
            pts += [0.5 + r * math.cos(a), 0.5 + r * math.sin(a)]
        s.polygon(pts, c["icing"], solid=False)
        s.ellipse((0.31, 0.31, 0.69, 0.69), _shade(c["dough"], 0.85), solid=False)
        cols = [(250, 250, 250), (240, 60, 60), (60, 120, 230), (250, 210, 40), (60, 190, 90)]
        for _ in range(int(rng.integers(15, 30))):
            a, r = _u(rng, 0, 6.283), _u(rng, 0.22, 0.4)
            x, y = 0.5 + r * math.cos(a), 0.5 + r * math.sin(a)
            b = _u(rng, 0, 6.283)
            s.line((x, y, x + 0.04 * math.cos(b), y + 0.04 * math.sin(b)), 0.02, _pick(rng, cols),
                   solid=False)
    s.ellipse((0.2, 0.14, 0.4, 0.26), _shade(c.get("icing", c["dough"]), 1.35), solid=False)
