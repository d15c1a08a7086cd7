"""Rehearsal models: the paper's models with their real architectures and seeded random weights.

``build_rehearsal_models(cfg)`` writes, under ``cfg.out_dir`` (``models/rehearsal``), files in
the formats and layouts users download, so the paper profiles' loaders read them unchanged::

    sd14/                  diffusers folder like CompVis/stable-diffusion-v1-4 (no safety checker):
                           UNet 859.5M (320/640/1280/1280, head dim 8, cross-attn 768, sample 64),
                           VAE 83.7M (128/256/512/512, latent 4, scaling 0.18215), CLIP ViT-L/14
                           text encoder 123.1M (768 wide, 12 layers, 12 heads), SD's CLIP tokenizer,
                           PNDMScheduler (scaled_linear 0.00085-0.012, skip_prk_steps)
    sd21/                  like stabilityai/stable-diffusion-2-1: UNet 865.9M (head dims 5/10/20/20,
                           linear projections, cross-attn 1024, sample 96 = 768 px), OpenCLIP ViT-H
                           text encoder 340.4M (1024 wide, 23 layers, 16 heads, gelu), the same VAE,
                           DDIMScheduler with v_prediction; tokenizer padding with "!" (id 0)
    sdxl/                  like stabilityai/stable-diffusion-xl-base-1.0 (optional, ~14 GB): UNet 2,567.5M
                           (``sdxl.SDXL_BASE_UNET``), SDXL's VAE 83.7M (the SD VAE, scaling 0.13025,
                           force_upcast, sample 1024), CLIP ViT-L/14 text encoder 123.1M, OpenCLIP
                           ViT-bigG/14 text encoder with projection 694.7M (1280 wide, 32 layers, 20 heads,
                           gelu, projection 1280), tokenizer + tokenizer_2 (padding with "!"),
                           EulerDiscreteScheduler (SD's betas, "leading" spacing, epsilon)
    bert-base-uncased/     bert-base-uncased's config (110M) + a 30,522-entry WordPiece vocab built offline
    groundingdino/groundingdino_swint_ogc.pth   {"model": state_dict} with "module." keys (DDP),
                           built by groundingdino's build_model from the packaged SwinT-OGC config
    sam/sam_vit_h_4b8939.pth            raw state dict of segment_anything's vit_h (636M)
    owlv2-large-patch14-ensemble/       Owlv2ForObjectDetection, 960 px, patch 14 + Owlv2Processor
    owlvit-base-patch32/                OwlViTForObjectDetection, 768 px, patch 32 + OwlViTProcessor
    torch/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth
                           torch-fidelity's InceptionV3 (FID) state dict, where torch-fidelity looks
                           when ``TORCH_HOME=models/rehearsal/torch`` (``make rehearsal`` sets it)
    MANIFEST.json          seed, paths, parameter counts, seconds per model
    RANDOM_WEIGHTS.json    marks every model here as random (``pipeline.core.provenance``)

Each model is built alone, written atomically (temporary name, then rename) and freed before
the next (24 GiB machines); SDXL's components are built, saved and freed one at a time (its
UNet alone is 10.3 GB in fp32). ``param_counts()`` counts every architecture on the ``meta``
device, without allocating weights (the cheap check CI runs).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.config import ConfigError
from pipeline.core.provenance import write_random_weights_marker
from pipeline.core.tables import write_json
from pipeline.models.sdxl import SDXL_BASE_UNET

log = logging.getLogger(__name__)

#: ``sdxl`` last: a kind's seed is ``seed + 100 * KINDS.index(kind)``, so appending keeps the others'
KINDS: tuple[str, ...] = ("sd14", "sd21", "grounding_dino", "sam_vit_h", "owlv2_large", "owlvit_base", "inception",
                          "sam_hq_vit_h", "sdxl")

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
SD21_UNET = dict(
    SD14_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, upcast_attention=True,
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, act_fn="silu", norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
)
CLIP_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H14_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                         hidden_act="gelu", projection_dim=512)
#: OpenCLIP ViT-bigG/14's text tower, SDXL's ``text_encoder_2`` (CLIPTextModelWithProjection)
OPENCLIP_BIGG14_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                            hidden_act="gelu", projection_dim=1280)
#: SDXL base 1.0's VAE: SD's architecture, its own scaling factor, decoded in fp32 (``force_upcast``)
SDXL_VAE = dict(SD_VAE, scaling_factor=0.13025, force_upcast=True, sample_size=1024)
#: SDXL base 1.0's scheduler_config.json (the keys EulerDiscreteScheduler takes)
SDXL_SCHEDULER = dict(SD_BETAS, steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
                      interpolation_type="linear", use_karras_sigmas=False)
#: the configs ``build_sdxl`` builds (``unet``: ``pipeline.models.sdxl.SDXL_BASE_UNET``); a test swaps in tiny ones
SDXL_PARTS: dict[str, dict] = dict(unet=SDXL_BASE_UNET, vae=SDXL_VAE, text=CLIP_L14_TEXT, text_2=OPENCLIP_BIGG14_TEXT)
SD_VARIANTS = {
    "sd14": dict(unet=SD14_UNET, text=CLIP_L14_TEXT, resolution=512, prediction_type="epsilon", scheduler="pndm"),
    "sd21": dict(unet=SD21_UNET, text=OPENCLIP_H14_TEXT, resolution=768, prediction_type="v_prediction",
                 scheduler="ddim"),
}
BERT_BASE_UNCASED = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
)
OWLV2_LARGE = dict(
    text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=960, patch_size=14),
    projection_dim=768,
)
OWLVIT_BASE32 = dict(
    text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=768, patch_size=32),
    projection_dim=512,
)
GD_CHECKPOINT = "groundingdino/groundingdino_swint_ogc.pth"
SAM_CHECKPOINT = "sam/sam_vit_h_4b8939.pth"
SAM_HQ_CHECKPOINT = "sam/sam_hq_vit_h.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_CHECKPOINT = f"torch/hub/checkpoints/{INCEPTION_FILE}"
#: The denoising label embedding the release carries (``dn_labelbook_size`` 2000 + 1, hidden 256).
GD_LABEL_ENC_SHAPE = (2001, 256)


@dataclass(frozen=True)
class RehearsalModelsConfig:
    """``rehearsal_models`` params: which models to build (``KINDS``), seed, output folder."""

    kinds: tuple[str, ...] = ()
    seed: int = 0
    out_dir: str = "models/rehearsal"

    def validate(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"rehearsal_models.kinds: unknown {unknown}; known {list(KINDS)}")


# ----------------------------------------------------------------------------- architectures


def sd_unet(variant: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SD_VARIANTS[variant]["unet"])


def sd_vae(variant: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**SD_VAE, sample_size=SD_VARIANTS[variant]["resolution"])


def clip_text_encoder(spec: dict, with_projection: bool = False):
    """A CLIP text tower (``CLIPTextModel``, or ``CLIPTextModelWithProjection``) over SD's tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.clip_tokenizer import BOS_ID, EOS_ID, MODEL_MAX_LENGTH, VOCAB_SIZE

    model_cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_cls(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=MODEL_MAX_LENGTH, layer_norm_eps=1e-5,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=1, **spec,
    ))


