"""The ``evaluate`` params section: one typed config with a sub-section per measurement."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.config import ConfigError
from pipeline.evaluate.generation import GenerationConfig
from pipeline.models.stable_diffusion import SDExpectation


@dataclass(frozen=True)
class MultiGenConfig:
    """MultiGen: k named categories per prompt, how many of them the detector finds (MG2..MG5).

    ``prompts``: an official-format prompt file (``coco_obj_comp_5_1k.json``); null draws
    ``num_prompts`` prompts of ``objects_per_prompt`` categories from ``categories`` with the
    official template. With a file, ``categories`` (if given) is the detector vocabulary:
    prompts naming anything outside it are rejected (recorded), and ``num_prompts`` takes the
    first n prompts (null: all). Detections above ``keep_threshold`` are stored; the score
    counts those above ``threshold`` (official: 0.01 stored, 0.1 scored).
    """

    enabled: bool = True
    prompts: str | None = None
    categories: list[str] | None = None
    num_prompts: int | None = None
    objects_per_prompt: int = 5
    images_per_prompt: int = 10
    detector: str = "google/owlv2-large-patch14-ensemble"
    detector_kind: Literal["owlv2", "owlvit"] = "owlv2"
    fast_processor: bool = False  # torchvision image processor instead of the official (slow) one
    threshold: float = 0.1
    keep_threshold: float = 0.01
    detect_batch_size: int = 8
    heatmap_prompts: int = 3

    def validate(self) -> None:
        if self.prompts is None and not self.categories:
            raise ConfigError("evaluate.multigen: give a prompt file (prompts) or a category list (categories)")
        if self.prompts is None and self.num_prompts is None:
            raise ConfigError("evaluate.multigen: generated prompts need num_prompts")
        _check_detection(self, "evaluate.multigen")


@dataclass(frozen=True)
class ObjectAccuracyConfig:
    """VISOR's Object Accuracy: two-object spatial prompts; both objects detected above ``threshold``."""

    enabled: bool = True
    categories: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=lambda: ["to the left of", "to the right of", "above", "below"])
    num_prompts: int | None = None
    images_per_prompt: int = 1
    detector: str = "google/owlvit-base-patch32"
    detector_kind: Literal["owlv2", "owlvit"] = "owlvit"
    fast_processor: bool = False
    threshold: float = 0.1
    keep_threshold: float = 0.01
    detect_batch_size: int = 8

    def validate(self) -> None:
        if self.enabled and len(set(self.categories)) < 2:
            raise ConfigError("evaluate.object_accuracy: needs at least 2 categories")
        _check_detection(self, "evaluate.object_accuracy")


@dataclass(frozen=True)
class FidConfig:
    """FID of images drawn from COCO captions against those captions' real images.

    ``num_images`` real images (each once), ``captions_per_image`` distinct captions of each,
    one generated image per caption: ``num_images * captions_per_image`` generated images.
    """

    enabled: bool = True
    captions: str = "data/coco/annotations/captions_val2017.json"
    images_dir: str = "data/coco/val2017"
    num_images: int = 5000
    captions_per_image: int = 1
    features: str = "inception"  # inception (2048-d pool3) | a local CLIP vision model folder
    batch_size: int = 32

    def validate(self) -> None:
        if self.enabled and (self.num_images < 2 or self.batch_size < 1 or self.captions_per_image < 1):
            raise ConfigError("evaluate.fid: num_images must be >= 2, captions_per_image and batch_size >= 1")


@dataclass(frozen=True)
class AttentionEvalConfig:
    """Attention grounding on held-out captioned images: share inside the mask and IoU, per group.

    ``holdout_images`` and ``seed`` pick the held-out images exactly as ``train`` does, so with
    the same values as ``train.holdout_images`` / ``train.seed`` they are images it never saw.
    """

    enabled: bool = True
    captions: str = "data/captions/captions.parquet"
    nouns: str = "data/nouns/nouns.parquet"
    masks: str = "data/reference_masks/masks"
    holdout_images: int = 8
    seed: int = 0
    resolution: int = 512
    blocks: list[str] = field(default_factory=lambda: ["mid", "up"])
    timesteps: list[int] = field(default_factory=lambda: [200, 500, 800])
    iou_threshold: float = 0.5
    max_mask_coverage: float = 0.9   # as train.max_mask_coverage: such masks are not scored

    def validate(self) -> None:
        if self.enabled and self.holdout_images < 1:
            raise ConfigError("evaluate.attention: holdout_images must be >= 1")
        if not 0.0 < self.max_mask_coverage <= 1.0:
            raise ConfigError("evaluate.attention: max_mask_coverage must be in (0, 1]")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ConfigError("evaluate.attention: iou_threshold must be in (0, 1]")


