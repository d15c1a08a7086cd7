"""SAM (segment-anything): the architecture, the strict weights-only loader, and its tiny twin.

``load_sam`` builds the architecture (``segment_anything``'s registry for the official
ViT-H/L/B, ``config.json`` for the tiny demo model) and loads every checkpoint through the
same strict, weights-only path.

The demo profile cannot download ``sam_vit_h_4b8939.pth``, so ``build_tiny_sam`` builds a SAM
with the same architecture code (``Sam``, ``ImageEncoderViT``, ``PromptEncoder``,
``MaskDecoder``, ``TwoWayTransformer``) and small numbers, and saves it in the official
checkpoint format: a raw state dict written with ``torch.save``. ``config.json`` next to it
holds the numbers, so ``load_sam`` rebuilds the architecture and then loads the weights through
the same code as the real checkpoints. Box prompts -> masks: ``pipeline.data.sam_masks``.

SAM-HQ (``hq_vit_h | hq_vit_l | hq_vit_b | hq_tiny``, the paper's segmenter) is built by
``pipeline.models.sam_hq`` and loaded here by the same path. A checkpoint of the other family
(an HQ checkpoint given as a plain SAM type, or a plain one as an HQ type) stops with an
error naming the file, the expected architecture and what the file holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from pipeline.core.config import from_dict
from pipeline.core.devices import resolve_device
from pipeline.core.tables import write_json

log = logging.getLogger(__name__)

ModelType = Literal["vit_h", "vit_l", "vit_b", "tiny", "hq_vit_h", "hq_vit_l", "hq_vit_b", "hq_tiny"]
SAM_MODEL_TYPES: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "tiny")
MODEL_TYPES: tuple[str, ...] = (*SAM_MODEL_TYPES, "hq_vit_h", "hq_vit_l", "hq_vit_b", "hq_tiny")
TINY_TYPES: tuple[str, ...] = ("tiny", "hq_tiny")  # architecture from config.json beside the checkpoint
CHECKPOINT_NAME = "sam_tiny.pth"
HQ_CHECKPOINT_NAME = "sam_hq_tiny.pth"
CONFIG_NAME = "config.json"

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArchitecture:
    """The numbers that define a SAM built by ``segment_anything``'s classes.

    The defaults are the tiny demo model: a 256 px input, a 16 x 16 image embedding with
    32 channels, and low-resolution masks of 64 x 64.
    """

    image_size: int = 256
    patch_size: int = 16
    encoder_embed_dim: int = 64
    encoder_depth: int = 2
    encoder_num_heads: int = 2
    encoder_global_attn_indexes: tuple[int, ...] = (1,)
    encoder_window_size: int = 7
    encoder_mlp_ratio: float = 4.0
    prompt_embed_dim: int = 32
    mask_in_chans: int = 8
    decoder_depth: int = 2
    decoder_mlp_dim: int = 64
    decoder_num_heads: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 32

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_num_heads")
        if self.prompt_embed_dim % 8:
            raise ValueError("prompt_embed_dim must be divisible by 8 (mask decoder upscaling)")
        if self.mask_in_chans % 4:
            raise ValueError("mask_in_chans must be divisible by 4")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(f"encoder_global_attn_indexes {bad} outside [0, {self.encoder_depth})")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid: ``image_size // patch_size``."""
        return self.image_size // self.patch_size