def sd_text_encoder(variant: str):
    return clip_text_encoder(SD_VARIANTS[variant]["text"])


def sd_scheduler(variant: str):
    from diffusers import DDIMScheduler, PNDMScheduler

    v = SD_VARIANTS[variant]
    common = dict(SD_BETAS, set_alpha_to_one=False, steps_offset=1, prediction_type=v["prediction_type"])
    if v["scheduler"] == "pndm":
        return PNDMScheduler(**common, skip_prk_steps=True)
    return DDIMScheduler(**common, clip_sample=False)


def check_sdxl_parts(parts: dict[str, dict]) -> None:
    """The UNet's conditioning widths must match the text encoders': cross-attention = the two hidden
    sizes concatenated, added embedding = 6 time ids x ``addition_time_embed_dim`` + the pooled projection."""
    unet, text, text_2 = parts["unet"], parts["text"], parts["text_2"]
    cross = text["hidden_size"] + text_2["hidden_size"]
    added = 6 * unet["addition_time_embed_dim"] + text_2["projection_dim"]
    if unet["cross_attention_dim"] != cross or unet["projection_class_embeddings_input_dim"] != added:
        raise ValueError(f"SDXL UNet expects cross-attention {unet['cross_attention_dim']} and added embedding "
                         f"{unet['projection_class_embeddings_input_dim']}; the text encoders give {cross} and {added}")


