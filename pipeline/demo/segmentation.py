"""Exact masks to COCO segmentations: pixel-corner polygons, compressed and uncompressed RLE."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def mask_to_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Outlines of ``mask`` (bool (H, W)) along pixel corners, as COCO polygons.

    Returns ``[[x0, y0, x1, y1, ...], ...]`` (one polygon per connected part, collinear
    corners dropped), or None when the mask has a hole, which a COCO polygon cannot show.
    Pixels touching only diagonally become separate polygons.
    """
    m = np.pad(mask.astype(bool), 1)
    inside = m[1:-1, 1:-1]
    # directed edges along pixel sides, the inside on the right (clockwise on screen)
    out_edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for neighbour, (ox, oy), (dx, dy) in (
        (m[:-2, 1:-1], (0, 0), (1, 0)),  # top sides
        (m[1:-1, 2:], (1, 0), (0, 1)),  # right sides
        (m[2:, 1:-1], (1, 1), (-1, 0)),  # bottom sides
        (m[1:-1, :-2], (0, 1), (0, -1)),  # left sides
    ):
        ys, xs = np.nonzero(inside & ~neighbour)
        for x, y in zip((xs + ox).tolist(), (ys + oy).tolist()):
            out_edges.setdefault((x, y), []).append((dx, dy))
    used: set[tuple[int, int, int, int]] = set()
    polygons: list[list[float]] = []
    for (x0, y0) in sorted(out_edges):
        for d0 in out_edges[(x0, y0)]:
            first = (x0, y0, *d0)
            if first in used:
                continue
            loop: list[tuple[int, int, int, int]] = []
            edge = first
            while True:
                used.add(edge)
                loop.append(edge)
                x, y, dx, dy = edge
                x, y = x + dx, y + dy
                options = out_edges[(x, y)]
                # two parts touching at a corner: turn right, so each part gets its own loop
                nd = options[0] if len(options) == 1 else (-dy, dx)
                edge = (x, y, *nd)
                if edge == first:
                    break
                if edge in used or nd not in options:
                    raise RuntimeError("mask outline tracing went astray")
            pts = [(x, y) for i, (x, y, dx, dy) in enumerate(loop)
                   if (dx, dy) != loop[i - 1][2:]]
            area2 = sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in zip(pts, pts[1:] + pts[:1]))
            if area2 < 0:
                return None  # a hole
            polygons.append([float(v) for p in pts for v in p])
    return polygons


def _compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with 0s."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _decode(segmentation: Any, h: int, w: int) -> np.ndarray:
    """A COCO segmentation (polygons or either RLE) to a bool mask, as pycocotools reads it."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def segmentation_for(mask: np.ndarray, crowd: bool, prefer_rle: bool) -> dict[str, Any] | list:
    """The COCO segmentation of an exact mask: uncompressed RLE for crowds, otherwise
    polygons where they reproduce the mask exactly, else compressed RLE."""
    if crowd:
        return _uncompressed_rle(mask)
    if not prefer_rle:
        polys = mask_to_polygons(mask)
        if polys and np.array_equal(_decode(polys, *mask.shape), mask):
            return polys
    return _compressed_rle(mask)
