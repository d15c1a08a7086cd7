"""Stable Diffusion: loading the real weights (hub id or folder) and the tiny random twin.

``load_sd_components`` (training: UNet, VAE, text encoder(s), tokenizer(s), noise scheduler) and
``load_sd_pipeline`` (generation: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` with a UNet
swapped in or a LoRA loaded) take ``CompVis/stable-diffusion-v1-4``, ``stabilityai/stable-diffusion-2-1``,
``stabilityai/stable-diffusion-xl-base-1.0`` or a local folder. An SDXL folder (``sdxl_marks``) brings its
second tokenizer and text encoder (``CLIPTextModelWithProjection``: the pooled embedding).

The tiny twin: ``build_tiny_sd(out_dir, seed)`` writes what ``CompVis/stable-diffusion-v1-4`` holds on the hub::

    model_index.json
    tokenizer/      SD's real CLIP tokenizer (49,408 ids), built offline
    text_encoder/   CLIPTextModel, hidden 32, 2 layers            (config.json + model.safetensors)
    vae/            AutoencoderKL, 3 levels -> downsampling 4, 4 latent channels
    unet/           UNet2DConditionModel, 3 levels, cross-attention dim 32
    scheduler/      DDPMScheduler with SD's betas (1000 steps, scaled_linear 0.00085-0.012)

so ``StableDiffusionPipeline.from_pretrained(out_dir, safety_checker=None)`` and
``load_sd_components(out_dir)`` load it through the same calls as the real weights.

UNet layout for the default 64 px images (latent 16 x 16)::

    down_blocks.0  CrossAttnDownBlock2D  16 x 16   (not supervised)
    down_blocks.1  CrossAttnDownBlock2D   8 x 8    (not supervised)
    down_blocks.2  DownBlock2D            4 x 4    (no attention)
    mid_block      UNetMidBlock2DCrossAttn 4 x 4   1 cross-attention layer
    up_blocks.0    UpBlock2D              4 x 4    (no attention)
    up_blocks.1    CrossAttnUpBlock2D     8 x 8    2 cross-attention layers
    up_blocks.2    CrossAttnUpBlock2D    16 x 16   2 cross-attention layers

``pipeline.train.attention.layer_resolutions`` gives the same table for any UNet (SD 1.4 at 512 px: mid 8,
up 16/32/64, 1 + 3 + 3 + 3 = 10 layers).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pipeline.core.tables import write_json
from pipeline.models.lora import LORA_WEIGHTS, check_lora_base, entry_kind, lora_file
from pipeline.models.clip_tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_MAX_LENGTH,
    VOCAB_SIZE,
    build_clip_tokenizer,
    load_clip_tokenizer,
)

log = logging.getLogger(__name__)

PredictionType = Literal["epsilon", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
SD_SCALING_FACTOR = 0.18215


@dataclass(frozen=True)
class TinySDConfig:
    """Architecture numbers of the tiny model; the defaults are the demo's."""

    resolution: int = 64
    prediction_type: PredictionType = "epsilon"
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate_size: int = 64
    vae_block_out_channels: tuple[int, ...] = (16, 32, 32)
    vae_norm_num_groups: int = 8
    latent_channels: int = 4
    unet_block_out_channels: tuple[int, ...] = (32, 64, 64)
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8
    unet_norm_num_groups: int = 8

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_factor

    def validate(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} not in {list(PREDICTION_TYPES)}")
        if len(self.unet_block_out_channels) != 3:
            raise ValueError(f"the tiny UNet has 3 levels, got block_out_channels {self.unet_block_out_channels}")
        unet_factor = 2 ** (len(self.unet_block_out_channels) - 1)
        if self.resolution <= 0 or self.resolution % (self.vae_factor * unet_factor):
            raise ValueError(
                f"resolution {self.resolution} must be a positive multiple of "
                f"{self.vae_factor * unet_factor} (VAE x UNet downsampling)"
            )
        for name, channels, groups in (
            ("vae", self.vae_block_out_channels, self.vae_norm_num_groups),
            ("unet", self.unet_block_out_channels, self.unet_norm_num_groups),
        ):
            if any(c % groups for c in channels):
                raise ValueError(f"{name} channels {channels} are not divisible by norm_num_groups {groups}")
        if self.text_hidden_size % self.text_heads:
            raise ValueError(f"text hidden size {self.text_hidden_size} not divisible by {self.text_heads} heads")


