"""The ``evaluate`` stage for one model: MultiGen, Object Accuracy, FID and attention grounding.

``data/evaluate/<model>/`` after ``run_evaluate``::

    metrics.json                      MG2..MG5 (+ _std), object accuracy, FID, attention share / IoU
    rejects.parquet                   prompts and images left out, with their reasons
    multigen/manifest.parquet         one row per image: key, prompt id, image index, seed, text, categories
    multigen/images/<pid>_<j>.png
    multigen/detections/part-*.parquet   every stored box: label, score, pixel box
    object_accuracy/...               the same for VISOR's two-object prompts
    fid/manifest.parquet, fid/images/ images drawn from COCO captions
    figures/samples.png               a grid of MultiGen samples with their prompts
    figures/heatmaps.png              per-token cross-attention of a few MultiGen prompts
    figures/model_card.md             the trained weights' model card with these metrics (when it has one)
    category_recall.csv               per category: percent of its prompts' images where it is found

Every image's seed is ``multigen.image_seed(evaluate.seed, prompt id, image index[, benchmark])``,
so every model draws from the same noise and any one image can be drawn again alone
(``python -m stages.evaluate --model NAME --only multigen:17_3``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pyarrow as pa

from pipeline.core.config import ConfigError, fingerprint
from pipeline.core.devices import resolve_device
from pipeline.core.provenance import random_weights_flags
from pipeline.core.schemas import MANIFEST_SCHEMA, REJECTS_SCHEMA
from pipeline.core.shards import World, file_digest, partial_dir
from pipeline.core.tables import rejects_table, write_csv, write_json, write_table
from pipeline.evaluate.config import EvaluateConfig, FidConfig
from pipeline.evaluate.generation import (
    GenItem,
    GenReport,
    draw,
    generate_images,
    save_png,
)
from pipeline.evaluate.multigen import (
    image_seed,
    make_prompts,
    read_prompts,
    visor_prompts,
)
from pipeline.evaluate.prompt_benchmarks import (
    PromptBenchmark,
    check_vocabulary,
    publish_images,
    run_prompt_benchmark,
)
from pipeline.models.lora import entry_kind
from pipeline.models.stable_diffusion import check_sd_architecture, load_sd_pipeline

log = logging.getLogger(__name__)


def model_digest(pretrained: str, unet: str) -> str:
    """Hash of the weights a model generates with: the pretrained folder (or hub id) but its UNet, and ``unet``
    (a LoRA: the pretrained UNet too, which it adapts)."""
    folder = Path(pretrained)
    lora = entry_kind(unet) == "lora"
    parts = sorted(p for p in folder.iterdir() if lora or p.name != "unet") if folder.is_dir() else []
    base = fingerprint([p.name for p in parts], file_digest(*parts)) if parts else pretrained
    return fingerprint(base, file_digest(unet))


def benchmarks(cfg: EvaluateConfig) -> tuple[list[PromptBenchmark], list[tuple[str, str, str]]]:
    """The enabled prompt benchmarks and the prompts rejected while building them."""
    out, rejects = [], []
    for ps in cfg.prompt_sets():
        mg = ps.cfg
        if mg.prompts is not None:
            prompts = read_prompts(mg.prompts)
            if mg.num_prompts is not None and mg.num_prompts > len(prompts):
                raise ConfigError(f"evaluate.multigen.num_prompts = {mg.num_prompts} but {mg.prompts} holds "
                                  f"{len(prompts)} prompts")
            prompts = prompts if mg.num_prompts is None else prompts[: mg.num_prompts]
        else:
            prompts = make_prompts(list(mg.categories or []), mg.num_prompts or 0, cfg.seed, mg.objects_per_prompt)
        prompts, bad = check_vocabulary(prompts, mg.categories, ps.bench)
        rejects += bad
        out.append(PromptBenchmark(ps.bench, prompts, mg.images_per_prompt, "", mg.detector, mg.detector_kind,
                                   mg.fast_processor, mg.threshold, mg.keep_threshold, mg.detect_batch_size))
    oa = cfg.object_accuracy
    if oa.enabled:
        prompts = visor_prompts(list(oa.categories), oa.num_prompts, cfg.seed, oa.relations)
        out.append(PromptBenchmark("object_accuracy", prompts, oa.images_per_prompt, "visor", oa.detector,
                                   oa.detector_kind, oa.fast_processor, oa.threshold, oa.keep_threshold,
                                   oa.detect_batch_size))
    return out, rejects


def fid_items(cfg: EvaluateConfig, fc: FidConfig | None = None, name: str = "fid"):
    """(pairs, items): the captions FID ``fc`` (default ``cfg.fid``) draws from and their generation
    items (seed namespace ``name``: "fid" for COCO, "fid_flickr30k")."""
    from pipeline.evaluate.fid import select_fid_pairs

    fc = fc or cfg.fid
    pairs = select_fid_pairs(fc.captions, fc.images_dir, fc.num_images, cfg.seed, fc.captions_per_image)
    items = [GenItem(f"{p.image_id}_{p.caption_id}", p.caption, image_seed(cfg.seed, p.caption_id, 0, name))
             for p in pairs]
    return pairs, items


def flickr30k_skip_reason(fc: FidConfig | None) -> str | None:
    """Why FID on Flickr30K is skipped (not configured, off, or its files not supplied); None: it runs."""
    if fc is None or not fc.enabled:
        return "evaluate.fid_flickr30k is not enabled"
    missing = [p for p in (fc.captions, fc.images_dir) if not Path(p).exists()]
    if missing:
        return (f"Flickr30K not supplied: {', '.join(missing)} not found (a COCO-format captions json and "
                "its image folder; see the README)")
    return None


def run_fid(cfg: EvaluateConfig, pipe, model: str, digest: str, device: str, out: Path, world: World,
            selected=None, fc: FidConfig | None = None, name: str = "fid") -> dict | None:
    """Draw one image per selected caption; FID against the selected real images, each counted once.

    ``selected``: ``fid_items(cfg, fc, name)``, when already computed (at the stage's start).
    """
    from PIL import Image

    from pipeline.evaluate.fid import FidMetric, reference_image

    fc = fc or cfg.fid
    pairs, items = selected if selected is not None else fid_items(cfg, fc, name)
    fp = fingerprint(digest, cfg.generation, [(i.key, i.text, i.seed) for i in items])
    images = partial_dir(f"evaluate-{model}-{name}-images", fp, world)
    report = generate_images(pipe, items, images, cfg.generation, world, desc=f"{model} {name}")
    if not world.is_main:
        return None
    metric = FidMetric(fc.features, device=device)
    size = cfg.generation.resolution
    real = list(dict.fromkeys(p.path for p in pairs))  # each real image once, however many captions
    for start in range(0, len(real), fc.batch_size):
        metric.update([reference_image(path, size) for path in real[start:start + fc.batch_size]], real=True)
    for start in range(0, len(items), fc.batch_size):
        batch = range(start, min(start + fc.batch_size, len(items)))
        metric.update([Image.open(images / f"{items[i].key}.png").convert("RGB") for i in batch], real=False)
    value = metric.compute()
    publish_images(images, [i.key for i in items], out / "images")
    rows = [{"key": i.key, "prompt_id": p.caption_id, "image_index": 0, "seed": i.seed, "text": i.text,
             "categories": []} for p, i in zip(pairs, items)]
    write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / "manifest.parquet")
    return {"fid": value, "images": len(items), "real_images": len(real), "features": fc.features, "report": report}


def run_attention(cfg: EvaluateConfig, pipe) -> dict:
    """Attention share inside the mask and IoU of the thresholded map, on the held-out images."""
    from diffusers import DDPMScheduler

    from pipeline.models.conditioning import TextConditioner
    from pipeline.models.stable_diffusion import encoding_vae, vae_scale_factor
    from pipeline.train.attention import layer_resolutions
    from pipeline.train.attention_metrics import evaluate_grounding
    from pipeline.train.dataset import MaskCoverage, TokenComposeDataset, build_examples
    from pipeline.train.holdout import split_holdout

    a = cfg.attention
    latent = a.resolution // vae_scale_factor(pipe.vae)
    resolutions = sorted(set(layer_resolutions(pipe.unet, latent, a.blocks).values()))
    coverage = MaskCoverage(a.resolution, tuple(resolutions), a.max_mask_coverage)
    examples, _, data = build_examples(a.captions, a.nouns, a.masks, tokenizer=pipe.tokenizer, coverage=coverage)
    _, heldout = split_holdout(examples, a.holdout_images, a.seed, name="evaluate.attention.holdout_images",
                               keep_training=False)
    dataset = TokenComposeDataset(heldout, pipe.tokenizer, a.resolution, resolutions,
                                  tokenizer_2=getattr(pipe, "tokenizer_2", None))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    result = evaluate_grounding(pipe.unet, encoding_vae(pipe), TextConditioner.of(pipe), dataset, list(range(len(dataset))),
                                blocks=tuple(a.blocks), timesteps=tuple(a.timesteps), seed=a.seed,
                                scheduler=scheduler, iou_threshold=a.iou_threshold)
    result["heldout_captions"] = len(heldout)
    result["full_image_masks"] = data["full_image_masks"]  # not scored: they would score ~1 for any model
    if not result["pairs"]:
        log.warning("attention grounding: no held-out noun with a usable mask; share and IoU are not measured")
    return result


def write_figures(cfg: EvaluateConfig, pipe, bench: PromptBenchmark, images_dir: Path, out: Path,
                  heatmap_prompts: int) -> None:
    """A grid of MultiGen samples and per-token heatmaps of the first prompts."""
    from PIL import Image

    from pipeline.data.overlays import sample_grid
    from pipeline.evaluate.prompt_heatmaps import (
        generation_attention,
        render_grid,
        render_prompt_heatmaps,
        token_labels,
    )

    items = bench.items(cfg.seed)[: cfg.grid_images]
    tiles = [Image.open(images_dir / f"{it.key}.png").convert("RGB") for it in items]
    sample_grid(tiles, [f"{it.key}: {it.text}" for it in items]).save(out / "samples.png")
    rows = []
    for p in bench.prompts[:heatmap_prompts]:
        g = cfg.generation
        image, maps = generation_attention(pipe, p.text, image_seed(cfg.seed, p.prompt_id, 0), g.steps,
                                           g.guidance_scale, g.resolution, tuple(cfg.attention.blocks))
        words = {w for c in p.categories for w in c.lower().split()}  # the named categories' tokens only
        labels = [(i, w) for i, w in token_labels(pipe.tokenizer, p.text) if w.strip(" ,.").lower() in words]
        rows.append((p.text, render_prompt_heatmaps(image, maps, labels)))
    if rows:
        render_grid(rows).save(out / "heatmaps.png")


def regenerate(cfg: EvaluateConfig, model: str, key: str, path: str | Path) -> Path:
    """Draw one image alone (``key`` = ``"<benchmark>:<item key>"``) into ``path``."""
    bench_name, _, item_key = key.partition(":")
    device = resolve_device(cfg.device)
    if bench_name == "fid":
        items = fid_items(cfg)[1]
    elif bench_name == "fid_flickr30k" and cfg.fid_flickr30k is not None:
        items = fid_items(cfg, cfg.fid_flickr30k, bench_name)[1]
    else:
        found = {b.name: b for b in benchmarks(cfg)[0]}
        if bench_name not in found:
            raise ValueError(f"unknown benchmark {bench_name!r}; choose from {sorted(found) + ['fid']}")
        items = found[bench_name].items(cfg.seed)
    match = [it for it in items if it.key == item_key]
    if not match:
        raise KeyError(f"{key}: no such image in the {bench_name} benchmark")
    pipe = load_sd_pipeline(cfg.pretrained, cfg.model_unet(model), device, cfg.generation.dtype, cfg.generation.scheduler,
                            cfg.expect)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(draw(pipe, match, cfg.generation)[0], path)
    return path


def write_evaluated_card(entry: str, metrics: dict, figures: Path) -> Path | None:
    """``figures/model_card.md``: the trained weights' model card (``<entry>/README.md``, written by the
    train stage) with this evaluation's metrics; None when the entry has no such card."""
    from pipeline.train.model_card import card_with_metrics

    folder = Path(entry) if Path(entry).is_dir() else Path(entry).parent
    card = folder / "README.md"
    if not card.is_file() or "## Evaluation" not in card.read_text():
        return None
    path = figures / "model_card.md"
    path.write_text(card_with_metrics(card.read_text(), metrics, folder, figures))
    return path


