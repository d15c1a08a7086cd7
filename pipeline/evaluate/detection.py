"""Open-vocabulary detection with OWLv2 / OWL-ViT (HuggingFace transformers).

The ``evaluate`` stage detects objects in generated images:

* MultiGen: ``google/owlv2-large-patch14-ensemble`` (``kind="owlv2"``);
* Object Accuracy (VISOR protocol): ``google/owlvit-base-patch32`` (``kind="owlvit"``);

both with the text queries ``"a photo of a {category}"``. :meth:`Detector.detect` computes
what the reference scripts compute with ``processor(text=..., images=...)``, ``model(**inputs)``
and ``processor.post_process_object_detection``: per predicted box (one per ViT patch) the
sigmoid of the class logits, its maximum over the queries is the box's score and the argmax
its label ("each box labelled by its best query"), boxes kept when score > threshold.

How it is computed. The model's own building blocks are called directly (the same ones its
``forward`` calls): the image tower once per batch (``image_embedder``), the text tower once per
distinct query (``base_model.get_text_features``, L2-normalised as in ``forward``; embeddings
are cached across calls, since every batch asks the same queries), then ``class_predictor`` and
``box_predictor``. ``forward`` instead re-encodes all queries for every image of the batch and
also runs the image-level CLIP head, which detection never reads. Results equal
``model(**inputs)`` up to float rounding (tested).

Preprocessing and boxes. ``pred_boxes`` are (cx, cy, w, h) in [0, 1] relative to the model's
square input:

* OWL-ViT resizes the image to the square (aspect ratio not kept): x scales by the image
  width, y by its height;
* OWLv2 first pads the image with grey at the bottom/right to a ``max(h, w)`` square, then
  resizes: both axes scale by ``max(h, w)`` (what transformers' Owlv2 ``_scale_boxes`` does).

Boxes are then clipped to the image (for OWLv2 a box may reach into the padding); the
reference post-processing does not clip, which only moves boxes that cross the border.

Image processors: by default the slow ones the official evaluations ran (``OwlViTImageProcessor``,
PIL bicubic resize, as VISOR; ``Owlv2ImageProcessor``, scipy's anti-aliasing, as MultiGen);
``fast_processor=True`` takes the torchvision ones (much faster on the CPU; for OWLv2 the
normalised pixels differ from the slow ones by 6e-5 on average, up to 0.3 at a few pixels).

Queries are tokenised to OWL's 16 tokens (``max_position_embeddings``); a longer query is
truncated (its end-of-text token kept), with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from pipeline.models.owl import KINDS, DetectorKind, load_owl

log = logging.getLogger(__name__)

QUERY_TEMPLATE = "a photo of a {}"
@dataclass(frozen=True)
class Detection:
    """One kept box: ``label`` indexes the image's category list, ``box`` is (x0, y0, x1, y1) in pixels."""

    label: int
    score: float
    box: tuple[float, float, float, float]


def boxes_to_pixels(boxes: torch.Tensor, width: int, height: int, kind: str) -> torch.Tensor:
    """Normalised (cx, cy, w, h) boxes of one image -> (x0, y0, x1, y1) pixels, clipped to the image.

    ``boxes``: (N, 4), relative to the model's square input; returns (N, 4) float32.
    ``kind="owlvit"``: the square is the image stretched, x scales by ``width``, y by ``height``.
    ``kind="owlv2"``: the square is the image padded bottom/right to ``max(width, height)``,
    both axes scale by that side.
    """
    if kind not in KINDS:
        raise ValueError(f"detector kind {kind!r} not in {list(KINDS)}")
    b = boxes.float()
    corners = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)
    if kind == "owlv2":
        sx = sy = float(max(width, height))
    else:
        sx, sy = float(width), float(height)
    corners = corners * torch.tensor([sx, sy, sx, sy])
    upper = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.minimum(corners.clamp(min=0.0), upper)


def _per_image(categories: Sequence[str] | Sequence[Sequence[str]], n_images: int) -> list[list[str]]:
    if isinstance(categories, str):
        raise TypeError("categories must be a list of names (or one list per image), not a string")
    if all(isinstance(c, str) for c in categories):
        return [list(categories)] * n_images
    lists = [list(c) for c in categories]
    if len(lists) != n_images or not all(isinstance(c, str) for cats in lists for c in cats):
        raise ValueError(f"categories: one list of names, or one per image ({n_images}); got {len(lists)} entries")
    return lists


