"""Grounding DINO: build the model from its config and load an official-format checkpoint.

The same code loads the released ``groundingdino_swint_ogc.pth`` with ``bert-base-uncased`` and
the tiny random model of the demo (``grounding_dino_tiny``). Inference on images and noun
phrases lives in ``pipeline.data.phrase_boxes``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import re
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PACKAGED_CONFIGS = ("GroundingDINO_SwinT_OGC.py", "GroundingDINO_SwinB_cfg.py")
HUB_TEXT_ENCODERS = ("bert-base-uncased",)

#: Keys the official checkpoints carry that the inference model lacks: the denoising label
#: embedding (training only) and BERT's position-id buffer (non-persistent in transformers >= 4.31).
BENIGN_UNEXPECTED_KEYS = frozenset({"label_enc.weight", "bert.embeddings.position_ids"})
DEFAULT_MAX_TEXT_LEN = 256


#: Third-party deprecation notices groundingdino-py 0.4.0 triggers on every load or forward
#: with current torch/timm/transformers; they say nothing about the results.
_KNOWN_NOISE = (
    "Importing from timm.models.layers is deprecated",
    "torch.meshgrid: in an upcoming release",
    "`torch.cuda.amp.autocast(args...)` is deprecated",
    "The `device` argument is deprecated",
)


@contextlib.contextmanager
def quiet_groundingdino():
    """Silence ``_KNOWN_NOISE`` warnings (only those) inside the block."""
    with warnings.catch_warnings():
        for message in _KNOWN_NOISE:
            warnings.filterwarnings("ignore", message=re.escape(message))
        yield



def resolve_config_path(config: str | Path) -> Path:
    """A config file path, or the name of one shipped in the groundingdino package."""
    if str(config) in PACKAGED_CONFIGS:
        import groundingdino

        return Path(groundingdino.__file__).parent / "config" / str(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(
            f"Grounding DINO config not found: {path} (or name a packaged one: {list(PACKAGED_CONFIGS)})"
        )
    return path


def _check_text_encoder(text_encoder: str) -> None:
    if text_encoder in HUB_TEXT_ENCODERS or Path(text_encoder).is_dir():
        return
    raise FileNotFoundError(
        f"text encoder folder not found: {text_encoder!r} (or give the hub id {HUB_TEXT_ENCODERS[0]!r})"
    )


def read_checkpoint(checkpoint_path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official-format checkpoint ``{"model": state_dict, ...}``."""
    from groundingdino.util.misc import clean_state_dict

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"Grounding DINO checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path}: not loadable with weights_only=True (it pickles more than tensors); "
            f"re-save it as {{'model': state_dict}} from a trusted environment"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected {{'model': state_dict}} (official format), got {keys}")
    return clean_state_dict(ckpt["model"])


def load_grounding_dino(
    config_path: str | Path, checkpoint_path: str | Path, text_encoder: str, device: str
) -> torch.nn.Module:
    """Build Grounding DINO from ``config_path`` with ``text_encoder`` and load the checkpoint.

    The same path serves the real ``groundingdino_swint_ogc.pth`` + ``bert-base-uncased`` and the
    tiny model. ``text_encoder`` (a local BERT folder or ``bert-base-uncased``) overrides the
    config's ``text_encoder_type``. Activation checkpointing (``use_checkpoint``,
    ``use_transformer_ckpt``: recomputation for training, no effect on outputs) is switched
    off, since at inference it only adds torch.utils.checkpoint warnings. Missing keys and
    unexpected keys other than ``BENIGN_UNEXPECTED_KEYS`` are errors. Returns the model in
    eval mode on ``device``.
    """
    config_file = resolve_config_path(config_path)
    _check_text_encoder(text_encoder)
    state = read_checkpoint(checkpoint_path)

    with quiet_groundingdino(), contextlib.redirect_stdout(io.StringIO()) as captured:
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig

        args = SLConfig.fromfile(str(config_file))
        args.device = device
        args.text_encoder_type = text_encoder
        args.use_checkpoint = False
        args.use_transformer_ckpt = False
        model = build_model(args)
    for line in captured.getvalue().splitlines():
        log.debug("groundingdino: %s", line)

    result = model.load_state_dict(state, strict=False)
    unexpected = sorted(set(result.unexpected_keys) - BENIGN_UNEXPECTED_KEYS)
    if result.missing_keys or unexpected:
        raise RuntimeError(
            f"{checkpoint_path} does not match {config_file}: "
            f"missing keys {result.missing_keys[:20]} ({len(result.missing_keys)}), "
            f"unexpected keys {unexpected[:20]} ({len(unexpected)})"
        )
    if result.unexpected_keys:
        log.info("ignored checkpoint keys not used at inference: %s", sorted(result.unexpected_keys))
    fix_text_mask_batching(model)
    model.eval().to(device)
    log.info("loaded Grounding DINO %s (%s, text encoder %s) on %s", checkpoint_path, config_file.name,
             text_encoder, device)
    return model


def fix_text_mask_batching(model: torch.nn.Module) -> int:
    """Make the text-enhancer layers' attention masks follow PyTorch's (batch, head) order.

    groundingdino's text-enhancer layer expands its (B, L, L) sub-sentence mask with
    ``mask.repeat(nhead, 1, 1)``, i.e. in (head, batch) order, while ``nn.MultiheadAttention``
    reads (batch, head) order; with two or more different prompts in a batch each prompt gets
    parts of another prompt's mask. A forward pre-hook on each of this model's text layers
    expands the mask with ``repeat_interleave`` first (the layer then leaves it alone), which
    is identical for batch size 1. Returns the number of layers hooked.
    """
    layers = list(getattr(model.transformer.encoder, "text_layers", []))
    for layer in layers:
        if getattr(layer, "_pipeline_mask_fix", False):
            continue
        layer.register_forward_pre_hook(_interleave_text_mask, with_kwargs=True)
        layer._pipeline_mask_fix = True
    return len(layers)


def _interleave_text_mask(layer: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    mask, src = kwargs.get("src_mask"), kwargs.get("src")
    if mask is not None and src is not None and mask.dim() == 3 and mask.shape[0] == src.shape[1]:
        kwargs = {**kwargs, "src_mask": mask.repeat_interleave(layer.nhead, dim=0)}
    return args, kwargs
