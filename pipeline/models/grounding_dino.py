"""Grounding DINO: load a checkpoint, find boxes for each image's noun phrases.

Prompts. All distinct phrases of one image go into one lower-cased prompt
``"p1 . p2 . p3 ."``, the form the official pipeline and TokenCompose use (groundingdino's
``preprocess_caption`` turns ``"p1 . p2 . p3"`` into ``"p1 . p2 . p3."``, which BERT
tokenises identically). Inside a phrase, ``.`` and ``?`` (Grounding DINO's sub-sentence
separators) become spaces and runs of whitespace one space. Grounding DINO reads at most
``max_text_len`` = 256 tokens ([CLS] and [SEP] included) and silently truncates longer
prompts; an image whose phrases need more is given several prompts instead, phrases packed
greedily in their order, each prompt a forward of its own (the image is repeated in the batch).

Mapping boxes back to phrases. For each query the model gives a box and sigmoid
probabilities over the prompt's tokens. The tokenizer's offsets mapping gives each phrase's
token positions in the prompt. A phrase's score for a query is the maximum probability over
its tokens; the query is assigned to the phrase with the highest score (the first on ties),
and kept iff that score is > ``box_threshold`` (groundingdino's box rule, max token probability
> box threshold, restricted to phrase tokens) and > ``text_threshold``. No non-maximum
suppression is applied, as in the official pipeline, so several boxes per phrase are normal.
``Detection.phrase`` is what groundingdino's own ``get_phrases_from_posmap(prob >
text_threshold)`` decodes for the query, with [CLS], [SEP] and separators left out (as
upstream's later ``left_idx``/``right_idx`` arguments do), for inspection.

Batching. Images are preprocessed exactly as groundingdino's ``load_image`` (resize to
``image_size`` on the shorter side, capped at ``max_size`` on the longer, ToTensor, ImageNet
normalisation). Up to ``batch_size`` prompts share a forward, padded by groundingdino's
``nested_tensor_from_tensor_list`` -- but only prompts whose images have the same resized
size: Swin's windowed attention and the deformable attention's sampling see padding pixels,
so an image padded to a larger neighbour gets different boxes and scores than alone. Bucketing
by size keeps batched results equal to one-image results (COCO's images mostly share a few
sizes, so batches stay full there). Prompts of different lengths share a batch safely once
``fix_text_mask_batching`` (applied by ``load_grounding_dino``) has fixed the head/batch
order of groundingdino's text-enhancer attention mask.

Shapes: ``pred_logits`` (B, num_queries, 256), ``pred_boxes`` (B, num_queries, 4) as
normalised cxcywh relative to each image's unpadded size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

log = logging.getLogger(__name__)

PACKAGED_CONFIGS = ("GroundingDINO_SwinT_OGC.py", "GroundingDINO_SwinB_cfg.py")
HUB_TEXT_ENCODERS = ("bert-base-uncased",)

#: Keys the official checkpoints carry that the inference model lacks: the denoising label
#: embedding (training only) and BERT's position-id buffer (non-persistent in transformers >= 4.31).
BENIGN_UNEXPECTED_KEYS = frozenset({"label_enc.weight", "bert.embeddings.position_ids"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_TEXT_LEN = 256


@dataclass(frozen=True)
class GroundConfig:
    """The ``ground`` section of params.yaml."""

    config: str = "models/tiny/groundingdino/config.py"
    checkpoint: str = "models/tiny/groundingdino/groundingdino_tiny.pth"
    text_encoder: str = "models/tiny/bert"
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    image_size: int = 320
    max_size: int = 533
    batch_size: int = 4
    shard_size: int = 16
    device: str = "auto"
    out_dir: str = "data/ground"

    def validate(self) -> None:
        for name in ("box_threshold", "text_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ground.{name} must be in [0, 1), got {value}")
        for name in ("image_size", "max_size", "batch_size", "shard_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ground.{name} must be positive, got {getattr(self, name)}")
        if self.max_size < self.image_size:
            raise ValueError(f"ground.max_size ({self.max_size}) < ground.image_size ({self.image_size})")
        for name in ("config", "checkpoint", "text_encoder", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"ground.{name} is empty")


@dataclass(frozen=True)
class Detection:
    """One box for one of an image's phrases; ``box_xyxy`` in original image pixels."""

    phrase_index: int
    box_xyxy: tuple[float, float, float, float]
    score: float
    phrase: str


@dataclass(frozen=True)
class Prompt:
    """One text prompt: ``text`` holds the phrases ``phrase_indices`` at ``char_spans``."""

    text: str
    phrase_indices: tuple[int, ...]
    char_spans: tuple[tuple[int, int], ...]


# ----------------------------------------------------------------------------- loading

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


# ----------------------------------------------------------------------------- prompts

_SEPARATORS = re.compile(r"[.?]")


def normalize_phrase(phrase: str) -> str:
    """Lower-case, separators (``.``, ``?``) to spaces, single spaces; empty is an error."""
    text = " ".join(_SEPARATORS.sub(" ", phrase.lower()).split())
    if not text:
        raise ValueError(f"phrase {phrase!r} is empty after normalisation")
    return text


def build_prompts(phrases: Sequence[str], tokenizer, max_text_len: int = DEFAULT_MAX_TEXT_LEN) -> list[Prompt]:
    """Pack an image's phrases into as few ``"p1 . p2 ."`` prompts as fit ``max_text_len`` tokens."""
    cleaned = [normalize_phrase(p) for p in phrases]
    prompts: list[Prompt] = []
    budget = max_text_len - 2  # [CLS], [SEP]
    current: list[int] = []
    used = 0
    for i, text in enumerate(cleaned):
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_tokens == 0:
            raise ValueError(f"phrase {phrases[i]!r} has no tokens")
        cost = n_tokens + 1  # the phrase and its " ."
        if cost > budget:
            raise ValueError(f"phrase {phrases[i]!r} alone needs {cost + 2} > {max_text_len} tokens")
        if used + cost > budget:
            prompts.append(_make_prompt(cleaned, current))
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        prompts.append(_make_prompt(cleaned, current))
    return prompts