@dataclass
class SDComponents:
    """What SD fine-tuning needs, loaded from one pipeline folder or hub id.

    SDXL: ``tokenizer_2`` (OpenCLIP's padding) and ``text_encoder_2`` (with projection); None otherwise.
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2 is not None


def _text_encoder(cfg: TinySDConfig) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        intermediate_size=cfg.text_intermediate_size,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=cfg.text_hidden_size,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    return CLIPTextModel(config)


def _vae(cfg: TinySDConfig) -> AutoencoderKL:
    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_num_groups,
        sample_size=cfg.resolution,
        scaling_factor=SD_SCALING_FACTOR,
    )


def _unet(cfg: TinySDConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=cfg.unet_block_out_channels,
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden_size,
        attention_head_dim=cfg.unet_attention_head_dim,
        norm_num_groups=cfg.unet_norm_num_groups,
    )


def sd_noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """``DDPMScheduler`` with Stable Diffusion's training betas."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} not in {list(PREDICTION_TYPES)}")
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _tokenizer(tokenizer_dir: str | Path | None, scratch: Path) -> CLIPTokenizer:
    if tokenizer_dir is None:
        build_clip_tokenizer(scratch, save_fast=False)
        tokenizer_dir = scratch
    tok = load_clip_tokenizer(tokenizer_dir)
    if not isinstance(tok, CLIPTokenizer):
        raise TypeError(f"expected a slow CLIPTokenizer from {tokenizer_dir}, got {type(tok).__name__}")
    return tok


