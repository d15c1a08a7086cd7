"""Seeded, batched, resumable text-to-image generation into a folder of PNGs.

Every image is a :class:`GenItem` ``(key, text, seed)``: its initial noise (and any sampler
noise) comes from its own ``torch.Generator("cpu").manual_seed(seed)``, so an image depends
on its text, its seed and the model, not on its batch mates or on the process that drew it.

Work is cut into fixed batches of ``batch_size`` items in item order; batch ``k`` belongs to
process ``k % N``, so the batches (and the bytes of every image) are the same for any number
of processes. A batch is skipped when all its PNGs are on disk and decode; otherwise the whole
batch is generated again and its missing or unreadable files are written (atomically: a
temporary file, then a rename), which is how an interrupted run resumes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from pipeline.core.shards import World, chunk

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GenerationConfig:
    """How images are drawn (the official MultiGen protocol: 50 steps, guidance 7.5, 512 px)."""

    steps: int = 50
    guidance_scale: float = 7.5
    resolution: int = 512
    batch_size: int = 8
    scheduler: Literal["default", "ddim", "pndm", "dpmsolver", "euler"] = "default"  # default: the folder's
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"generation: steps/batch_size must be >= 1 and resolution a multiple of 8: {self}")


@dataclass(frozen=True)
class GenItem:
    """One image to draw: ``key`` is its file stem (``"<prompt id>_<image index>"``)."""

    key: str
    text: str
    seed: int


@dataclass
class GenReport:
    """What one call did: images drawn, found on disk, and found unreadable (then redrawn).

    ``seconds``: wall time of the pipeline calls that drew images, ``drawn``: the images those
    calls produced (whole batches), so ``seconds / drawn`` is the latency per image at the
    configured batch size.
    """

    generated: int = 0
    reused: int = 0
    unreadable: list[str] | None = None
    seconds: float = 0.0
    drawn: int = 0

    def merge(self, other: "GenReport") -> "GenReport":
        return GenReport(self.generated + other.generated, self.reused + other.reused,
                         sorted((self.unreadable or []) + (other.unreadable or [])),
                         self.seconds + other.seconds, self.drawn + other.drawn)

    @property
    def seconds_per_image(self) -> float | None:
        """Latency per drawn image; None when nothing was drawn (every image came from the cache)."""
        return self.seconds / self.drawn if self.drawn else None


def _readable(path: Path) -> bool | None:
    """True: decodes; False: present but unreadable; None: missing."""
    if not path.exists():
        return None
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decode failure means "draw it again"
        return False


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG atomically (temporary file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def draw(pipe, items: Sequence[GenItem], cfg: GenerationConfig) -> list[Image.Image]:
    """One pipeline call for ``items``: ``len(items)`` PIL images of ``cfg.resolution`` squared."""
    generators = [torch.Generator("cpu").manual_seed(it.seed) for it in items]
    out = pipe(
        [it.text for it in items],
        generator=generators,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        height=cfg.resolution,
        width=cfg.resolution,
        output_type="pil",
    )
    return out.images


def generate_images(pipe, items: Sequence[GenItem], out_dir: str | Path, cfg: GenerationConfig,
                    world: World | None = None, desc: str = "generate") -> GenReport:
    """Draw every item not yet on disk into ``out_dir/<key>.png``; returns the merged report on every rank."""
    world = world or World()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("generation items must have distinct keys")
    batches = chunk(list(items), cfg.batch_size)
    mine = [b for k, b in enumerate(batches) if k % world.size == world.rank]
    report = GenReport(unreadable=[])
    bar = tqdm(total=sum(map(len, mine)), desc=f"{desc} [rank {world.rank}/{world.size}]", unit="img", disable=None)
    for batch in mine:
        state = {it.key: _readable(out / f"{it.key}.png") for it in batch}
        if all(state.values()):
            report.reused += len(batch)
            bar.update(len(batch))
            continue
        bad = [k for k, s in state.items() if s is False]
        if bad:
            log.warning("%s: unreadable image(s) on disk, drawing them again: %s", desc, bad)
            report.unreadable.extend(bad)
        t0 = time.perf_counter()
        drawn = draw(pipe, batch, cfg)
        report.seconds += time.perf_counter() - t0
        report.drawn += len(batch)
        for it, image in zip(batch, drawn):
            if state[it.key] is not True:
                save_png(image, out / f"{it.key}.png")
                report.generated += 1
            else:
                report.reused += 1
        bar.update(len(batch))
    bar.close()
    reports = world.gather(report)
    world.barrier()
    total = GenReport(unreadable=[])
    for r in reports:
        total = total.merge(r)
    return total