def sdxl_unet(parts: dict[str, dict] | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(parts or SDXL_PARTS)["unet"])


def sdxl_vae(parts: dict[str, dict] | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(parts or SDXL_PARTS)["vae"])


def sdxl_text_encoder(parts: dict[str, dict] | None = None):
    return clip_text_encoder((parts or SDXL_PARTS)["text"])


def sdxl_text_encoder_2(parts: dict[str, dict] | None = None):
    return clip_text_encoder((parts or SDXL_PARTS)["text_2"], with_projection=True)


def owl_model(kind: str):
    """``owlv2`` (large patch14) or ``owlvit`` (base patch32) detector with its published shape."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, OwlViTConfig, OwlViTForObjectDetection

    from pipeline.models.clip_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE
    from pipeline.models.owl_tiny import OWL_MAX_TEXT_LEN, OWL_PAD_ID

    spec = OWLV2_LARGE if kind == "owlv2" else OWLVIT_BASE32
    text = dict(spec["text"], vocab_size=VOCAB_SIZE, max_position_embeddings=OWL_MAX_TEXT_LEN,
                pad_token_id=OWL_PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    config_cls, model_cls = (Owlv2Config, Owlv2ForObjectDetection) if kind == "owlv2" else (
        OwlViTConfig, OwlViTForObjectDetection)
    return model_cls(config_cls(text_config=text, vision_config=dict(spec["vision"]),
                                projection_dim=spec["projection_dim"]))


def inception_fid():
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with its constructors' random init."""
    import tempfile

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # the constructor's load
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def sam_vit_h():
    from segment_anything import sam_model_registry

    return sam_model_registry["vit_h"](checkpoint=None)


def param_counts(kinds: tuple[str, ...] = ("sd14", "sd21", "sdxl", "sam_vit_h", "owlv2_large", "owlvit_base"),
                 ) -> dict[str, int]:
    """Parameters of each architecture built on the ``meta`` device (no weights allocated).

    Keys: ``sd14_unet``, ``sd14_vae``, ``sd14_text_encoder`` (same for ``sd21``), ``sdxl_unet``,
    ``sdxl_vae``, ``sdxl_text_encoder``, ``sdxl_text_encoder_2``, ``sam_vit_h``, ``owlv2_large``,
    ``owlvit_base``.
    """
    builders = {}
    for variant in ("sd14", "sd21"):
        if variant in kinds:
            builders[f"{variant}_unet"] = lambda v=variant: sd_unet(v)
            builders[f"{variant}_vae"] = lambda v=variant: sd_vae(v)
            builders[f"{variant}_text_encoder"] = lambda v=variant: sd_text_encoder(v)
    if "sdxl" in kinds:
        builders.update(sdxl_unet=sdxl_unet, sdxl_vae=sdxl_vae, sdxl_text_encoder=sdxl_text_encoder,
                        sdxl_text_encoder_2=sdxl_text_encoder_2)
    if "sam_vit_h" in kinds:
        builders["sam_vit_h"] = sam_vit_h
    if "owlv2_large" in kinds:
        builders["owlv2_large"] = lambda: owl_model("owlv2")
    if "owlvit_base" in kinds:
        builders["owlvit_base"] = lambda: owl_model("owlvit")
    counts = {}
    for name, build in builders.items():
        with torch.device("meta"):
            model = build()
        counts[name] = sum(p.numel() for p in model.parameters())
        del model
    return counts


# ----------------------------------------------------------------------------- writers


