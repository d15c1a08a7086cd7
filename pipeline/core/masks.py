"""Binary masks: compressed COCO RLE, the masks table schema, PNG export, COCO decoding.

A mask is an ``(H, W)`` bool array. In the masks table it is stored as the ``counts`` bytes
of pycocotools' compressed RLE (column-major runs, LEB128-like ASCII), with ``height`` and
``width`` in their own columns; PNGs are written for inspection only.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils


def _check_mask(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool (or 0/1 integers) -> ``(H, W)`` uint8, Fortran order."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask has an empty side: shape {mask.shape}")
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer):
            raise TypeError(f"expected a bool mask, got dtype {mask.dtype}")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("an integer mask must hold only 0 and 1")
    return np.asfortranarray(mask, dtype=np.uint8)


def run_lengths(counts: bytes) -> np.ndarray:
    """Compressed RLE ``counts`` -> ``(R,)`` int64 run lengths (background first), no pixels.

    Mirrors pycocotools' ``rleFrString``: each run is up to 7 groups of 5 bits offset by
    48, with a 0x20 bit for "more groups" and sign extension from 0x10; from the fourth
    run on, a run is stored as the difference to the run two before it.
    """
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("invalid byte in compressed RLE counts")
    last = (c & 0x20) == 0
    if not last[-1]:
        raise ValueError("compressed RLE counts end in the middle of a run")
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 7:
        raise ValueError("compressed RLE counts hold a run longer than 7 groups")
    shift = 5 * (np.arange(c.size) - np.repeat(starts, lengths))
    deltas = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    deltas[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = deltas.copy()
    if runs.size > 3:
        runs[3::2] = runs[1] + np.cumsum(deltas[3::2])
    if runs.size > 4:
        runs[4::2] = runs[2] + np.cumsum(deltas[4::2])
    if runs.min() < 0:
        raise ValueError("negative run length in compressed RLE counts")
    return runs


def _checked_runs(counts: bytes | str, height: int, width: int) -> tuple[bytes, np.ndarray]:
    """``(counts as bytes, (R,) run lengths)``, after checking the runs cover ``height * width``.

    pycocotools leaves pixels uninitialised when the runs are too short, so the check is
    what makes a wrong ``height``/``width`` an error instead of garbage.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected compressed RLE counts as bytes, got {type(counts).__name__}")
    counts = bytes(counts)
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height} x {width}")
    runs = run_lengths(counts)
    total = int(runs.sum())
    if total != height * width:
        raise ValueError(
            f"RLE runs cover {total} pixels but the mask is {height} x {width} = {height * width}"
        )
    return counts, runs


def _rle(counts: bytes | str, height: int, width: int) -> dict[str, Any]:
    """A checked pycocotools RLE dict."""
    counts, _ = _checked_runs(counts, height, width)
    return {"size": [int(height), int(width)], "counts": counts}


def encode_rle(mask: np.ndarray) -> bytes:
    """``(H, W)`` bool -> compressed COCO RLE ``counts`` bytes."""
    return mask_utils.encode(_check_mask(mask))["counts"]


def decode_rle(counts: bytes | str, height: int, width: int) -> np.ndarray:
    """Compressed RLE ``counts`` -> ``(height, width)`` bool, C order.

    The runs parsed for the size check are expanded with ``np.repeat`` (column-major, as
    COCO stores them): the same pixels as ``pycocotools.mask.decode``, with the counts
    parsed once instead of twice.
    """
    _, runs = _checked_runs(counts, height, width)
    values = (np.arange(runs.size) & 1).astype(bool)
    column_major = np.repeat(values, runs)
    return np.ascontiguousarray(column_major.reshape(int(width), int(height)).T)


def rle_area(counts: bytes | str, height: int, width: int) -> int:
    """Number of foreground pixels of a compressed RLE, without decoding it."""
    return int(mask_utils.area(_rle(counts, height, width)))


def mask_to_png_bytes(mask: np.ndarray) -> bytes:
    """``(H, W)`` bool -> a 1-bit PNG (white = inside)."""
    image = Image.fromarray(_check_mask(mask).astype(bool, order="C"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def mask_from_png_bytes(data: bytes) -> np.ndarray:
    """A PNG written by :func:`mask_to_png_bytes` (or any 1-bit / L PNG) -> ``(H, W)`` bool."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("1", "L"):
            raise ValueError(f"expected a 1-bit or L mask PNG, got mode {image.mode}")
        return np.asarray(image) > 0


def coco_segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` field -> ``(height, width)`` bool.

    Handles polygons (a list of ``[x0, y0, x1, y1, ...]``, united), uncompressed RLE
    (``{"size": [h, w], "counts": [int, ...]}``, used for crowds) and compressed RLE
    (``counts`` a str or bytes), like ``COCO.annToMask``.
    """
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("empty polygon list")
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise ValueError(f"RLE needs 'size' and 'counts', got keys {sorted(segmentation)}")
        size = [int(s) for s in segmentation["size"]]
        if size != [int(height), int(width)]:
            raise ValueError(f"RLE size {size} does not match the image's {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise ValueError(
                    f"uncompressed RLE covers {sum(counts)} pixels, not {height} x {width}"
                )
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            return decode_rle(counts, height, width)
    else:
        raise TypeError(f"unknown COCO segmentation type {type(segmentation).__name__}")
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=bool)


def resize_mask(mask: torch.Tensor, r: int) -> torch.Tensor:
    """``(..., H, W)`` float mask -> ``(..., r, r)`` float in {0, 1}.

    Bilinear interpolation (``align_corners=False``, no antialiasing), then ``> 0``: what the
    official code got from torchvision 0.14's ``transforms.Resize((r, r))`` on a tensor.
    """
    if mask.ndim < 2:
        raise ValueError(f"expected a (..., H, W) mask, got shape {tuple(mask.shape)}")
    if not mask.is_floating_point():
        raise TypeError(f"expected a float mask, got dtype {mask.dtype}")
    if r < 1:
        raise ValueError(f"resolution must be positive, got {r}")
    lead, (h, w) = mask.shape[:-2], mask.shape[-2:]
    n = math.prod(lead)
    if n == 0:
        return mask.new_zeros(*lead, r, r)
    resized = F.interpolate(
        mask.reshape(n, 1, h, w), size=(r, r), mode="bilinear", align_corners=False, antialias=False
    )
    return (resized > 0).to(mask.dtype).reshape(*lead, r, r)
