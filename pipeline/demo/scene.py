"""One demo image: its objects chosen and drawn over a background, later objects covering
earlier ones, each instance keeping the mask of its visible pixels."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.demo.backgrounds import _SCENE_WEIGHTS, _background
from pipeline.demo.config import DemoDataConfig
from pipeline.demo.kinds import KINDS, Kind, Variant
from pipeline.demo.placement import _find_place, _render_crowd, _render_sprite
from pipeline.demo.sprite import _pick, _u

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
RLE_FRACTION = 0.12  # share of plain instances stored as compressed RLE instead of polygons


@dataclass
class _Group:
    """Instances of one kind in one image (a crowd is one instance)."""

    kind: Kind
    variant: Variant
    crowd: bool
    masks: list[np.ndarray] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    size_adj: str | None = None

    @property
    def count(self) -> int:
        return len(self.masks)

    @property
    def plural(self) -> bool:
        return self.crowd or self.count > 1

    def centroid(self) -> tuple[float, float]:
        ys, xs = np.nonzero(np.logical_or.reduce(self.masks))
        return float(xs.mean()), float(ys.mean())



@dataclass
class _DemoImage:
    image_id: int
    width: int
    height: int
    scene: str
    jpeg: bytes
    groups: list[_Group]
    formats: list[bool]  # per instance in drawing order: stored as RLE though not a crowd
    instances: list[tuple[_Group, np.ndarray, int]]  # (group, visible mask, drawn area)


def _choose_groups(rng: np.random.Generator) -> list[tuple[Kind, Variant, bool, int]]:
    """``(kind, variant, crowd, instances)`` for 2-4 distinct kinds."""
    n_kinds = int(rng.choice([2, 3, 4], p=[0.45, 0.4, 0.15]))
    names = sorted(KINDS)
    chosen = [names[i] for i in rng.choice(len(names), n_kinds, replace=False)]
    out, crowd_used, total = [], False, 0
    for name in chosen:
        kind = KINDS[name]
        variant = _pick(rng, kind.variants)
        if kind.crowd and not crowd_used and rng.random() < 0.25:
            out.append((kind, variant, True, 1))
            crowd_used = True
            total += 2
            continue
        n = int(rng.choice([1, 2, 3], p=[0.68, 0.22, 0.1]))
        n = max(1, min(n, 7 - total - (n_kinds - len(out) - 1)))
        out.append((kind, variant, False, n))
        total += n
    return out


def _draw_image(image_id: int, cfg: DemoDataConfig) -> _DemoImage:
    rng = np.random.default_rng([cfg.seed, image_id])
    W = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    H = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    scenes = list(_SCENE_WEIGHTS)
    scene = str(scenes[int(rng.choice(len(scenes), p=list(_SCENE_WEIGHTS.values())))])
    img = _background(scene, H, W, rng)
    spec = _choose_groups(rng)
    units = sum(2 if crowd else n for _, _, crowd, n in spec)
    lo, hi = (0.36, 0.5) if units <= 2 else (0.27, 0.4) if units <= 4 else (0.2, 0.3)
    groups = [_Group(kind, variant, crowd) for kind, variant, crowd, _ in spec]
    # the first instance of every kind is drawn before any second one, so every kind fits
    queue = [(gi, k) for gi, (_, _, _, n) in enumerate(spec) for k in range(n)]
    queue.sort(key=lambda t: t[1])
    firsts = [t for t in queue if t[1] == 0]
    extras = [t for t in queue if t[1] > 0]
    order = [firsts[i] for i in rng.permutation(len(firsts))] + \
            [extras[i] for i in rng.permutation(len(extras))]

    visible: list[np.ndarray] = []
    drawn: list[int] = []
    owners: list[_Group] = []
    shadows = scene in ("table", "room", "outdoor")
    base = min(W, H)
    for gi, _ in order:
        g = groups[gi]
        size = base * _u(rng, lo, hi) * g.kind.scale
        place = None
        for _attempt in range(4):
            if g.crowd:
                rgb, mask = _render_crowd(g.kind, g.variant, size, rng)
            else:
                rgb, mask = _render_sprite(g.kind, g.variant, size, rng)
            place = _find_place(mask, (H, W), visible, drawn, rng)
            if place is not None:
                break
            size *= 0.8
        if place is None:
            log.debug("image %d: no room for a %s", image_id, g.kind.category)
            continue
        y0, x0 = place
        h, w = mask.shape
        full = np.zeros((H, W), bool)
        full[y0:y0 + h, x0:x0 + w] = mask
        if shadows:
            dy, dx = max(1, h // 25), max(1, w // 20)
            shadow = np.zeros((H, W), bool)
            shadow[y0 + dy:y0 + h + dy, x0 + dx:x0 + w + dx] = mask[:H - y0 - dy, :W - x0 - dx]
            img[shadow & ~full] *= 0.72
        img[y0:y0 + h, x0:x0 + w][mask] = rgb[mask]
        for vis in visible:
            vis &= ~full
        visible.append(full)
        drawn.append(int(mask.sum()))
        owners.append(g)

    instances = list(zip(owners, visible, drawn))
    for g, vis, _ in instances:
        g.masks.append(vis)
    groups = [g for g in groups if g.masks]
    if not groups:
        raise RuntimeError(f"image {image_id}: no object could be placed")
    singles = [g for g in groups if not g.crowd]
    areas = {id(g): float(np.mean([m.sum() for m in g.masks])) for g in singles}
    if len(singles) >= 2:
        for g in singles:
            others = [areas[id(o)] for o in singles if o is not g]
            ratio = areas[id(g)] / float(np.median(others))
            if ratio >= 2.0:
                g.size_adj = _pick(rng, ("large", "big"))
            elif ratio <= 0.5:
                g.size_adj = _pick(rng, ("small", "little"))
    formats = [bool(rng.random() < RLE_FRACTION) for _ in instances]
    pixels = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return _DemoImage(image_id, W, H, scene, buf.getvalue(), groups, formats, instances)