@contextlib.contextmanager
def _atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces ``final``."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_state(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_sd(out_dir: Path, variant: str, seed: int, tokenizer_dir: Path) -> Path:
    """A diffusers Stable Diffusion folder (``sd14`` or ``sd21``) with seeded random weights."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    final = out_dir / variant
    with _atomic_dir(final) as tmp:
        extra = {"pad_token": "!"} if variant == "sd21" else {}
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, **extra)
        pipe = StableDiffusionPipeline(
            vae=_seeded(seed + 1, lambda: sd_vae(variant)),
            text_encoder=_seeded(seed, lambda: sd_text_encoder(variant)),
            tokenizer=tokenizer,
            unet=_seeded(seed + 2, lambda: sd_unet(variant)),
            scheduler=sd_scheduler(variant),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp, safe_serialization=True)
        del pipe
    return final


def build_sdxl(out_dir: Path, seed: int, tokenizer_dir: Path, parts: dict[str, dict] | None = None) -> Path:
    """A diffusers SDXL base 1.0 folder (``sdxl/``) with seeded random weights, safetensors only.

    The layout of ``stabilityai/stable-diffusion-xl-base-1.0``: ``model_index.json`` (written by
    ``save_config`` of a pipeline whose models sit on the meta device, as ``save_pretrained``
    writes it), ``unet/`` (one ``diffusion_pytorch_model.safetensors``, unsharded as in the
    release), ``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``
    (pads with "!", id 0), ``scheduler/``. Each model is built with its seeded default init, saved
    and freed before the next, so the peak is about one model (the UNet, 10.3 GB in fp32).
    ``parts`` replaces :data:`SDXL_PARTS` (the tests build a tiny twin this way).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    parts = parts or SDXL_PARTS
    check_sdxl_parts(parts)
    final = out_dir / "sdxl"
    with _atomic_dir(final) as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tokenizer_dir, pad_token="!")
        scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER)
        models = {"text_encoder": (seed, sdxl_text_encoder), "vae": (seed + 1, sdxl_vae),
                  "unet": (seed + 2, sdxl_unet), "text_encoder_2": (seed + 3, sdxl_text_encoder_2)}
        with torch.device("meta"):
            shells = {name: build(parts) for name, (_, build) in models.items()}
        StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
                                  **shells).save_config(tmp)
        del shells
        tokenizer.save_pretrained(tmp / "tokenizer")
        tokenizer_2.save_pretrained(tmp / "tokenizer_2")
        scheduler.save_pretrained(tmp / "scheduler")
        for name, (part_seed, build) in models.items():
            model = _seeded(part_seed, lambda b=build: b(parts))
            extra = {"max_shard_size": "100GB"} if name in ("unet", "vae") else {}
            model.save_pretrained(tmp / name, safe_serialization=True, **extra)
            del model
            gc.collect()
    return final


def rehearsal_wordpiece_vocab(size: int = BERT_BASE_UNCASED["vocab_size"]) -> list[str]:
    """bert-base-uncased's vocabulary layout, filled offline: [PAD], [unused0-98], [UNK], [CLS],
    [SEP], [MASK] (ids 0, 1-99, 100-103, as in the release), then characters and CLIP's English
    words (``grounding_dino_tiny.wordpiece_vocab``), padded with ``[unusedN]`` to ``size``."""
    from pipeline.models.grounding_dino_tiny import SPECIAL_TOKENS, english_words_from_clip_bpe, wordpiece_vocab

    head = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    body = [t for t in wordpiece_vocab(english_words_from_clip_bpe()) if t not in SPECIAL_TOKENS]
    vocab = (head + body)[:size]
    vocab += [f"[unused{i}]" for i in range(99, 99 + size - len(vocab))]
    return vocab


def build_bert(out_dir: Path, seed: int) -> Path:
    """A folder like ``bert-base-uncased``: its config, an offline vocab, random weights."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    final = out_dir / "bert-base-uncased"
    with _atomic_dir(final) as tmp:
        vocab_file = tmp / "vocab.txt"
        vocab_file.write_text("\n".join(rehearsal_wordpiece_vocab()) + "\n")
        BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True).save_pretrained(tmp)
        model = _seeded(seed, lambda: BertModel(BertConfig(**BERT_BASE_UNCASED)))
        model.save_pretrained(tmp, safe_serialization=True)
    return final


def build_grounding_dino(out_dir: Path, seed: int, bert_dir: Path) -> Path:
    """``groundingdino_swint_ogc.pth``: the packaged SwinT-OGC config's model, release key layout."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    from pipeline.models.grounding_dino import quiet_groundingdino, resolve_config_path

    with quiet_groundingdino(), contextlib.redirect_stdout(io.StringIO()):
        args = SLConfig.fromfile(str(resolve_config_path("GroundingDINO_SwinT_OGC.py")))
        args.device = "cpu"
        args.text_encoder_type = str(bert_dir)
        model = _seeded(seed, lambda: build_model(args))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    state["module.label_enc.weight"] = torch.randn(GD_LABEL_ENC_SHAPE, generator=gen)
    path = out_dir / GD_CHECKPOINT
    _save_state({"model": state}, path)
    return path


