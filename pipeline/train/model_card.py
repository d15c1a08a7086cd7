"""The model card (``README.md``) beside the trained UNet or LoRA, in diffusers' layout.

``<out_dir>/unet/`` after the ``train`` stage::

    README.md       YAML front matter (base_model, library_name: diffusers, license, tags: diffusers'
                    ``populate_model_card``) and: how to load it (``load_lora_weights`` /
                    ``from_pretrained``), base model, data (the dataset section and its counts),
                    the train section, the held-out attention share, evaluation metrics when
                    given, the pictures, and the flags (random weights) when there are any
    heatmap.png     the last attention heatmap of the run (dvclive's picture)
    samples.png     a few captions drawn with the trained weights (``samples.draw_samples``)

The card is written from the huggingface_hub ``ModelCard`` with this module's template, as
diffusers' ``load_or_create_model_card`` does for a new card, but without asking the hub for
an existing one (nothing here may reach a network).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline.train.config import TrainConfig, trained_settings

log = logging.getLogger(__name__)

TEMPLATE = """---
{{ card_data }}
---

{{ body }}
"""
COUNTS = ("captions", "examples", "rejected", "input_nouns", "supervised_nouns", "train_examples",
          "heldout_examples", "heldout_supervised_nouns")


def _is_xl(cfg: TrainConfig) -> bool:
    from pipeline.models.stable_diffusion import is_sdxl

    return is_sdxl(cfg.pretrained) or (cfg.expect is not None and cfg.expect.family == "sdxl")


def usage(cfg: TrainConfig, folder: str) -> str:
    """The lines that load the trained weights onto the base pipeline (SDXL's pipeline class for SDXL)."""
    cls = "StableDiffusionXLPipeline" if _is_xl(cfg) else "StableDiffusionPipeline"
    if cfg.adapter == "lora":
        return (f"```python\nfrom diffusers import {cls}\n\n"
                f'pipe = {cls}.from_pretrained("{cfg.pretrained}")\n'
                f'pipe.load_lora_weights("{folder}")  # pytorch_lora_weights.safetensors\n'
                'image = pipe("a photo of a cat and a dog").images[0]\n```')
    return (f"```python\nfrom diffusers import {cls}, UNet2DConditionModel\n\n"
            f'unet = UNet2DConditionModel.from_pretrained("{folder}")\n'
            f'pipe = {cls}.from_pretrained("{cfg.pretrained}", unet=unet)\n'
            'image = pipe("a photo of a cat and a dog").images[0]\n```')


def _table(rows: list[tuple[str, Any]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def _yaml(obj: Any) -> str:
    return "```yaml\n" + yaml.safe_dump(obj, sort_keys=False).rstrip() + "\n```"


def _attention(summary: dict[str, Any]) -> str:
    rows = [(k, summary.get(f"base_heldout_attention_{k}"), summary.get(f"final_heldout_attention_{k}"))
            for k in ("share", "iou")]
    if all(b is None and f is None for _, b, f in rows):
        return "Not measured (no held-out image with a supervised noun; `train.holdout_images`)."
    return ("Share of each noun token's cross-attention inside its mask, on "
            f"{summary.get('heldout_examples')} held-out images ({summary.get('heldout_supervised_nouns')} nouns) "
            "the run never trained on:\n\n" + _table(rows, ("", "base model", "trained")))


def _evaluation(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ("Not evaluated yet: `dvc repro evaluate@<model>` writes `data/evaluate/<model>/metrics.json` "
                "(MultiGen MG2-5, Object Accuracy, FID, attention share).")
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("flagged",)}
    flat.update({f"{k}.{kk}": vv for k, v in metrics.items() if isinstance(v, dict)
                 and (k.startswith("multigen") or k == "attention") for kk, vv in v.items()
                 if isinstance(vv, (int, float)) and not isinstance(vv, bool)})
    return _table(sorted(flat.items()), ("metric", "value"))


def card_body(cfg: TrainConfig, summary: dict[str, Any], dataset: dict[str, Any] | None, folder: str,
              pictures: list[str], metrics: dict[str, Any] | None = None) -> str:
    """The card's markdown below the front matter."""
    what = f"LoRA (rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g})" if cfg.adapter == "lora" else "fine-tuned UNet"
    flags = summary.get("flags") or []
    parts = [f"# TokenCompose {what} of `{cfg.pretrained}`"]
    if flags:
        parts.append("> **Flags** (read the numbers below with them)\n>\n" + "\n".join(f"> - {f}" for f in flags))
    parts += [
        "Trained with TokenCompose's grounding objective (CVPR 2024, arXiv 2312.03626), "
        "`L = L_LDM + lambda * L_token + gamma * L_pixel`, by this project's `train` stage: each noun token's "
        "cross-attention is supervised with the noun's mask in the training image.",
        "## How to use\n\n" + usage(cfg, folder),
        f"## Base model\n\n`{cfg.pretrained}`" + (f" (revision {cfg.revision})" if cfg.revision else ""),
        "## Data\n\n" + (_yaml({"dataset": dataset}) + "\n\n" if dataset else "") + f"Masks: `{cfg.masks}`.\n\n"
        + _table([(k, summary.get(k)) for k in COUNTS], ("count", "value")),
        f"## Training\n\nRun `{summary.get('run')}`: {summary.get('steps')} optimizer steps of "
        f"{summary.get('global_batch')} examples on {summary.get('processes')} process(es).\n\n"
        + _yaml({"train": trained_settings(cfg)}),
        "## Held-out attention share\n\n" + _attention(summary),
        "## Evaluation\n\n" + _evaluation(metrics),
    ]
    if pictures:
        parts.append("## Pictures\n\n" + "\n\n".join(f"![{Path(p).stem}]({p})" for p in pictures))
    return "\n\n".join(parts) + "\n"


def write_model_card(folder: str | Path, cfg: TrainConfig, summary: dict[str, Any],
                     dataset: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """``folder/README.md``: the card of the weights in ``folder`` (pictures already there are shown)."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    pictures = [p for p in ("heatmap.png", "samples.png") if (folder / p).is_file()]
    xl = _is_xl(cfg)
    tags = ["stable-diffusion-xl" if xl else "stable-diffusion", "text-to-image", "diffusers-training", "tokencompose"]
    tags += ["lora"] if cfg.adapter == "lora" else []
    # the base models' licences: SD1.x/2.x CreativeML OpenRAIL-M, SDXL base 1.0 CreativeML OpenRAIL++-M
    data = ModelCardData(base_model=cfg.pretrained, license="openrail++" if xl else "creativeml-openrail-m",
                         inference=True)
    card = ModelCard.from_template(data, template_str=TEMPLATE,
                                   body=card_body(cfg, summary, dataset, str(folder), pictures, metrics))
    card = populate_model_card(card, tags=tags)
    card.save(folder / "README.md")
    log.info("model card %s", folder / "README.md")
    return folder / "README.md"


def read_metrics(path: str | Path) -> dict[str, Any] | None:
    """An evaluate stage's ``metrics.json``, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


#: samples: a glance at the weights, not a benchmark (evaluate draws those); SD1.x/2.x 7.5, SDXL its pipeline's 5.0
SAMPLE_GUIDANCE = {False: 7.5, True: 5.0}


def copy_heatmap(out_dir: str | Path, folder: str | Path) -> Path | None:
    """The run's newest attention heatmap (dvclive's picture) as ``folder/heatmap.png``."""
    import shutil

    pictures = sorted((Path(out_dir) / "dvclive/plots/images/attention").glob("step-*.png"))
    if not pictures:
        return None
    return Path(shutil.copyfile(pictures[-1], Path(folder) / "heatmap.png"))


def draw_samples(cfg: TrainConfig, folder: str | Path, captions: list[str]) -> Path | None:
    """``folder/samples.png``: ``captions`` drawn with the trained weights loaded as a user would
    (``load_sd_pipeline``: the base pipeline + the UNet folder or ``load_lora_weights``)."""
    import torch

    from pipeline.core.devices import resolve_device
    from pipeline.models.stable_diffusion import load_sd_pipeline

    if not captions or cfg.card_samples == 0:
        return None
    device = resolve_device(cfg.device)
    dtype = "fp32" if device == "cpu" else cfg.mixed_precision
    pipe = load_sd_pipeline(cfg.pretrained, str(folder), device, dtype)
    guidance = SAMPLE_GUIDANCE[_is_xl(cfg)]
    images = [pipe(c, num_inference_steps=cfg.card_sample_steps, guidance_scale=guidance, height=cfg.resolution,
                   width=cfg.resolution, generator=torch.Generator("cpu").manual_seed(cfg.seed + i)).images[0]
              for i, c in enumerate(captions)]
    path = Path(folder) / "samples.png"
    _strip(images, [f"seed {cfg.seed + i}: {c}" for i, c in enumerate(captions)]).save(path)
    return path


def _strip(images: list, titles: list[str], cell: int = 192):
    """The images side by side at ``cell`` px, each over its wrapped title."""
    import textwrap

    from PIL import Image, ImageDraw

    lines = [textwrap.wrap(t, cell // 7)[:4] for t in titles]
    text_h = 13 * max(len(ls) for ls in lines) + 4
    strip = Image.new("RGB", (cell * len(images), cell + text_h), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (image, ls) in enumerate(zip(images, lines)):
        draw.multiline_text((i * cell + 2, 2), "\n".join(ls), fill=(0, 0, 0), spacing=2)
        strip.paste(image.convert("RGB").resize((cell, cell)), (i * cell, text_h))
    return strip


def write_card_with_pictures(cfg: TrainConfig, summary: dict[str, Any], dataset: dict[str, Any] | None,
                             captions: list[str]) -> Path:
    """Heatmap, samples (a failure is logged and the card goes without them) and the card in ``<out_dir>/unet``."""
    folder = Path(cfg.out_dir) / "unet"
    for what, make in (("heatmap", lambda: copy_heatmap(cfg.out_dir, folder)),
                       ("samples", lambda: draw_samples(cfg, folder, captions[:cfg.card_samples]))):
        try:
            make()
        except Exception:  # pictures must never cost the trained weights their card
            log.exception("model card: drawing the %s failed; the card goes without them", what)
    return write_model_card(folder, cfg, summary, dataset)


def card_with_metrics(card: str, metrics: dict[str, Any], pictures_from: str | Path, to: str | Path) -> str:
    """A trained weights' card with its Evaluation section filled from an evaluate ``metrics.json``,
    its picture links rewritten to point from the folder ``to`` at the folder ``pictures_from``."""
    import os
    import re

    head, sep, rest = card.partition("## Evaluation\n\n")
    if not sep:
        raise ValueError("not a model card written by the train stage: it has no '## Evaluation' section")
    tail = rest[rest.index("\n## "):] if "\n## " in rest else "\n"
    rel = os.path.relpath(Path(pictures_from), Path(to))
    tail = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", lambda m: f"![{m.group(1)}]({rel}/{m.group(2)})", tail)
    return head + sep + _evaluation(metrics) + "\n" + tail
