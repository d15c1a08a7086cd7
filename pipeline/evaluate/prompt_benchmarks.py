"""Detection benchmarks on generated images: MultiGen (MG2..MG5) and VISOR's Object Accuracy.

Both are the same computation over different prompts and detectors::

    prompts (k categories each) --generate--> images/<prompt id>_<image index>.png
        --detect ("a photo of a {category}" for the prompt's categories)--> detections
        --score (multigen.score)--> MG-k; Object Accuracy is MG2 of two-object prompts

Images live in a cache folder keyed by the model and the generation settings, detections in
shards keyed by the images and the detector settings (``data/.partial/``; both are kept after
a run and published as hard links): an interrupted run redoes neither, and a rerun that
changes only the detector reuses the images.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.core.config import fingerprint
from pipeline.core.schemas import DETECTIONS_SCHEMA, MANIFEST_SCHEMA
from pipeline.core.shards import World, link_or_copy, partial_dir, run_sharded
from pipeline.core.tables import read_table, rejects_table, write_table
from pipeline.evaluate.generation import (
    GenerationConfig,
    GenItem,
    GenReport,
    generate_images,
)
from pipeline.evaluate.multigen import Prompt, category_recall, image_seed, score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptBenchmark:
    """One benchmark run's definition (``namespace`` keeps its seeds apart from other benchmarks')."""

    name: str
    prompts: list[Prompt]
    images_per_prompt: int
    namespace: str
    detector: str
    detector_kind: str
    fast_processor: bool
    threshold: float
    keep_threshold: float
    detect_batch_size: int

    def items(self, seed: int) -> list[GenItem]:
        return [GenItem(f"{p.prompt_id}_{j}", p.text, image_seed(seed, p.prompt_id, j, self.namespace))
                for p in self.prompts for j in range(self.images_per_prompt)]


def check_vocabulary(prompts: list[Prompt], vocabulary: list[str] | None, where: str
                     ) -> tuple[list[Prompt], list[tuple[str, str, str]]]:
    """Split prompts into those whose categories are all in ``vocabulary`` and rejects ``(key, reason, detail)``."""
    if vocabulary is None:
        return prompts, []
    known = set(vocabulary)
    kept, rejects = [], []
    for p in prompts:
        unknown = [c for c in p.categories if c not in known]
        if unknown:
            rejects.append((f"{where}:{p.prompt_id}", "category_not_in_vocabulary",
                            f"prompt {p.prompt_id} names {unknown}, not among the detector's {len(known)} categories"))
        else:
            kept.append(p)
    return kept, rejects


def publish_images(src: Path, keys: list[str], dst: Path) -> None:
    """Hard-link (or copy) ``src/<key>.png`` into a fresh ``dst``; the cache stays for later runs."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for key in keys:
        link_or_copy(src / f"{key}.png", dst / f"{key}.png")


def manifest(bench: PromptBenchmark, items: list[GenItem]) -> pa.Table:
    cats = {p.prompt_id: list(p.categories) for p in bench.prompts}
    rows = []
    for it in items:
        pid, j = map(int, it.key.split("_"))
        rows.append({"key": it.key, "prompt_id": pid, "image_index": j, "seed": it.seed, "text": it.text,
                     "categories": cats[pid]})
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def detect_shard(detector, images_dir: Path, bench: PromptBenchmark, items: list[GenItem]
                 ) -> tuple[pa.Table, pa.Table]:
    """Detections of one shard of images (one batched detector call); unreadable images are rejects."""
    from PIL import Image

    cats = {p.prompt_id: list(p.categories) for p in bench.prompts}
    images, queries, keys, rejects = [], [], [], []
    for it in items:
        try:
            with Image.open(images_dir / f"{it.key}.png") as im:
                images.append(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - recorded, not raised
            rejects.append((f"{bench.name}:{it.key}", "unreadable_image", f"{type(e).__name__}: {e}"))
            continue
        keys.append(it.key)
        queries.append(cats[int(it.key.split("_")[0])])
    found = detector.detect(images, queries, bench.keep_threshold) if images else []
    rows = []
    for key, names, dets in zip(keys, queries, found):
        pid, j = map(int, key.split("_"))
        rows.extend({"key": key, "prompt_id": pid, "image_index": j, "label": names[d.label], "score": d.score,
                     "x0": d.box[0], "y0": d.box[1], "x1": d.box[2], "y1": d.box[3]} for d in dets)
    return pa.Table.from_pylist(rows, schema=DETECTIONS_SCHEMA), rejects_table("evaluate", rejects)


def run_prompt_benchmark(bench: PromptBenchmark, pipe, model: str, model_digest: str, gen: GenerationConfig,
                         seed: int, device: str, out_dir: Path, world: World) -> dict | None:
    """Generate, detect and score one benchmark; writes ``out_dir/{manifest.parquet,images,detections}``.

    Returns ``{"scores": ..., "rejects": [...], "report": GenReport}`` on the main process, None elsewhere.
    """
    from pipeline.evaluate.detection import Detector

    items = bench.items(seed)
    image_fp = fingerprint(model_digest, gen, [(i.key, i.text, i.seed) for i in items])
    images = partial_dir(f"evaluate-{model}-{bench.name}-images", image_fp, world)
    report: GenReport = generate_images(pipe, items, images, gen, world, desc=f"{model} {bench.name}")
    detector = Detector.load(bench.detector, bench.detector_kind, device=device, fast_processor=bench.fast_processor)
    det_fp = fingerprint(image_fp, bench.detector, bench.detector_kind, bench.fast_processor, bench.keep_threshold,
                         bench.detect_batch_size)
    result = run_sharded(f"evaluate-{model}-{bench.name}-detect", items, bench.detect_batch_size,
                         lambda shard: detect_shard(detector, images, bench, list(shard)),
                         out_dir / "detections", det_fp, DETECTIONS_SCHEMA, world, keep=True)
    if result is None:
        return None
    publish_images(images, [i.key for i in items], out_dir / "images")
    write_table(manifest(bench, items), out_dir / "manifest.parquet")
    rejected = {k.split(":", 1)[1] for k in result.rejects.column("key").to_pylist()}
    dets = read_table(out_dir / "detections").to_pylist()
    scored = [p for p in bench.prompts if all(f"{p.prompt_id}_{j}" not in rejected
                                              for j in range(bench.images_per_prompt))]
    found = [(d["prompt_id"], d["image_index"], d["label"], d["score"]) for d in dets
             if f"{d['prompt_id']}_{d['image_index']}" not in rejected]
    scores = score(found, scored, bench.images_per_prompt, bench.threshold) if scored else {}
    scores["detections"] = sum(d["score"] > bench.threshold for d in dets)
    return {"scores": scores, "rejects": result.rejects, "report": report,
            "recall": category_recall(found, scored, bench.images_per_prompt, bench.threshold),
            "unscored_prompts": len(bench.prompts) - len(scored)}
