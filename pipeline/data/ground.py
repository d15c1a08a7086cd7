"""The ``ground`` stage: nouns + images -> boxes table (Grounding DINO).

Each image gets one text prompt with the distinct noun phrases of all of its captions
(``phrase_boxes.normalize_phrase``: lower-cased, separators and whitespace normalised;
``"dog . teddy bear ."``), and one forward pass;
``batch_size`` images share a forward. Every noun occurrence of the nouns table ends up in
the boxes table: one row per box assigned to its phrase, or one row with ``found = false``
and null box when no box passed the thresholds. Images that cannot be read go to the
rejects table with all their nouns counted there.

``phrase_rule`` says how a box finds its noun (``phrase_boxes`` has the details):
``best_phrase`` (the demo's default) gives each query to the phrase whose own tokens hold its
highest probability; ``official`` (TokenCompose's data preparation, the paper profiles) keeps a
query by its maximum over all prompt tokens and maps its decoded phrase to a noun with the
release's chain (``phrase_boxes.match_official``); its prompt lists the image's distinct nouns
in the nouns table's order (the release's ``" . ".join`` of its noun list), and the chain
matches against their texts. ``exact_phrase`` keeps queries as ``official`` but gives a box only
to a noun whose phrase is exactly the decoded one. A box that gives no noun a box is recorded in
the rejects table (key ``<image_id>:box<k>``, the decoded phrase, score and box in ``detail``):
reason ``phrase_matches_no_noun`` (counted as ``boxes_without_noun``) or, under ``official``,
``phrase_replaced`` (a later phrase took its noun, as the release's later mask file overwrites
the earlier; counted as ``boxes_replaced``). ``box_matches`` counts the boxes by the step of the
chain that matched them (``official``).

Boxes table (``data/ground/boxes/part-*.parquet``), one row per (noun, box):
    noun_id int64, caption_id int64, image_id int64, text string,
    box_index int32 (-1 when not found), found bool,
    x0, y0, x1, y1 float32 (image pixels, xyxy; null when not found),
    score float32 (null when not found), phrase string (Grounding DINO's decoded phrase),
    match string (``official``: the chain's step, ``phrase_boxes.MATCH_STEPS``; else null).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.core.code import code_digest
from pipeline.core.config import fingerprint
from pipeline.core.devices import resolve_device
from pipeline.core.images import load_rgb
from pipeline.core.schemas import BOXES_SCHEMA
from pipeline.core.shards import World, inputs_digest, run_sharded
from pipeline.core.tables import read_table, rejects_table, write_json, write_table
from pipeline.data.phrase_boxes import MATCH_STEPS, NO_MATCH, PHRASE_RULES, REPLACED, ground_images, normalize_phrase
from pipeline.models.grounding_dino import load_grounding_dino, resolve_config_path
from pipeline.models.weight_files import model_inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroundConfig:
    """The ``ground`` section of params.yaml."""

    config: str = "models/tiny/groundingdino/config.py"
    checkpoint: str = "models/tiny/groundingdino/groundingdino_tiny.pth"
    text_encoder: str = "models/tiny/bert"
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    phrase_rule: str = "best_phrase"  # best_phrase | exact_phrase | official (TokenCompose's matching chain)
    image_size: int = 320
    max_size: int = 533
    batch_size: int = 4
    shard_size: int = 16
    device: str = "auto"
    out_dir: str = "data/ground"
    reference: str = ""  # reference_masks out_dir: box recall against the COCO boxes of matched nouns; "" = off

    def validate(self) -> None:
        for name in ("box_threshold", "text_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ground.{name} must be in [0, 1), got {value}")
        if self.phrase_rule not in PHRASE_RULES:
            raise ValueError(f"ground.phrase_rule must be one of {list(PHRASE_RULES)}, got {self.phrase_rule!r}")
        for name in ("image_size", "max_size", "batch_size", "shard_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ground.{name} must be positive, got {getattr(self, name)}")
        if self.max_size < self.image_size:
            raise ValueError(f"ground.max_size ({self.max_size}) < ground.image_size ({self.image_size})")
        for name in ("config", "checkpoint", "text_encoder", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"ground.{name} is empty")


def _ground_fields(cfg: GroundConfig) -> dict:
    """The params that change the boxes (not device, batching or paths)."""
    return {
        "config": cfg.config,
        "checkpoint": cfg.checkpoint,
        "text_encoder": cfg.text_encoder,
        "box_threshold": cfg.box_threshold,
        "text_threshold": cfg.text_threshold,
        "phrase_rule": cfg.phrase_rule,
        "image_size": cfg.image_size,
        "max_size": cfg.max_size,
        "shard_size": cfg.shard_size,
    }


def ground_fingerprint(cfg: GroundConfig, captions_path: str | Path, nouns_path: str | Path,
                       images: list[str]) -> str:
    """What the shards are keyed by: the params, the code, and the bytes of every input (tables,
    images, config, checkpoint, the text encoder folder's files that BERT's loader reads:
    ``pipeline.models.weight_files``). Digests are cached by stat signature (``pipeline.core.digests``)."""
    inputs = inputs_digest(captions_path, nouns_path, *images, resolve_config_path(cfg.config), cfg.checkpoint,
                           *model_inputs(cfg.text_encoder))
    return fingerprint(_ground_fields(cfg), inputs, code_digest(__name__))


def run_ground(cfg: GroundConfig, captions_path: str | Path, nouns_path: str | Path) -> dict | None:
    """Run the stage; returns the summary on the main process."""
    captions = read_table(captions_path, columns=["image_id", "path"]).to_pylist()
    image_paths = {r["image_id"]: r["path"] for r in captions}
    nouns = read_table(nouns_path, columns=["noun_id", "caption_id", "image_id", "text"]).to_pylist()
    by_image: dict[int, list[dict]] = defaultdict(list)
    for n in nouns:
        by_image[n["image_id"]].append(n)
    unknown = sorted(set(by_image) - set(image_paths))
    if unknown:
        raise ValueError(f"nouns reference {len(unknown)} image ids absent from the captions table, e.g. {unknown[:5]}")
    items = sorted(by_image)

    world = World.from_accelerate(resolve_device(cfg.device))
    device = world.device
    model = load_grounding_dino(cfg.config, cfg.checkpoint, cfg.text_encoder, device)

    def shard(image_ids: list[int]) -> tuple[pa.Table, pa.Table]:
        rows: list[dict] = []
        rejects: list[tuple[str, str, str]] = []
        for start in range(0, len(image_ids), cfg.batch_size):
            batch_ids, images, prompts = [], [], []
            for image_id in image_ids[start : start + cfg.batch_size]:
                try:
                    images.append(load_rgb(image_paths[image_id]))
                except Exception as e:  # noqa: BLE001 - any unreadable file is a recorded reject
                    for n in by_image[image_id]:
                        rejects.append((str(n["noun_id"]), "unreadable_image", f"{image_paths[image_id]}: {e}"))
                    continue
                batch_ids.append(image_id)
                prompts.append(image_phrases(by_image[image_id], cfg.phrase_rule))
            if not batch_ids:
                continue
            detections = ground_images(
                model, images, prompts, cfg.box_threshold, cfg.text_threshold, cfg.image_size, cfg.max_size, device,
                phrase_rule=cfg.phrase_rule,
            )
            for image_id, phrases, dets in zip(batch_ids, prompts, detections):
                rows.extend(_rows_for_image(by_image[image_id], phrases, dets))
                rejects.extend(_boxes_without_noun(image_id, dets))
        return pa.Table.from_pylist(rows, schema=BOXES_SCHEMA), rejects_table("ground", rejects)

    # once, on the main process: every input's bytes (cached by stat signature, pipeline.core.digests)
    fp = world.on_main(lambda: ground_fingerprint(cfg, captions_path, nouns_path, [image_paths[i] for i in items]))
    out = Path(cfg.out_dir)
    result = run_sharded("ground", items, cfg.shard_size, shard, out / "boxes", fp, BOXES_SCHEMA, world)
    if result is None:
        return None
    write_table(result.rejects, out / "rejects.parquet")
    boxes = read_table(out / "boxes").to_pylist()
    summary = _stage_summary(cfg, nouns, boxes, result.rejects.column("reason").to_pylist(), len(items))
    write_json(summary, out / "summary.json")
    return summary


def _stage_summary(cfg: GroundConfig, nouns: list[dict], boxes: list[dict], reasons: list[str], images: int) -> dict:
    """Counts of nouns and boxes (``_summary``), boxes by match step, and the box recall against
    the reference when ``cfg.reference`` is set."""
    n_unmatched, n_replaced = reasons.count(UNMATCHED_REASON), reasons.count(REPLACED_REASON)
    summary = _summary(nouns, boxes, len(reasons) - n_unmatched - n_replaced, images)
    summary["boxes_without_noun"] = n_unmatched
    if cfg.phrase_rule == "official":
        summary["boxes_replaced"] = n_replaced
        summary["box_matches"] = box_matches(boxes, n_unmatched, n_replaced)
    if cfg.reference:
        from pipeline.data.mask_quality import box_recall

        instances = read_table(Path(cfg.reference) / "instances.parquet").to_pylist()
        quality = box_recall(boxes, instances)
        quality["quality_measure"] = not Path(cfg.checkpoint).name.endswith("_tiny.pth")
        if not quality["quality_measure"]:
            quality["note"] = "tiny random Grounding DINO: this recall tests the plumbing, it measures no box quality"
        summary["box_quality"] = quality
    return summary


UNMATCHED_REASON = "phrase_matches_no_noun"
REPLACED_REASON = "phrase_replaced"


def image_phrases(nouns: list[dict], phrase_rule: str) -> list[str]:
    """The phrases of one image's prompt: ``official``: the distinct nouns (by normalised text) in
    noun_id order, as written; otherwise the sorted distinct normalised texts."""
    if phrase_rule != "official":
        return sorted({normalize_phrase(n["text"]) for n in nouns})
    first: dict[str, str] = {}
    for n in sorted(nouns, key=lambda n: n["noun_id"]):
        first.setdefault(normalize_phrase(n["text"]), n["text"])
    return list(first.values())


def _boxes_without_noun(image_id: int, detections: list) -> list[tuple[str, str, str]]:
    """Reject rows for the boxes that give no noun a box (``phrase_index == -1``)."""
    out = []
    for k, d in enumerate(d for d in detections if d.phrase_index < 0):
        box = ", ".join(f"{v:.1f}" for v in d.box_xyxy)
        reason = REPLACED_REASON if d.match == REPLACED else UNMATCHED_REASON
        out.append((f"{image_id}:box{k}", reason, f"decoded {d.phrase!r}, score {d.score:.3f}, box [{box}]"))
    return out


def box_matches(boxes: list[dict], unmatched: int, replaced: int) -> dict[str, int]:
    """Boxes by the step of the release's chain that gave them a noun (a box shared by several
    occurrences of one noun counted once), plus the boxes matched to nothing or replaced."""
    seen = {(r["image_id"], r["phrase"], r["box_index"], r["match"]) for r in boxes if r["found"]}
    counts = {step: 0 for step in MATCH_STEPS}
    for *_, step in seen:
        counts[step] += 1
    return {**counts, NO_MATCH: unmatched, REPLACED: replaced}


def _rows_for_image(nouns: list[dict], phrases: list[str], detections: list) -> list[dict]:
    """Every noun occurrence of one image -> its box rows (or one not-found row)."""
    per_phrase: dict[int, list] = defaultdict(list)
    for d in detections:
        if d.phrase_index >= 0:
            per_phrase[d.phrase_index].append(d)
    index = {normalize_phrase(p): i for i, p in enumerate(phrases)}
    rows = []
    for n in sorted(nouns, key=lambda n: n["noun_id"]):
        base = {k: n[k] for k in ("noun_id", "caption_id", "image_id", "text")}
        dets = per_phrase.get(index[normalize_phrase(n["text"])], [])
        if not dets:
            rows.append({**base, "box_index": -1, "found": False})
        for b, d in enumerate(sorted(dets, key=lambda d: -d.score)):
            x0, y0, x1, y1 = d.box_xyxy
            rows.append(
                {**base, "box_index": b, "found": True, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                 "score": d.score, "phrase": d.phrase, "match": d.match or None}
            )
    return rows


def _summary(nouns: list[dict], boxes: list[dict], rejected: int, images: int) -> dict:
    found = {r["noun_id"] for r in boxes if r["found"]}
    not_found = {r["noun_id"] for r in boxes if not r["found"]}
    summary = {
        "images": images,
        "input_nouns": len(nouns),
        "nouns_with_box": len(found),
        "nouns_without_box": len(not_found),
        "rejected_nouns": rejected,
        "boxes": sum(r["found"] for r in boxes),
    }
    if len(nouns) != len(found) + len(not_found) + rejected:
        raise RuntimeError(f"ground: counts do not add up: {summary}")
    return summary
