"""Benchmark: start-up of ``train``, ``ground`` and ``segment`` at COCO scale, until the first batch.

    python -m bench.bench_startup [--images 118287] [--captions 591753] [--keep DIR]

Makes, in a temporary folder (removed after; ``--keep`` keeps it), COCO train2017's counts:
118,287 tiny images (8 x 8 JPEG, 64 distinct contents) and 591,753 captions, with nouns,
boxes and masks tables written directly in the project's schemas (``pipeline.core.schemas``;
3.33 nouns per caption, 90% of them with a box and a mask), a Stable Diffusion folder laid out
like a hub snapshot (small configs and weights beside fp16 variants and a top-level ``.ckpt``
that no loader reads) and stand-ins for the Grounding DINO and SAM files.

Measured, each cold (no digest cache) and warm (the cache the cold start wrote, reloaded):

- train: ``training_inputs_digest`` + ``fingerprint`` (the resume key), ``build_examples``
  (the paper profile's ``max_mask_coverage`` 1.0, SD's slow CLIP tokenizer), the first
  collated micro-batch of ``TokenComposeDataset``; model loading is not included (its cost
  does not grow with the data);
- ground, segment: ``run_ground`` / ``run_segment`` from the call to the first model call,
  with the model loaders replaced by stand-ins (the real code path otherwise: tables, grouping,
  the fingerprint on the main process, the partial folder, the first image).

Target: under 60 s each. Files are in the page cache (just written): a disk-cold first start
reads the images once more; real COCO images are ~160 KB (19 GB), so a cold start's hashing
there is bound by the disk, a warm one is not.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.core import digests
from pipeline.core.logs import setup_logging
from pipeline.core.masks import encode_rle
from pipeline.core.schemas import BOXES_SCHEMA, CAPTIONS_SCHEMA, MASKS_SCHEMA, NOUNS_SCHEMA
from pipeline.core.tables import write_table

from .common import row, to_markdown

log = logging.getLogger("bench.startup")

COCO_IMAGES, COCO_CAPTIONS = 118_287, 591_753
SIDE = 8
WORDS = ("dog", "cat", "table", "person", "pizza", "bus", "tree", "horse", "kite", "clock", "oven", "car")


class FirstBatch(Exception):
    """Raised by the stand-in model at its first call: start-up ends there."""


def make_images(folder: Path, n: int) -> list[str]:
    """``n`` 8 x 8 JPEGs (64 distinct contents, written round-robin); their paths."""
    folder.mkdir(parents=True)
    blobs = []
    for k in range(64):
        buf = io.BytesIO()
        Image.new("RGB", (SIDE, SIDE), (k * 4, 255 - k * 4, k)).save(buf, format="JPEG")
        blobs.append(buf.getvalue())
    paths = [str(folder / f"{i + 1:012d}.jpg") for i in range(n)]
    for i, p in enumerate(paths):
        with open(p, "wb") as f:
            f.write(blobs[i % 64])
    return paths


def make_tables(root: Path, paths: list[str], n_captions: int, seed: int = 0) -> dict[str, Path]:
    """Captions, nouns, boxes and masks tables for images ``paths`` (ids 1..N), in the project's schemas."""
    rng = np.random.default_rng(seed)
    n_images = len(paths)
    image_of = (np.arange(n_captions) % n_images).astype(np.int64)  # 5 captions per image, a few get 6
    w = rng.integers(0, len(WORDS), (n_captions, 4))
    texts = [f"a {WORDS[a]} next to a {WORDS[b]} on the {WORDS[c]} near a {WORDS[d]}" for a, b, c, d in w]
    files = [os.path.basename(p) for p in paths]
    captions = pa.table({
        "image_id": image_of + 1, "caption_id": np.arange(n_captions, dtype=np.int64),
        "file": [files[i] for i in image_of], "path": [paths[i] for i in image_of],
        "width": np.full(n_captions, SIDE, np.int32), "height": np.full(n_captions, SIDE, np.int32),
        "mode": ["RGB"] * n_captions, "caption": texts, "official_nouns": [None] * n_captions,
        "clip_score": [None] * n_captions,
    }, schema=CAPTIONS_SCHEMA)
    per = np.where(np.arange(n_captions) % 3 == 0, 4, 3)  # 3.33 nouns per caption
    cap = np.repeat(np.arange(n_captions), per)
    k = np.arange(len(cap)) - np.repeat(np.cumsum(per) - per, per)
    noun_text = [WORDS[w[c, j]] for c, j in zip(cap, k)]
    n = len(cap)
    nouns = pa.table({
        "noun_id": np.arange(n, dtype=np.int64), "caption_id": cap.astype(np.int64), "image_id": image_of[cap] + 1,
        "noun_index": k.astype(np.int32), "text": noun_text, "lemma": noun_text,
        "start": np.zeros(n, np.int32), "end": np.ones(n, np.int32),
        "token_indices": [[int(2 + 3 * j)] for j in k], "truncated": np.zeros(n, bool),
    }, schema=NOUNS_SCHEMA)
    found = rng.random(n) < 0.9
    x0 = rng.integers(0, SIDE // 2, n).astype(np.float32)
    x1 = x0 + rng.integers(1, SIDE // 2 + 1, n)
    boxes = pa.table({
        "noun_id": nouns["noun_id"], "caption_id": nouns["caption_id"], "image_id": nouns["image_id"],
        "text": noun_text, "box_index": np.where(found, 0, -1).astype(np.int32), "found": found,
        "x0": pa.array(x0, mask=~found), "y0": pa.array(x0, mask=~found), "x1": pa.array(x1, mask=~found),
        "y1": pa.array(x1, mask=~found), "score": pa.array(np.full(n, 0.5, np.float32), mask=~found),
        "phrase": noun_text, "match": [None] * n,
    }, schema=BOXES_SCHEMA)
    masks = _masks_table(nouns.filter(pa.array(found)), x0[found].astype(int), x1[found].astype(int))
    out = {"captions": root / "captions.parquet", "nouns": root / "nouns.parquet", "boxes": root / "boxes.parquet",
           "masks": root / "masks.parquet"}
    for name, table in (("captions", captions), ("nouns", nouns), ("boxes", boxes), ("masks", masks)):
        write_table(table, out[name])
    return out


def _masks_table(nouns: pa.Table, x0: np.ndarray, x1: np.ndarray) -> pa.Table:
    """One square mask per noun, ``[x0, x1)`` on both axes of the 8 x 8 image, as compressed RLE."""
    rles, areas = {}, {}
    for a in range(SIDE):
        for b in range(a + 1, SIDE + 1):
            m = np.zeros((SIDE, SIDE), bool)
            m[a:b, a:b] = True
            rles[a, b], areas[a, b] = encode_rle(m), int(m.sum())
    keys = list(zip(x0.tolist(), x1.tolist()))
    n = nouns.num_rows
    return pa.table({
        "noun_id": nouns["noun_id"], "caption_id": nouns["caption_id"], "image_id": nouns["image_id"],
        "text": nouns["text"], "height": np.full(n, SIDE, np.int32), "width": np.full(n, SIDE, np.int32),
        "rle": [rles[k] for k in keys], "area": np.array([areas[k] for k in keys], np.int64),
        "n_boxes": np.ones(n, np.int32),
    }, schema=MASKS_SCHEMA)


def make_models(root: Path) -> dict[str, Path]:
    """An SD folder shaped like a hub snapshot, and Grounding DINO / BERT / SAM stand-in files."""
    from pipeline.models.clip_tokenizer import build_clip_tokenizer

    sd = root / "sd"
    build_clip_tokenizer(sd / "tokenizer", save_fast=False)
    (sd / "scheduler").mkdir(parents=True)
    (sd / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "epsilon"}')
    (sd / "model_index.json").write_text("{}")
    for part, stem, bin_name in (("unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
                                 ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
                                 ("text_encoder", "model", "pytorch_model.bin"),
                                 ("safety_checker", "model", "pytorch_model.bin")):
        (sd / part).mkdir()
        (sd / part / "config.json").write_text("{}")
        for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", bin_name):
            (sd / part / name).write_bytes(os.urandom(1 << 20))
    (sd / "sd-v1-4.ckpt").write_bytes(os.urandom(32 << 20))  # read by no loader
    gd = root / "groundingdino"
    (gd / "bert").mkdir(parents=True)
    (gd / "config.py").write_text("modelname = 'groundingdino'\n")
    (gd / "groundingdino.pth").write_bytes(os.urandom(8 << 20))
    (gd / "bert" / "config.json").write_text("{}")
    (gd / "bert" / "vocab.txt").write_text("[PAD]\n")
    for name in ("model.safetensors", "pytorch_model.bin", "tf_model.h5"):
        (gd / "bert" / name).write_bytes(os.urandom(1 << 20))
    sam = root / "sam_vit_b.pth"
    sam.write_bytes(os.urandom(8 << 20))
    return {"sd": sd, "gd_config": gd / "config.py", "gd_checkpoint": gd / "groundingdino.pth",
            "bert": gd / "bert", "sam": sam}


def _fresh_cache() -> digests.DigestCache:
    """The process's digest cache, reloaded from its file (what a new process would see)."""
    digests._DEFAULT.clear()
    return digests.default_cache()


def train_startup(tables: dict[str, Path], models: dict[str, Path], resolution: int = 512,
                  latent: tuple[int, ...] = (8, 16, 32, 64)) -> dict[str, float]:
    """Seconds of each start-up step of ``train`` (the paper profile's data settings)."""
    from pipeline.core.config import fingerprint
    from pipeline.models.clip_tokenizer import load_clip_tokenizer
    from pipeline.train.dataset import (
        MaskCoverage,
        TokenComposeDataset,
        build_examples,
        collate,
        training_inputs_digest,
    )

    tokenizer = load_clip_tokenizer(models["sd"], subfolder="tokenizer")
    cache = _fresh_cache()
    t = {"start": time.perf_counter()}
    inputs = training_inputs_digest(tables["captions"], tables["nouns"], tables["masks"], models["sd"])
    fingerprint({"resolution": resolution}, inputs)
    t["fingerprint"] = time.perf_counter()
    examples, _, summary = build_examples(tables["captions"], tables["nouns"], tables["masks"], tokenizer=tokenizer,
                                          coverage=MaskCoverage(resolution, latent, 1.0))
    t["build_examples"] = time.perf_counter()
    dataset = TokenComposeDataset(examples, tokenizer, resolution, latent)
    collate([dataset[i] for i in range(4)])
    t["first batch"] = time.perf_counter()
    log.info("train: %d examples, %d supervised nouns; %d files hashed", summary["examples"],
             summary["supervised_nouns"], cache.hashed)
    return {"hashed": cache.hashed, **_steps(t)}


def _steps(t: dict[str, float]) -> dict[str, float]:
    names = list(t)
    out = {name: t[name] - t[prev] for prev, name in zip(names, names[1:])}
    out["total"] = t[names[-1]] - t[names[0]]
    return out


def ground_startup(tables: dict[str, Path], models: dict[str, Path]) -> dict[str, float]:
    """Seconds from calling ``run_ground`` to its first model call (model loading stubbed)."""
    from pipeline.data import ground

    cfg = ground.GroundConfig(config=str(models["gd_config"]), checkpoint=str(models["gd_checkpoint"]),
                              text_encoder=str(models["bert"]), device="cpu", out_dir="out/ground")
    patches = (mock.patch.object(ground, "load_grounding_dino", lambda *a, **k: None),
               mock.patch.object(ground, "ground_images", mock.Mock(side_effect=FirstBatch)))
    return _until_first_batch(lambda: ground.run_ground(cfg, tables["captions"], tables["nouns"]), patches)


def segment_startup(tables: dict[str, Path], models: dict[str, Path]) -> dict[str, float]:
    """Seconds from calling ``run_segment`` to its first model call (model loading stubbed)."""
    from pipeline.data import segment

    cfg = segment.SegmentConfig(model_type="vit_b", checkpoint=str(models["sam"]), shard_size=16, device="cpu",
                                export_png=False, out_dir="out/segment")
    patches = (mock.patch.object(segment, "load_sam", lambda *a, **k: None),
               mock.patch.object(segment, "make_predictor", lambda *a, **k: None),
               mock.patch.object(segment, "segment_image", mock.Mock(side_effect=FirstBatch)))
    return _until_first_batch(lambda: segment.run_segment(cfg, tables["captions"], tables["boxes"]), patches)


def _until_first_batch(run, patches) -> dict[str, float]:
    cache = _fresh_cache()
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        t0 = time.perf_counter()
        try:
            run()
        except FirstBatch:
            return {"hashed": cache.hashed, "total": time.perf_counter() - t0}
    raise RuntimeError("the stage finished without calling its model")


def run(n_images: int = COCO_IMAGES, n_captions: int = COCO_CAPTIONS, keep: str | None = None) -> list[dict]:
    """All rows: cold and warm start-up of train, ground and segment on generated COCO-scale data."""
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-startup-"))
    old_cwd, old_env = Path.cwd(), os.environ.get(digests.CACHE_ENV)
    try:
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = make_images(root / "images", n_images)
        tables = make_tables(root, paths, n_captions)
        models = make_models(root / "models")
        made = time.perf_counter() - t0
        time.sleep(digests.RACY_SECONDS)  # the newest files must not be "racily clean"
        os.chdir(root)  # partial folders and the digest cache land in root/data
        os.environ[digests.CACHE_ENV] = str(root / "data" / ".cache" / "digests.json")
        return _measure(tables, models, n_images, n_captions, made)
    finally:
        os.chdir(old_cwd)
        digests._DEFAULT.clear()
        if old_env is None:
            os.environ.pop(digests.CACHE_ENV, None)
        else:
            os.environ[digests.CACHE_ENV] = old_env
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _measure(tables, models, n_images: int, n_captions: int, made: float) -> list[dict]:
    scale = f"{n_images:,} images, {n_captions:,} captions"
    rows = [row("startup", "make the data", made, "s", scale)]
    for stage, fn in (("train", train_startup), ("ground", ground_startup), ("segment", segment_startup)):
        cache_file = Path(os.environ[digests.CACHE_ENV])
        cache_file.unlink(missing_ok=True)
        for state in ("cold", "warm"):
            r = fn(tables, models)
            detail = ", ".join(f"{k} {v:.1f} s" for k, v in r.items() if k not in ("hashed", "total"))
            note = f"{r['hashed']:,} files hashed" + (f"; {detail}" if detail else "") + ("; target < 60 s" if state == "warm" else "")
            rows.append(row(f"startup: {stage}", f"{state} (until the first batch)", r["total"], "s", note))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=COCO_IMAGES)
    parser.add_argument("--captions", type=int, default=COCO_CAPTIONS)
    parser.add_argument("--keep", default=None, help="make the data in this folder and keep it")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    print(to_markdown(run(args.images, args.captions, args.keep)))


if __name__ == "__main__":
    main()