@dataclass(frozen=True)
class PromptSet:
    """One MultiGen prompt set as the stage runs it: benchmark name, output folder, metrics key."""

    bench: str        # "multigen" (one set) or "multigen_<name>": image cache, seeds' prompt ids, --only keys
    out: str          # under data/evaluate/<model>/: "multigen" or "multigen/<name>"
    cfg: MultiGenConfig


@dataclass(frozen=True)
class EvaluateConfig:
    """``models``: name -> UNet folder or LoRA (``pytorch_lora_weights.safetensors`` or its folder, loaded onto
    ``pretrained``'s UNet); every model shares ``pretrained``'s VAE, text encoder and scheduler.

    ``multigen``: one prompt set (metrics key ``multigen``), or a mapping name -> set (the paper
    profiles: ``coco`` and ``ade20k``; metrics keys ``multigen_coco``, ``multigen_ade20k``,
    outputs under ``multigen/<name>/``). ``fid_flickr30k``: FID against Flickr30K images the user
    supplies; without them it is skipped and the reason recorded in ``metrics.json``.
    """

    pretrained: str
    models: dict[str, str]
    generation: GenerationConfig
    multigen: MultiGenConfig | dict[str, MultiGenConfig]
    object_accuracy: ObjectAccuracyConfig
    fid: FidConfig
    attention: AttentionEvalConfig
    fid_flickr30k: FidConfig | None = None
    expect: SDExpectation | None = None   # the architecture of pretrained and of every UNet (checked first)
    seed: int = 0
    grid_images: int = 16
    device: str = "auto"
    out_dir: str = "data/evaluate"

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("evaluate.models: name at least one model")
        bad = [m for m in self.models if not m.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ConfigError(f"evaluate.models: names must be letters, digits, - and _: {bad}")
        if isinstance(self.multigen, dict):
            if not self.multigen:
                raise ConfigError("evaluate.multigen: name at least one prompt set")
            bad = [m for m in self.multigen if not m.replace("_", "").isalnum()]
            if bad:
                raise ConfigError(f"evaluate.multigen: set names must be letters, digits and _: {bad}")

    def prompt_sets(self) -> list[PromptSet]:
        """The enabled MultiGen prompt sets, in params order."""
        if isinstance(self.multigen, MultiGenConfig):
            return [PromptSet("multigen", "multigen", self.multigen)] if self.multigen.enabled else []
        return [PromptSet(f"multigen_{name}", f"multigen/{name}", cfg) for name, cfg in self.multigen.items()
                if cfg.enabled]

    def model_unet(self, name: str) -> str:
        if name not in self.models:
            raise ConfigError(f"evaluate: unknown model {name!r}; evaluate.models has {sorted(self.models)}")
        return self.models[name]

    def model_paths(self, name: str) -> list[str | None]:
        """Every model file or folder evaluating ``name`` loads (hub ids as given).

        FID's ``inception`` weights come from torch's cache: ``$TORCH_HOME`` (None when unset).
        """
        paths = [self.pretrained, self.model_unet(name)]
        paths += [ps.cfg.detector for ps in self.prompt_sets()]
        if self.object_accuracy.enabled:
            paths.append(self.object_accuracy.detector)
        paths += [os.environ.get("TORCH_HOME") if fc.features == "inception" else fc.features
                  for fc in (self.fid, self.fid_flickr30k) if fc is not None and fc.enabled]
        return paths


def _check_detection(cfg, where: str) -> None:
    if not 0.0 <= cfg.keep_threshold <= cfg.threshold < 1.0:
        raise ConfigError(f"{where}: need 0 <= keep_threshold <= threshold < 1")
    if cfg.images_per_prompt < 1 or cfg.detect_batch_size < 1:
        raise ConfigError(f"{where}: images_per_prompt and detect_batch_size must be >= 1")
