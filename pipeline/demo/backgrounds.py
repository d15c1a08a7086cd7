"""Seeded backgrounds (sky and grass, wooden table, room, colour noise, gradient) and the
phrases captions use for each."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.demo.sprite import _pick, _u

SCENES: dict[str, tuple[str, ...]] = {
    "table": ("on a wooden table", "on a table", "on a brown wooden table", "on top of a table"),
    "outdoor": ("on the grass", "in a grassy field", "under a blue sky", "outside on a sunny day",
                "in a park"),
    "room": ("in a room", "in front of a plain wall", "in a bright room", "against a bright wall"),
    "noise": ("on a colorful background", "against a blurry backdrop",
              "on a mottled background"),
    "gradient": ("on a plain background", "against a smooth gradient", "on a simple backdrop"),
}
_SCENE_WEIGHTS = {"table": 0.3, "outdoor": 0.25, "room": 0.15, "noise": 0.15, "gradient": 0.15}


def _lowfreq(rng: np.random.Generator, H: int, W: int, cells: int, channels: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a small random grid upsampled bicubically, (H, W, channels)."""
    small = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    img = Image.fromarray(small[..., 0] if channels == 1 else small)
    big = np.asarray(img.resize((W, H), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return big.reshape(H, W, channels)


def _vgradient(H: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    t = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    return top[None, None, :] * (1 - t) + bottom[None, None, :] * t


def _background(scene: str, H: int, W: int, rng: np.random.Generator) -> np.ndarray:
    """A background of kind ``scene``: float32 (H, W, 3) in [0, 255]."""
    def jit(colour: Sequence[float]) -> np.ndarray:
        return np.asarray(colour, np.float32) + rng.integers(-15, 16, 3)

    if scene == "outdoor":
        horizon = int(H * _u(rng, 0.5, 0.72))
        img = np.empty((H, W, 3), np.float32)
        img[:horizon] = _vgradient(horizon, jit((70, 130, 215)), jit((190, 220, 245)))[:, :1]
        clouds = Image.new("L", (W, H), 0)
        dc = ImageDraw.Draw(clouds)
        for _ in range(int(rng.integers(0, 4))):
            cx, cy = _u(rng, 0, W), _u(rng, 0, horizon * 0.7)
            for _ in range(4):
                rx, ry = _u(rng, 0.05, 0.12) * W, _u(rng, 0.03, 0.06) * H
                ox, oy = rng.normal(0, rx), rng.normal(0, ry / 2)
                dc.ellipse((cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry), fill=200)
        cl = np.asarray(clouds.filter(ImageFilter.GaussianBlur(4)), np.float32)[..., None] / 255
        grass = _vgradient(H - horizon, jit((110, 175, 70)), jit((50, 110, 35)))
        blades = _lowfreq(rng, H - horizon, W, 24, 1) * 40 - 20
        img[horizon:] = grass + blades
        img = img * (1 - cl) + 250 * cl
    elif scene == "table":
        edge = int(H * _u(rng, 0.15, 0.4))
        img = np.empty((H, W, 3), np.float32)
        img[:edge] = _vgradient(edge, jit((225, 215, 195)), jit((200, 190, 170)))
        wood = jit((150, 100, 60))
        y = np.arange(H - edge, dtype=np.float32)[:, None]
        warp = _lowfreq(rng, H - edge, W, 6, 1)[..., 0] * 25
        grain = np.sin((y + warp) * 2 * math.pi / _u(rng, 6, 12))
        planks = ((y + warp * 0.2) % _u(rng, 40, 70) < 2).astype(np.float32)
        shade = 1 + 0.08 * grain - 0.3 * planks
        img[edge:] = wood[None, None, :] * shade[..., None]
        img[edge:edge + 3] *= 0.6
    elif scene == "room":
        floor = int(H * _u(rng, 0.62, 0.85))
        wall = jit(_pick(rng, ((225, 215, 170), (190, 215, 225), (225, 200, 205), (205, 225, 195))))
        img = np.empty((H, W, 3), np.float32)
        img[:floor] = _vgradient(floor, wall * 1.05, wall * 0.9)
        img[floor:] = _vgradient(H - floor, jit((150, 140, 130)), jit((110, 100, 95)))
        img[:floor] += (_lowfreq(rng, floor, W, 8, 1) - 0.5) * 20
    elif scene == "noise":
        img = _lowfreq(rng, H, W, int(rng.integers(3, 7)), 3) * 200 + 30
    elif scene == "gradient":
        a = _u(rng, 0, 2 * math.pi)
        yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, H), np.linspace(-0.5, 0.5, W), indexing="ij")
        t = np.clip(xx * math.cos(a) + yy * math.sin(a) + 0.5, 0, 1)[..., None].astype(np.float32)
        c0, c1 = rng.integers(60, 246, 3), rng.integers(60, 246, 3)
        img = c0[None, None, :] * (1 - t) + c1[None, None, :] * t
    else:
        raise ValueError(f"unknown scene {scene!r}")
    img = img + rng.normal(0, 4, (H, W, 3)).astype(np.float32)
    return img.astype(np.float32)