def build_tiny_sd(
    out_dir: str | Path,
    seed: int,
    tokenizer_dir: str | Path | None = None,
    config: TinySDConfig | None = None,
) -> Path:
    """Write a tiny random SD pipeline folder to ``out_dir`` and return it.

    The same ``seed`` and ``config`` give identical weights (each component is initialised
    from its own seed, ``seed + k``, with the global RNG state restored afterwards).
    ``tokenizer_dir``: a folder holding SD's CLIP tokenizer to copy; None builds it from the
    CLIP BPE vocabulary shipped in ``open-clip-torch``.
    """
    from diffusers import StableDiffusionPipeline

    cfg = config or TinySDConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = _tokenizer(tokenizer_dir, out_dir / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _text_encoder(cfg)
        torch.manual_seed(seed + 1)
        vae = _vae(cfg)
        torch.manual_seed(seed + 2)
        unet = _unet(cfg)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_noise_scheduler(cfg.prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    write_json({"seed": seed, "config": asdict(cfg)}, out_dir / "tiny_sd.json")
    log.info(
        "tiny SD (%s, %d px, latent %d) written to %s in %.1f s",
        cfg.prediction_type,
        cfg.resolution,
        cfg.latent_size,
        out_dir,
        time.perf_counter() - t0,
    )
    return out_dir


#: what the (cross-attention width, prediction type) pairs of the published models are
KNOWN_SD = {
    (768, "epsilon"): "Stable Diffusion 1.x (CLIP ViT-L/14 text encoder, epsilon)",
    (1024, "v_prediction"): "Stable Diffusion 2.x 768-v (OpenCLIP ViT-H/14 text encoder, v-prediction)",
    (1024, "epsilon"): "Stable Diffusion 2.x base (OpenCLIP ViT-H/14 text encoder, epsilon)",
    (2048, "epsilon"): "Stable Diffusion XL (CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text encoders, epsilon)",
}


Family = Literal["sd", "sdxl"]


@dataclass(frozen=True)
class SDExpectation:
    """What a profile expects of its Stable Diffusion folder (``train.expect``, ``evaluate.expect``).

    SD1.4: ``cross_attention_dim: 768, prediction_type: epsilon``; SD2.1 (768 px):
    ``1024, v_prediction``; SDXL base 1.0: ``2048, epsilon, family: sdxl``. ``family`` tells SDXL
    (two text encoders, added time ids) from SD1.x/2.x, read from the folder's configs
    (``sdxl_marks``). A folder of another model stops the stage before any weight loads.
    """

    cross_attention_dim: int
    prediction_type: PredictionType
    family: Family = "sd"

    def describe(self, pair: tuple[int, str] | None = None) -> str:
        dim, pred = pair or (self.cross_attention_dim, self.prediction_type)
        name = KNOWN_SD.get((dim, pred))
        return f"cross_attention_dim {dim}, prediction_type {pred}" + (f" = {name}" if name else "")

    def check_family(self, folder: Path, marks: list[str]) -> None:
        """Raise ValueError when ``folder``'s configs (``marks``: ``sdxl_marks``) say another family."""
        if self.family == "sdxl" and not marks:
            raise ValueError(f"{folder}: the profile expects Stable Diffusion XL (family sdxl); the folder is "
                             f"SD1.x/2.x (no text_encoder_2/, tokenizer_2/, UNet without addition_embed_type "
                             f"text_time)")
        if self.family == "sd" and marks:
            raise ValueError(f"{folder}: a Stable Diffusion XL folder ({'; '.join(marks)}); the profile expects "
                             f"SD1.x/2.x (family sd: one text encoder, a UNet without added time embeddings); "
                             f"set train.expect / evaluate.expect family: sdxl for SDXL")


def _read_json(path: Path) -> dict:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a diffusers model folder")
    return json.loads(path.read_text())


def check_sd_architecture(pretrained: str | Path, expect: SDExpectation | None, unets: tuple = ()) -> None:
    """Compare a local SD folder (and the UNet folders or LoRAs used with it) with ``expect``, reading only
    configs and safetensors headers.

    Raises ValueError naming the file, what the profile expects and what it holds; a LoRA must
    also fit ``pretrained``'s UNet (``lora.check_lora_base``). Hub ids are checked by
    ``load_sd_components`` once their configs are downloaded.
    """
    if not Path(pretrained).is_dir():
        return
    folder = Path(pretrained)
    marks = sdxl_marks(folder)
    swapped = [Path(u) for u in unets if entry_kind(u) == "unet"]
    for unet in swapped:
        xl = _read_json(unet / "config.json").get("addition_embed_type") == "text_time"
        if xl != bool(marks):
            raise ValueError(f"{unet / 'config.json'}: " + (
                f"an SDXL UNet (addition_embed_type text_time); the base {folder} is a Stable Diffusion 1.x/2.x "
                f"pipeline" if xl else f"a Stable Diffusion 1.x/2.x UNet; the base {folder} is an SDXL pipeline"))
    for lora in (Path(u) for u in unets if entry_kind(u) == "lora"):
        check_lora_base(lora, _read_json(folder / "unet" / "config.json"), str(folder))
    if expect is None:
        return
    expect.check_family(folder, marks)
    pred_file = folder / "scheduler" / "scheduler_config.json"
    pred = _read_json(pred_file).get("prediction_type", "epsilon")
    for unet in (folder / "unet", *swapped):
        unet_file = unet / "config.json"
        if not unet_file.is_file():
            raise FileNotFoundError(f"UNet folder {unet} not found (expected {unet_file} and weights)")
        dim = _read_json(unet_file).get("cross_attention_dim")
        if (dim, pred) != (expect.cross_attention_dim, expect.prediction_type):
            raise ValueError(f"{unet_file} (with {pred_file}): the profile expects {expect.describe()}; "
                             f"found {expect.describe((dim, pred))}")


def _check_loaded(pretrained: str, expect: SDExpectation | None, unet, scheduler) -> None:
    if expect is None:
        return
    pair = (unet.config.cross_attention_dim, scheduler.config.prediction_type)
    if pair != (expect.cross_attention_dim, expect.prediction_type):
        raise ValueError(f"{pretrained}: the profile expects {expect.describe()}; found {expect.describe(pair)}")


def sdxl_marks(folder: str | Path) -> list[str]:
    """What makes a local pipeline folder SDXL, read from its configs ([] for SD1.x/2.x)."""
    import json

    folder = Path(folder)
    marks = []
    index = folder / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name", "").startswith("StableDiffusionXL"):
        marks.append(f"{index} names {json.loads(index.read_text())['_class_name']}")
    marks += [f"{folder / s}/ (a second text encoder)" for s in ("text_encoder_2", "tokenizer_2") if (folder / s).is_dir()]
    unet = folder / "unet" / "config.json"
    if unet.is_file() and json.loads(unet.read_text()).get("addition_embed_type") == "text_time":
        marks.append(f"{unet} has addition_embed_type text_time (SDXL's add_time_ids)")
    return marks


#: what an SDXL folder holds beside SD's parts
SDXL_PARTS = ("tokenizer_2", "text_encoder_2")


def is_sdxl(pretrained: str | Path) -> bool:
    """Whether ``pretrained`` is a local SDXL folder, by its configs (``sdxl_marks``)."""
    return Path(pretrained).is_dir() and bool(sdxl_marks(pretrained))


def _check_local(pretrained: str) -> None:
    """A local folder must be a complete pipeline; a missing path under an existing folder is an error.

    ``models/sd14`` with ``models/`` present is a missing download, not a hub id.
    """
    path = Path(pretrained)
    if not path.exists():
        first = Path(path.parts[0]) if path.parts else path
        if path.is_absolute() or pretrained.startswith(".") or first.is_dir():
            raise FileNotFoundError(f"Stable Diffusion folder {path} not found (download it there, or name a hub id)")
        return
    missing = [s for s in ("tokenizer", "text_encoder", "vae", "unet", "scheduler") if not (path / s).is_dir()]
    if missing:
        held = ""
        if path.is_file() or (path / LORA_WEIGHTS).is_file() or (path / "config.json").is_file():
            held = (f"; it is a LoRA or a UNet, not a base model: name the base pipeline folder here and "
                    f"{path} as an evaluate.models entry")
        raise FileNotFoundError(f"{path} is not a Stable Diffusion pipeline folder: no {missing}{held}")


def _check_sdxl_parts(pretrained: str) -> None:
    """An SDXL folder (after the family check) must hold its second tokenizer and text encoder."""
    path = Path(pretrained)
    missing = [s for s in SDXL_PARTS if not (path / s).is_dir()] if is_sdxl(path) else []
    if missing:
        raise FileNotFoundError(f"{path}: an SDXL folder ({'; '.join(sdxl_marks(path))}) without {missing}")


def _sdxl_source(pretrained: str, revision: str | None) -> bool:
    """Whether a folder or hub id is SDXL (a hub id: its UNet config, fetched alone)."""
    if Path(pretrained).is_dir():
        return is_sdxl(pretrained)
    config = UNet2DConditionModel.load_config(pretrained, subfolder="unet", revision=revision)
    return config.get("addition_embed_type") == "text_time"


def _load_tokenizer(pretrained: str, subfolder: str, revision: str | None) -> CLIPTokenizer:
    tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder=subfolder, revision=revision)
    if len(tokenizer) != VOCAB_SIZE or tokenizer.bos_token_id != BOS_ID or tokenizer.eos_token_id != EOS_ID:
        raise ValueError(f"{pretrained}/{subfolder}: the tokenizer is not SD's CLIP tokenizer ({len(tokenizer)} ids)")
    return tokenizer


def _check_text_width(pretrained: str, unet, encoders: list) -> None:
    """The UNet's cross-attention width is the text encoders' hidden sizes summed (SDXL: 768 + 1280)."""
    width = sum(e.config.hidden_size for e in encoders)
    if width != unet.config.cross_attention_dim:
        raise ValueError(f"{pretrained}: text encoder width {' + '.join(str(e.config.hidden_size) for e in encoders)} "
                         f"!= UNet cross_attention_dim {unet.config.cross_attention_dim}")


def load_sd_components(pretrained: str | Path, revision: str | None = None, variant: str | None = None,
                       expect: SDExpectation | None = None) -> SDComponents:
    """Load SD's tokenizer(s) (slow), text encoder(s), VAE, UNet and a DDPM noise scheduler.

    ``pretrained``: a hub id (``CompVis/stable-diffusion-v1-4``, ``stabilityai/stable-diffusion-2-1``,
    ``stabilityai/stable-diffusion-xl-base-1.0``) or a local pipeline folder (``build_tiny_sd``'s or
    ``build_tiny_sdxl``'s output); each part from its subfolder, as diffusers' ``train_text_to_image.py``
    and ``train_text_to_image_sdxl.py`` do. The scheduler config is read into a ``DDPMScheduler``
    whatever class the folder names (SD 1.4 ships PNDM, SD 2.1 DDIM, SDXL Euler), so its
    ``prediction_type`` comes along. Models are returned in eval mode on the CPU.
    ``expect``: the architecture the profile expects; another one is an error before weights load.
    """
    pretrained = str(pretrained)
    _check_local(pretrained)
    check_sd_architecture(pretrained, expect)
    _check_sdxl_parts(pretrained)
    sdxl = _sdxl_source(pretrained, revision)
    if expect is not None and (expect.family == "sdxl") != sdxl:  # a hub id: its UNet config, before weights
        raise ValueError(f"{pretrained}: the profile expects family {expect.family}; its UNet config is "
                         f"{'SDXL (addition_embed_type text_time)' if sdxl else 'SD1.x/2.x'}")
    tokenizer = _load_tokenizer(pretrained, "tokenizer", revision)
    noise_scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", revision=revision)
    kwargs = {"revision": revision, "variant": variant}
    text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", **kwargs)
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", **kwargs)
    unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", **kwargs)
    _check_loaded(pretrained, expect, unet, noise_scheduler)
    extra = {}
    if sdxl:
        extra = {"tokenizer_2": _load_tokenizer(pretrained, "tokenizer_2", revision),
                 "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                     pretrained, subfolder="text_encoder_2", **kwargs).eval()}
    _check_text_width(pretrained, unet, [text_encoder] + ([extra["text_encoder_2"]] if sdxl else []))
    return SDComponents(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), unet=unet.eval(),
                        noise_scheduler=noise_scheduler, **extra)


def load_sd_pipeline(pretrained: str, unet: str | None, device: str, dtype: str = "fp32", scheduler: str = "default",
                     expect: SDExpectation | None = None):
    """A ``StableDiffusionPipeline`` (SDXL: ``StableDiffusionXLPipeline``) from ``pretrained`` (hub id or folder)
    with a fine-tuned UNet or a LoRA.

    ``unet``: a diffusers UNet folder (``config.json`` + weights), swapped in, or a LoRA
    (``pytorch_lora_weights.safetensors`` or its folder) loaded with ``pipe.load_lora_weights``:
    either can be the ``train`` stage's ``data/train/unet``; ``None`` keeps the pretrained UNet.
    Which one is told from the files (``lora.entry_kind``) and checked against ``pretrained`` before
    any weight loads. The pipeline keeps the folder's safety checker if it has one, as the official
    evaluation did. ``dtype``: a ``DTYPES`` key; ``scheduler``: ``default`` (the folder's) or a
    ``SCHEDULERS`` key. SDXL's VAE runs in fp32 when its config says ``force_upcast`` (the pipeline's own rule).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    torch_dtype = DTYPES[dtype]
    kwargs = {}
    _check_local(str(pretrained))
    kind = None if unet is None else entry_kind(unet, "UNet or LoRA")
    check_sd_architecture(pretrained, expect, () if unet is None else (unet,))
    _check_sdxl_parts(str(pretrained))
    if kind == "unet":
        kwargs["unet"] = UNet2DConditionModel.from_pretrained(unet, torch_dtype=torch_dtype)
    cls = StableDiffusionXLPipeline if _sdxl_source(str(pretrained), None) else StableDiffusionPipeline
    pipe = cls.from_pretrained(pretrained, torch_dtype=torch_dtype, **kwargs)
    _check_loaded(pretrained, expect, pipe.unet, pipe.scheduler)
    if kind == "lora":
        check_lora_base(unet, dict(pipe.unet.config), str(pretrained))
        pipe.load_lora_weights(str(lora_file(unet).parent), weight_name=lora_file(unet).name)
    if scheduler != "default":
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[scheduler])
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel along a side: ``2 ** (len(block_out_channels) - 1)`` (SD: 8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encoding_vae(pipe) -> AutoencoderKL:
    """The VAE to encode images with outside the pipeline: ``pipe.vae``, or for SDXL in fp16 an fp32 copy.

    SDXL's VAE overflows in fp16 (``force_upcast`` in its config); its pipeline upcasts it for decoding
    only, and upcasting ``pipe.vae`` itself would leave the pipeline decoding fp16 latents with fp32
    weights. The copy costs the VAE's size in fp32 (SDXL: 335 MB).
    """
    vae = pipe.vae
    if getattr(pipe, "text_encoder_2", None) is None or vae.dtype != torch.float16:
        return vae
    if not vae.config.get("force_upcast", True):
        return vae
    import copy

    return copy.deepcopy(vae).to(torch.float32)
