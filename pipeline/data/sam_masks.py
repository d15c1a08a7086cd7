"""Box prompts -> masks with SAM: one image-encoder forward per image (the ``segment`` stage's inference).

``segment_image`` embeds an image once and decodes all of its boxes in one batched
mask-decoder call (one mask per box, ``multimask_output=False``); a noun's mask is the union
of its boxes' masks (``union_masks``). SAM-HQ works the same way through its own predictor
(``make_predictor``): the HQ encoder's early features are kept with the embedding at
``set_image``, and the mask is the package's default SAM + HQ token sum (``hq_token_only=False``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam


def make_predictor(sam: Sam, model_type: str):
    """The predictor of ``model_type``'s package: ``segment_anything_hq``'s for ``hq_*`` types."""
    if model_type.startswith("hq_"):
        from pipeline.models.sam_hq import import_segment_anything_hq

        HQPredictor = import_segment_anything_hq().SamPredictor  # noqa: N806

        return HQPredictor(sam)
    return SamPredictor(sam)


@dataclass
class CallCounter:
    """How many times a module's forward ran inside :func:`count_encoder_calls`."""

    calls: int = 0


@contextlib.contextmanager
def count_encoder_calls(sam: Sam) -> Iterator[CallCounter]:
    """Count forwards of ``sam.image_encoder`` inside the block (a forward hook, removed after)."""
    counter = CallCounter()

    def hook(module, inputs, output) -> None:  # noqa: ANN001 - torch hook signature
        counter.calls += 1

    handle = sam.image_encoder.register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


def _check_inputs(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(image, boxes)`` as C-contiguous ``(H, W, 3)`` uint8, ``(B, 4)`` float32."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has an empty side: {image.shape}")
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected (B, 4) xyxy boxes, got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes hold NaN or inf")
    bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if bad.size:
        raise ValueError(f"boxes {bad.tolist()} have x1 < x0 or y1 < y0: {boxes[bad].tolist()}")
    return np.ascontiguousarray(image), boxes


def segment_image(predictor: SamPredictor, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """One image and its box prompts -> one mask per box.

    image: ``(H, W, 3)`` uint8 RGB. boxes: ``(B, 4)`` xyxy in pixels of ``image``.
    Returns ``(B, H, W)`` bool. The image encoder runs once (``set_image``); all B boxes go
    through the prompt encoder and mask decoder in one batch. ``B == 0`` runs nothing.
    """
    image, boxes = _check_inputs(image, boxes)
    height, width = image.shape[:2]
    if len(boxes) == 0:
        return np.zeros((0, height, width), dtype=bool)
    with torch.inference_mode():
        predictor.set_image(image)
        box_t = torch.as_tensor(boxes, dtype=torch.float32, device=predictor.device)
        box_t = predictor.transform.apply_boxes_torch(box_t, (height, width))
        masks, _, _ = predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=box_t,
            multimask_output=False,
        )
        predictor.reset_image()
    # masks: (B, 1, H, W) bool
    return masks[:, 0].cpu().numpy()


def union_masks(masks: np.ndarray, groups: list[list[int]]) -> list[np.ndarray]:
    """Per-box masks -> per-group unions (a noun's mask is the union of its boxes' masks).

    masks: ``(B, H, W)`` bool. groups: for each noun, indices into the B boxes (non-empty).
    Returns one ``(H, W)`` bool per group, in order.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"expected (B, H, W) bool masks, got {masks.shape} {masks.dtype}")
    out = []
    for g, group in enumerate(groups):
        if len(group) == 0:
            raise ValueError(f"group {g} has no boxes")
        idx = np.asarray(group, dtype=np.int64)
        if idx.min() < 0 or idx.max() >= len(masks):
            raise IndexError(f"group {g} indexes {group} outside [0, {len(masks)})")
        out.append(np.logical_or.reduce(masks[idx], axis=0))
    return out
