"""OWLv2 / OWL-ViT detectors (HuggingFace transformers): hub id or local folder -> model + processor.

``google/owlv2-large-patch14-ensemble`` (MultiGen) and ``google/owlvit-base-patch32`` (Object
Accuracy) load through ``load_owl``; so do the tiny random twins ``owl_tiny`` writes. Detection
on images: ``pipeline.evaluate.detection``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch

DetectorKind = Literal["owlv2", "owlvit"]
KINDS: tuple[str, ...] = ("owlv2", "owlvit")

#: ``org/name`` hub ids (no leading ``.``, ``/`` or ``~``).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _classes(kind: str):
    """(model class, processor class) for a detector kind."""
    from transformers import (
        Owlv2ForObjectDetection,
        Owlv2Processor,
        OwlViTForObjectDetection,
        OwlViTProcessor,
    )

    if kind == "owlv2":
        return Owlv2ForObjectDetection, Owlv2Processor
    if kind == "owlvit":
        return OwlViTForObjectDetection, OwlViTProcessor
    raise ValueError(f"detector kind {kind!r} not in {list(KINDS)}")


def resolve_source(name_or_path: str | Path) -> str:
    """A local detector folder (must hold config.json) or an ``org/name`` hub id, else FileNotFoundError.

    A name that does not exist locally counts as a hub id only if it looks like one and its
    first component is not a local folder (``models/owl`` with ``models/`` present is a
    missing local folder, not a hub id).
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a detector folder: no config.json")
        return str(path)
    if _HUB_ID.fullmatch(name) and not Path(name.split("/")[0]).exists():
        return name
    raise FileNotFoundError(
        f"detector folder not found: {path} (nor a hub id like google/owlv2-large-patch14-ensemble)"
    )


def load_owl(name_or_path: str | Path, kind: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
             fast_processor: bool = False):
    """``(model, processor, source)``: ``*ForObjectDetection`` in eval mode on ``device``, its ``*Processor``.

    ``kind`` must match the checkpoint's ``model_type``.
    """
    from transformers import AutoConfig

    model_cls, processor_cls = _classes(kind)
    source = resolve_source(name_or_path)
    config = AutoConfig.from_pretrained(source)
    if config.model_type != kind:
        raise ValueError(f"{source} holds a {config.model_type!r} model, not {kind!r}")
    model = model_cls.from_pretrained(source, config=config)
    model.to(device=device, dtype=dtype).eval()
    processor = processor_cls.from_pretrained(source, use_fast=fast_processor)
    return model, processor, source