def _make_prompt(cleaned: list[str], indices: list[int]) -> Prompt:
    text, spans = "", []
    for i in indices:
        if text:
            text += " "
        spans.append((len(text), len(text) + len(cleaned[i])))
        text += cleaned[i] + " ."
    return Prompt(text=text, phrase_indices=tuple(indices), char_spans=tuple(spans))


def phrase_token_positions(tokenizer, text: str, char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions (in ``tokenizer(text)``, [CLS] = 0) covered by each character span."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("phrase spans need a fast tokenizer (offsets mapping); got a slow one")
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    positions = []
    for start, end in char_spans:
        pos = [k for k, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]
        if not pos:
            raise ValueError(f"no tokens for span {text[start:end]!r} in prompt {text!r}")
        positions.append(pos)
    return positions


# ----------------------------------------------------------------------------- inference


def preprocess_image(image: Image.Image, image_size: int, max_size: int) -> torch.Tensor:
    """groundingdino's ``load_image`` transform on a PIL image: (3, H, W) float, normalised."""
    import groundingdino.datasets.transforms as T

    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise ValueError(f"expected an RGB PIL image, got {getattr(image, 'mode', type(image).__name__)}")
    resized, _ = T.resize(image, None, image_size, max_size)
    tensor, _ = T.Compose([T.ToTensor(), T.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))])(resized, None)
    return tensor


def _batches(shapes: list[tuple[int, int]], batch_size: int | None) -> list[list[int]]:
    """Job indices grouped by image shape (first-seen order), chunked to ``batch_size``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for j, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(j)
    size = batch_size or len(shapes)
    return [idx[k : k + size] for idx in groups.values() for k in range(0, len(idx), size)]


@torch.inference_mode()
def ground_images(
    model: torch.nn.Module,
    images: Sequence[Image.Image],
    phrases: Sequence[Sequence[str]],
    box_threshold: float,
    text_threshold: float,
    image_size: int,
    max_size: int,
    device: str,
    batch_size: int | None = None,
) -> list[list[Detection]]:
    """Boxes for each image's phrases; ``result[i]`` lists image i's detections, best score first.

    ``phrases[i]`` are image i's distinct phrases; ``Detection.phrase_index`` indexes them.
    ``batch_size`` caps the prompts per forward (default: all that share an image size).
    """
    from groundingdino.util.misc import nested_tensor_from_tensor_list

    if len(images) != len(phrases):
        raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
    tokenizer = model.tokenizer
    max_text_len = getattr(model, "max_text_len", DEFAULT_MAX_TEXT_LEN)

    tensors = [preprocess_image(im, image_size, max_size) for im in images]
    jobs: list[tuple[int, Prompt]] = [
        (i, prompt) for i, ps in enumerate(phrases) if ps for prompt in build_prompts(ps, tokenizer, max_text_len)
    ]
    results: list[list[Detection]] = [[] for _ in images]
    shapes = [tuple(tensors[i].shape[-2:]) for i, _ in jobs]
    for batch in _batches(shapes, batch_size):
        samples = nested_tensor_from_tensor_list([tensors[jobs[j][0]] for j in batch]).to(device)
        captions = [jobs[j][1].text for j in batch]
        with quiet_groundingdino():
            out = model(samples, captions=captions)
        probs = out["pred_logits"].float().sigmoid().cpu()  # (B, nq, 256)
        boxes = out["pred_boxes"].float().cpu()  # (B, nq, 4) cxcywh in [0, 1]
        for b, j in enumerate(batch):
            i, prompt = jobs[j]
            width, height = images[i].size
            results[i].extend(
                _detections(probs[b], boxes[b], prompt, tokenizer, box_threshold, text_threshold, width, height)
            )
    for dets in results:
        dets.sort(key=lambda d: -d.score)
    return results


def _detections(
    probs: torch.Tensor,
    boxes: torch.Tensor,
    prompt: Prompt,
    tokenizer,
    box_threshold: float,
    text_threshold: float,
    width: int,
    height: int,
) -> list[Detection]:
    """One prompt's queries -> kept detections. ``probs`` (nq, 256), ``boxes`` (nq, 4) cxcywh."""
    from groundingdino.util.utils import get_phrases_from_posmap

    positions = phrase_token_positions(tokenizer, prompt.text, prompt.char_spans)
    phrase_scores = torch.stack([probs[:, pos].max(dim=1).values for pos in positions], dim=1)  # (nq, P)
    best_score, best = phrase_scores.max(dim=1)
    keep = (best_score > box_threshold) & (best_score > text_threshold)
    tokenized = tokenizer(prompt.text)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * scale
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    detections = []
    special = set(tokenizer.all_special_ids)
    words = torch.zeros(probs.shape[-1], dtype=torch.bool)
    words[: len(tokenized["input_ids"])] = torch.tensor([t not in special for t in tokenized["input_ids"]])
    for q in keep.nonzero().flatten().tolist():
        posmap = (probs[q] > text_threshold) & words
        text = get_phrases_from_posmap(posmap, tokenized, tokenizer).replace(".", "")
        detections.append(
            Detection(
                phrase_index=prompt.phrase_indices[int(best[q])],
                box_xyxy=tuple(float(v) for v in xyxy[q]),
                score=float(best_score[q]),
                phrase=" ".join(text.split()),
            )
        )
    return detections