class Detector:
    """An OWLv2 / OWL-ViT model and its processor, in eval mode on ``device``."""

    def __init__(self, model, processor, kind: str, device: str, dtype: torch.dtype) -> None:
        self.model = model
        self.processor = processor
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.max_text_len = int(model.config.text_config.max_position_embeddings)
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        kind: DetectorKind,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        fast_processor: bool = False,
    ) -> Detector:
        """Load ``*ForObjectDetection`` + ``*Processor`` with ``from_pretrained``.

        ``name_or_path``: a local folder (``pipeline.models.owl_tiny``'s output or a downloaded
        snapshot) or a hub id. ``kind`` must match the checkpoint's ``model_type``.
        """
        model, processor, source = load_owl(name_or_path, kind, device, dtype, fast_processor)
        log.info(
            "loaded %s detector %s (%s, %s) on %s, %s", kind, source, type(processor.image_processor).__name__,
            type(processor.tokenizer).__name__, device, dtype,
        )
        return cls(model, processor, kind, device, dtype)

    @property
    def num_boxes(self) -> int:
        """Boxes predicted per image: one per patch."""
        v = self.model.config.vision_config
        return (v.image_size // v.patch_size) ** 2

    # ------------------------------------------------------------------ text queries

    def _tokenize(self, queries: list[str]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        for q, ids in zip(queries, tok(queries)["input_ids"]):
            if len(ids) > self.max_text_len:
                log.warning("query %r has %d tokens; truncated to %d", q, len(ids), self.max_text_len)
        enc = self.processor(
            text=queries, padding="max_length", max_length=self.max_text_len, truncation=True, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def text_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        """(len(queries), D) L2-normalised query embeddings; each distinct query is encoded once.

        Each query is encoded alone: a batched forward rounds differently with the batch's size
        and company, which would make a query's scores depend on which queries were cached
        before (a resumed run would then differ from an uninterrupted one in the last bits).
        """
        for q in dict.fromkeys(q for q in queries if q not in self._text_cache):
            with torch.inference_mode():
                feats = self.model.base_model.get_text_features(**self._tokenize([q]))  # (1, D)
            if not isinstance(feats, torch.Tensor):  # transformers >= 5: a model output, projected pooler_output
                feats = feats.pooler_output
            self._text_cache[q] = (feats / torch.linalg.norm(feats, ord=2, dim=-1, keepdim=True))[0]
        return torch.stack([self._text_cache[q] for q in queries])

    # ------------------------------------------------------------------ detection

    @torch.inference_mode()
    def predict(
        self, images: Sequence[Image.Image], queries: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw predictions for one batch: ``(probs, boxes)``.

        ``queries[i]``: image i's text queries (Q_i of them). ``probs``: (B, P, Q) float32
        sigmoid class scores, Q = max Q_i, entries past Q_i are 0; ``boxes``: (B, P, 4) float32
        normalised (cx, cy, w, h) relative to the model's square input; P = ``num_boxes``.
        """
        rgb = [im.convert("RGB") for im in images]
        pixel_values = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)  # (B, 3, S, S)
        feature_map = self.model.image_embedder(pixel_values=pixel_values)[0]  # (B, g, g, Dv)
        b, gh, gw, dv = feature_map.shape
        image_feats = feature_map.reshape(b, gh * gw, dv)  # (B, P, Dv)
        query_embeds, query_mask = self._query_batch(queries)  # (B, Q, D), (B, Q)
        logits, _ = self.model.class_predictor(image_feats, query_embeds, query_mask)  # (B, P, Q)
        boxes = self.model.box_predictor(image_feats, feature_map)  # (B, P, 4)
        probs = logits.float().sigmoid().masked_fill(~query_mask[:, None, :], 0.0)
        return probs.cpu(), boxes.float().cpu()

    def _query_batch(self, queries: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image query lists -> embeddings (B, Q, D) zero-padded to Q = max Q_i, and mask (B, Q)."""
        flat = [q for qs in queries for q in qs]
        if not flat:
            raise ValueError("no text queries")
        text = self.text_embeddings(flat).to(self.dtype)  # (sum Q_i, D)
        n = max(len(qs) for qs in queries)
        embeds = text.new_zeros(len(queries), n, text.shape[-1])
        mask = torch.zeros(len(queries), n, dtype=torch.bool, device=text.device)
        start = 0
        for i, qs in enumerate(queries):
            embeds[i, : len(qs)] = text[start : start + len(qs)]
            mask[i, : len(qs)] = True
            start += len(qs)
        return embeds, mask

    def detect(
        self,
        images: Sequence[Image.Image],
        categories: Sequence[str] | Sequence[Sequence[str]],
        keep_threshold: float,
        batch_size: int | None = None,
    ) -> list[list[Detection]]:
        """Detections per image, best first (score descending, then label, then box).

        ``categories``: one list of names shared by all images, or one list per image
        (the reference MultiGen script queries each prompt's own objects); queries are
        ``QUERY_TEMPLATE.format(name)`` and ``Detection.label`` indexes the image's list.
        Each predicted box gets its best query's label and sigmoid score; boxes with
        score > ``keep_threshold`` are kept. ``batch_size`` images share a forward (None: all);
        the results do not depend on it (up to float rounding).
        """
        if not 0.0 <= keep_threshold < 1.0:
            raise ValueError(f"keep_threshold must be in [0, 1), got {keep_threshold}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        per_image = _per_image(categories, len(images))
        results: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, cats in enumerate(per_image) if cats]
        size = batch_size or max(len(todo), 1)
        for k in range(0, len(todo), size):
            batch = todo[k : k + size]
            queries = [[QUERY_TEMPLATE.format(c) for c in per_image[i]] for i in batch]
            probs, boxes = self.predict([images[i] for i in batch], queries)
            for j, i in enumerate(batch):
                results[i] = self._keep(probs[j], boxes[j], images[i].size, keep_threshold)
            log.debug("detected %d images (%d..%d)", len(batch), batch[0], batch[-1])
        return results

    def _keep(
        self, probs: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], keep_threshold: float
    ) -> list[Detection]:
        """One image: ``probs`` (P, Q), ``boxes`` (P, 4) normalised cxcywh -> kept detections, sorted."""
        scores, labels = probs.max(dim=-1)  # (P,), first query on ties
        keep = scores > keep_threshold
        width, height = size
        pixels = boxes_to_pixels(boxes[keep], width, height, self.kind)
        dets = [
            Detection(label=int(lab), score=float(s), box=tuple(float(v) for v in box))
            for lab, s, box in zip(labels[keep].tolist(), scores[keep].tolist(), pixels.tolist())
        ]
        dets.sort(key=lambda d: (-d.score, d.label, d.box))
        return dets
