"""SAM: loading a checkpoint, box prompts -> masks, one image-encoder forward per image.

``load_sam`` builds the architecture (``segment_anything``'s registry for the official
ViT-H/L/B, ``config.json`` for the tiny demo model) and loads every checkpoint through the
same strict, weights-only path. ``segment_image`` embeds an image once and decodes all of
its boxes in one batched mask-decoder call (one mask per box, ``multimask_output=False``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from .devices import resolve_device
from .tiny_sam import CONFIG_NAME, build_sam, read_architecture

log = logging.getLogger(__name__)

ModelType = Literal["vit_h", "vit_l", "vit_b", "tiny"]
MODEL_TYPES: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "tiny")


@dataclass(frozen=True)
class SegmentConfig:
    """``segment`` section of params.yaml."""

    model_type: ModelType           # vit_h | vit_l | vit_b (official checkpoints) | tiny (demo)
    checkpoint: str                 # a raw SAM state dict (.pth); tiny: config.json beside it
    shard_size: int                 # images per output shard
    device: str                     # auto | cpu | cuda | cuda:N
    export_png: bool                # also write every mask as a PNG for inspection
    out_dir: str

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"segment.model_type {self.model_type!r} not in {list(MODEL_TYPES)}")
        if self.shard_size <= 0:
            raise ValueError(f"segment.shard_size must be positive, got {self.shard_size}")
        if not self.checkpoint:
            raise ValueError("segment.checkpoint is empty")


def _torch_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` as is; a params string (``auto | cpu | cuda | cuda:N``) resolved."""
    if isinstance(device, torch.device):
        return device
    return torch.device(resolve_device(device))


def build_architecture(model_type: str, checkpoint: str | Path) -> Sam:
    """An untrained SAM with the architecture of ``model_type`` (``tiny``: from config.json)."""
    if model_type == "tiny":
        return build_sam(read_architecture(Path(checkpoint).parent / CONFIG_NAME))
    if model_type in ("vit_h", "vit_l", "vit_b"):
        return sam_model_registry[model_type](checkpoint=None)
    raise ValueError(f"unknown SAM model_type {model_type!r}; expected one of {list(MODEL_TYPES)}")


def load_sam(model_type: str, checkpoint: str | Path, device: str | torch.device = "cpu") -> Sam:
    """Build SAM ``model_type`` and load ``checkpoint`` (a raw state dict) strictly, in eval mode.

    The official ``sam_vit_{h,l,b}_*.pth`` and the tiny demo checkpoint go through the same
    ``torch.load(weights_only=True)`` + ``load_state_dict(strict=True)`` path.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model_type {model_type!r}; expected one of {list(MODEL_TYPES)}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        hint = " (build it with the demo_models stage)" if model_type == "tiny" else ""
        raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}{hint}")
    target = _torch_device(device)
    sam = build_architecture(model_type, checkpoint)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{checkpoint} does not match the SAM architecture {model_type!r}: {e}"
        ) from e
    sam.eval().to(target)
    n_params = sum(p.numel() for p in sam.parameters())
    log.info("SAM %s: %.1fM parameters from %s on %s", model_type, n_params / 1e6, checkpoint, target)
    return sam


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