def build_sam(arch: SamArchitecture, hq: bool = False) -> Sam:
    """Build a SAM with the architecture ``arch`` (weights as the constructors leave them).

    ``hq``: a SAM-HQ from ``segment_anything_hq``'s classes (its ``MaskDecoderHQ`` reads the
    encoder's features too); else ``segment_anything``'s.
    """
    arch.validate()
    grid = arch.embedding_size
    if hq:
        from pipeline.models.sam_hq import hq_modeling

        m = hq_modeling()
        decoder, extra = m.MaskDecoderHQ, {"vit_dim": arch.encoder_embed_dim}
    else:
        import segment_anything.modeling as m

        decoder, extra = m.MaskDecoder, {}
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=arch.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
            window_size=arch.encoder_window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=decoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=m.TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
            **extra,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def read_architecture(config_path: str | Path) -> SamArchitecture:
    """Read ``config.json`` written by :func:`build_tiny_sam`; unknown keys are errors."""
    config_path = Path(config_path)
    if not config_path.exists():
        raise FileNotFoundError(
            f"SAM architecture config not found: {config_path} "
            f"(a 'tiny' checkpoint needs {CONFIG_NAME} next to it)"
        )
    data = json.loads(config_path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    data.pop("seed", None)
    data.pop("model_type", None)
    return from_dict(SamArchitecture, data, str(config_path))


def init_tiny_sam(arch: SamArchitecture, seed: int, hq: bool = False) -> Sam:
    """A SAM with seeded random weights; the caller's global RNG state is left untouched.

    The encoder's absolute and relative position embeddings are zeros after construction;
    they get small random values too, so that every tensor of the checkpoint carries weight.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(arch, hq)
        with torch.no_grad():
            for name, param in sam.image_encoder.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    return sam.eval()


def build_tiny_sam(out_dir: str | Path, seed: int = 0, arch: SamArchitecture | None = None,
                   hq: bool = False) -> Path:
    """Build, seed and save a tiny SAM (``hq``: SAM-HQ); returns the checkpoint path.

    Writes ``out_dir/sam_tiny.pth`` (``sam_hq_tiny.pth``; a raw state dict, like the official
    checkpoints) and ``out_dir/config.json`` (the architecture numbers, the seed and
    ``model_type: tiny`` or ``hq_tiny``). The same seed gives identical tensors.
    """
    arch = arch or SamArchitecture()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sam = init_tiny_sam(arch, seed, hq)
    state = {k: v.detach().clone().contiguous() for k, v in sam.state_dict().items()}
    name = HQ_CHECKPOINT_NAME if hq else CHECKPOINT_NAME
    checkpoint = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    try:
        torch.save(state, tmp)
        tmp.replace(checkpoint)
    finally:
        tmp.unlink(missing_ok=True)
    config = {"model_type": "hq_tiny" if hq else "tiny", "seed": seed, **dataclasses.asdict(arch)}
    config["encoder_global_attn_indexes"] = list(arch.encoder_global_attn_indexes)
    write_json(config, out_dir / CONFIG_NAME)
    n_params = sum(v.numel() for v in state.values())
    log.info("tiny SAM: %d parameters, %.2f MB -> %s", n_params, checkpoint.stat().st_size / 1e6, checkpoint)
    return checkpoint


def _torch_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` as is; a params string (``auto | cpu | cuda | cuda:N``) resolved."""
    if isinstance(device, torch.device):
        return device
    return torch.device(resolve_device(device))


def is_hq(model_type: str) -> bool:
    """Is ``model_type`` a SAM-HQ type (``hq_*``)?"""
    return model_type.startswith("hq_")


def build_architecture(model_type: str, checkpoint: str | Path) -> Sam:
    """An untrained SAM (or SAM-HQ) of ``model_type`` (``tiny``/``hq_tiny``: from config.json)."""
    if model_type in TINY_TYPES:
        config_path = Path(checkpoint).parent / CONFIG_NAME
        arch = read_architecture(config_path)
        written = json.loads(config_path.read_text()).get("model_type", "tiny")
        if written != model_type:
            raise ValueError(f"{checkpoint}: model_type {model_type!r} expected, but {config_path} describes "
                             f"a {written!r} model")
        return build_sam(arch, hq=is_hq(model_type))
    if model_type in ("vit_h", "vit_l", "vit_b"):
        return sam_model_registry[model_type](checkpoint=None)
    if model_type in ("hq_vit_h", "hq_vit_l", "hq_vit_b"):
        from pipeline.models.sam_hq import build_official_hq

        return build_official_hq(model_type)
    raise ValueError(f"unknown SAM model_type {model_type!r}; expected one of {list(MODEL_TYPES)}")


def _check_family(model_type: str, checkpoint: Path, state: dict) -> None:
    """An HQ checkpoint for a plain SAM type, or the reverse, is an error naming both."""
    from pipeline.models.sam_hq import HQ_KEY_PREFIXES, is_hq_state_dict

    found_hq = is_hq_state_dict(state)
    if found_hq != is_hq(model_type):
        expected = "SAM-HQ (segment-anything-hq)" if is_hq(model_type) else "SAM (segment-anything)"
        found = ("a SAM-HQ checkpoint (it has mask_decoder.hf_token and the other HQ decoder tensors)" if found_hq
                 else f"a plain SAM checkpoint (no {HQ_KEY_PREFIXES[0]} or other HQ decoder tensors)")
        other = f"hq_{model_type}" if not is_hq(model_type) else model_type.removeprefix("hq_")
        raise ValueError(f"{checkpoint}: segment.model_type {model_type!r} expects a {expected} checkpoint, "
                         f"but the file is {found}; set segment.model_type to {other!r} or use the matching file")


#: the official image encoders: (embed dim, blocks), as in segment_anything's build_sam_vit_*
OFFICIAL_ENCODERS: dict[str, tuple[int, int]] = {"vit_h": (1280, 32), "vit_l": (1024, 24), "vit_b": (768, 12)}


def encoder_shape(state: dict) -> tuple[int, int] | None:
    """``(embed dim, blocks)`` of the image encoder in a SAM state dict; None if it has none."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if not isinstance(patch, torch.Tensor):
        return None
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    return int(patch.shape[0]), len(blocks)


def describe_encoder(shape: tuple[int, int] | None) -> str:
    """``"vit_b (embed dim 768, 12 blocks)"``; the official name only when the shape is one."""
    if shape is None:
        return "no SAM image encoder (no image_encoder.patch_embed.proj.weight)"
    names = [n for n, s in OFFICIAL_ENCODERS.items() if s == shape]
    return f"{names[0] + ' ' if names else ''}(embed dim {shape[0]}, {shape[1]} blocks)"


def check_sam_state(model_type: str, checkpoint: str | Path, state: dict) -> None:
    """Raise ValueError naming the file, the expected encoder and the one found, if they differ."""
    if model_type == "tiny":
        arch = read_architecture(Path(checkpoint).parent / CONFIG_NAME)
        expected = (arch.encoder_embed_dim, arch.encoder_depth)
        label = f"tiny {describe_encoder(expected)} per {Path(checkpoint).parent / CONFIG_NAME}"
    else:
        expected = OFFICIAL_ENCODERS[model_type]
        label = describe_encoder(expected)
    found = encoder_shape(state)
    if found != expected:
        raise ValueError(f"{checkpoint}: segment.model_type {model_type!r} expects a SAM {label}; "
                         f"the file holds {describe_encoder(found)}")


def load_sam(model_type: str, checkpoint: str | Path, device: str | torch.device = "cpu") -> Sam:
    """Build SAM ``model_type`` and load ``checkpoint`` (a raw state dict) strictly, in eval mode.

    The official ``sam_vit_{h,l,b}_*.pth`` and ``sam_hq_vit_{h,l,b}.pth``, and the tiny
    checkpoints, go through the same ``torch.load(weights_only=True)`` +
    ``load_state_dict(strict=True)`` path.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model_type {model_type!r}; expected one of {list(MODEL_TYPES)}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        hint = " (build it with the demo_models stage)" if model_type in TINY_TYPES else ""
        raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}{hint}")
    target = _torch_device(device)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    _check_family(model_type, checkpoint, state)
    if model_type != "hq_tiny":  # another model's file: named before anything is built (HQ: same encoders)
        check_sam_state(model_type.removeprefix("hq_"), checkpoint, state)
    sam = build_architecture(model_type, checkpoint)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{checkpoint} does not match the SAM architecture {model_type!r}: {e}"
        ) from e
    sam.eval().to(target)
    n_params = sum(p.numel() for p in sam.parameters())
    log.info("SAM %s: %.1fM parameters from %s on %s", model_type, n_params / 1e6, checkpoint, target)
    return sam