def run_evaluate(cfg: EvaluateConfig, model: str) -> dict | None:
    """Evaluate ``model`` (a key of ``cfg.models``); returns the metrics on the main process."""
    unet = cfg.model_unet(model)
    world = World.from_accelerate(resolve_device(cfg.device))
    device = world.device
    t0 = time.perf_counter()
    # every model file, input and count is checked before anything is generated
    check_sd_architecture(cfg.pretrained, cfg.expect, (unet,))
    flags = random_weights_flags(cfg.model_paths(model))
    for flag in flags:  # said before the work, recorded in metrics.json after it
        log.warning("evaluate %s: %s", model, flag)
    benches, rejects = benchmarks(cfg)
    sets = {ps.bench: ps for ps in cfg.prompt_sets()}
    fid_selected = fid_items(cfg) if cfg.fid.enabled else None
    skipped: dict[str, str] = {}
    flickr_reason = flickr30k_skip_reason(cfg.fid_flickr30k)
    flickr_selected = None
    if flickr_reason is None:
        flickr_selected = fid_items(cfg, cfg.fid_flickr30k, "fid_flickr30k")
    elif cfg.fid_flickr30k is not None:
        skipped["fid_flickr30k"] = flickr_reason
        log.warning("FID on Flickr30K skipped: %s", flickr_reason)
    pipe = load_sd_pipeline(cfg.pretrained, unet, device, cfg.generation.dtype, cfg.generation.scheduler, cfg.expect)
    digest = model_digest(cfg.pretrained, unet)
    out = Path(cfg.out_dir) / model
    metrics: dict = {}
    reject_tables = [rejects_table("evaluate", rejects)]
    counts: dict = {"rejected_prompts": len(rejects)}
    timing = GenReport()
    for bench in benches:
        ps = sets.get(bench.name)
        result = run_prompt_benchmark(bench, pipe, model, digest, cfg.generation, cfg.seed, device,
                                      out / (ps.out if ps else bench.name), world)
        if result is None:
            continue
        s = result["scores"]
        timing = timing.merge(result["report"])
        reject_tables.append(result["rejects"])
        counts[f"{bench.name}_prompts"] = len(bench.prompts)
        counts[f"{bench.name}_images"] = len(bench.prompts) * bench.images_per_prompt
        counts[f"{bench.name}_unreadable_images"] = result["rejects"].num_rows
        counts[f"{bench.name}_unscored_prompts"] = result["unscored_prompts"]  # a prompt with an unreadable image
        if result["report"].unreadable:
            log.warning("%s: drew %d unreadable image(s) again: %s", bench.name, len(result["report"].unreadable),
                        result["report"].unreadable[:10])
        if ps is not None:
            metrics[bench.name] = {k: v for k, v in s.items() if k.startswith("MG")}
            header = ["category", "images", "found", "recall"]
            if bench.name == benches[0].name:  # the DVC plot: the first prompt set's
                write_csv(result["recall"], header, out / "category_recall.csv")
            if ps.out != "multigen":
                write_csv(result["recall"], header, out / ps.out / "category_recall.csv")
        else:
            metrics["object_accuracy"] = s.get("MG2", math.nan)
    for name, fc, selected, enabled in (("fid", cfg.fid, fid_selected, cfg.fid.enabled),
                                        ("fid_flickr30k", cfg.fid_flickr30k, flickr_selected, flickr_selected is not None)):
        if not enabled:
            continue
        where = out / "fid" if name == "fid" else out / "fid" / "flickr30k"
        fid = run_fid(cfg, pipe, model, digest, device, where, world, selected, fc, name)
        if fid is not None:
            metrics[name] = fid["fid"]
            timing = timing.merge(fid["report"])
            counts[f"{name}_images"] = fid["images"]
            counts[f"{name}_real_images"] = fid["real_images"]
    if not world.is_main:
        return None
    # latency: seconds per image of the pipeline calls of this run (at generation.batch_size)
    metrics["latency_s_per_image"] = timing.seconds_per_image
    counts["latency_images"] = timing.drawn
    if timing.seconds_per_image is None:
        skipped["latency_s_per_image"] = "no image was drawn in this run (all came from the cache)"
    if cfg.attention.enabled:
        metrics["attention"] = run_attention(cfg, pipe)
    for name in ("multigen", "object_accuracy", "fid", "figures"):  # DVC outputs, also when a part is off
        (out / name).mkdir(parents=True, exist_ok=True)
    mg = [b for b in benches if b.name in sets]
    if mg:
        ps = sets[mg[0].name]
        write_figures(cfg, pipe, mg[0], out / ps.out / "images", out / "figures", ps.cfg.heatmap_prompts)
    write_table(pa.concat_tables(reject_tables).cast(REJECTS_SCHEMA), out / "rejects.parquet")
    write_evaluated_card(unet, metrics, out / "figures")
    metrics["counts"] = counts
    metrics["flags"] = flags
    metrics["flagged"] = len(flags)  # a number, so `dvc metrics show` / `dvc exp show` list it
    if skipped:
        metrics["skipped"] = skipped
    write_json(metrics, out / "metrics.json")
    log.info("evaluate %s: %s (%.1f s)", model, metrics, time.perf_counter() - t0)
    return metrics