def build_sam_vit_h(out_dir: Path, seed: int, hq: bool = False) -> Path:
    """``sam_vit_h_4b8939.pth`` (segment_anything's vit_h) or, ``hq``, ``sam_hq_vit_h.pth``
    (segment_anything_hq's): raw state dicts, position embeddings randomised too."""
    def build():
        if hq:
            from pipeline.models.sam_hq import build_official_hq

            sam = build_official_hq("hq_vit_h")
        else:
            sam = sam_vit_h()
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
        return sam

    sam = _seeded(seed, build)
    path = out_dir / (SAM_HQ_CHECKPOINT if hq else SAM_CHECKPOINT)
    _save_state({k: v.contiguous() for k, v in sam.state_dict().items()}, path)
    return path


def build_owl(out_dir: Path, kind: str, seed: int, tokenizer_dir: Path) -> Path:
    """An OWLv2-large or OWL-ViT-base folder with processor, at the published input size."""
    from transformers import Owlv2ImageProcessor, Owlv2Processor, OwlViTImageProcessor, OwlViTProcessor

    from pipeline.models.owl_tiny import _owl_tokenizer, _reset_heads

    name = "owlv2-large-patch14-ensemble" if kind == "owlv2" else "owlvit-base-patch32"
    spec = OWLV2_LARGE if kind == "owlv2" else OWLVIT_BASE32
    side = spec["vision"]["image_size"]
    size = {"height": side, "width": side}
    final = out_dir / name
    with _atomic_dir(final) as tmp:
        tokenizer = _owl_tokenizer(tokenizer_dir)

        def build():
            model = owl_model(kind)
            if kind == "owlv2":
                _reset_heads(model)
            return model

        model = _seeded(seed, build)
        if kind == "owlv2":
            processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size=size), tokenizer=tokenizer)
        else:
            processor = OwlViTProcessor(image_processor=OwlViTImageProcessor(size=size, crop_size=size),
                                        tokenizer=tokenizer)
        model.eval().save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return final


def build_inception(out_dir: Path, seed: int) -> Path:
    """torch-fidelity's InceptionV3 weight file (a raw state dict, as the released one)."""
    model = _seeded(seed, inception_fid)
    path = out_dir / INCEPTION_CHECKPOINT
    _save_state(model.state_dict(), path)
    return path


def build_rehearsal_models(cfg: RehearsalModelsConfig) -> dict[str, str]:
    """Build ``cfg.kinds`` into ``cfg.out_dir`` one at a time; returns {name: path}."""
    from pipeline.models.clip_tokenizer import build_clip_tokenizer

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    seconds: dict[str, float] = {}
    tokenizer_dir = out / "clip-tokenizer"
    if cfg.kinds:
        build_clip_tokenizer(tokenizer_dir)
        paths["clip_tokenizer"] = str(tokenizer_dir)
    for i, kind in enumerate(cfg.kinds):
        seed = cfg.seed + 100 * KINDS.index(kind)  # independent of which others are built
        t0 = time.perf_counter()
        log.info("building %s (%d/%d)", kind, i + 1, len(cfg.kinds))
        if kind in SD_VARIANTS:
            paths[kind] = str(build_sd(out, kind, seed, tokenizer_dir))
        elif kind == "sdxl":
            paths[kind] = str(build_sdxl(out, seed, tokenizer_dir))
        elif kind == "grounding_dino":
            bert = build_bert(out, seed)
            paths["bert"] = str(bert)
            paths[kind] = str(build_grounding_dino(out, seed + 10, bert))
        elif kind in ("sam_vit_h", "sam_hq_vit_h"):
            paths[kind] = str(build_sam_vit_h(out, seed, hq=kind == "sam_hq_vit_h"))
        elif kind in ("owlv2_large", "owlvit_base"):
            paths[kind] = str(build_owl(out, kind.split("_")[0], seed, tokenizer_dir))
        elif kind == "inception":
            paths[kind] = str(build_inception(out, seed))
        gc.collect()
        seconds[kind] = round(time.perf_counter() - t0, 1)
        log.info("built %s in %.1f s -> %s", kind, seconds[kind], paths[kind])
    write_json({"seed": cfg.seed, "kinds": list(cfg.kinds), "paths": paths, "seconds": seconds},
               out / "MANIFEST.json")
    write_random_weights_marker(out, "rehearsal_models", cfg.seed)
    return paths
