"""A tiny, randomly initialised Grounding DINO in the official on-disk formats.

``build_tiny_grounding_dino(out_dir, seed)`` writes::

    out_dir/bert/                          a tiny BERT (config.json, model.safetensors)
                                           and an uncased WordPiece tokenizer (vocab.txt, ...)
    out_dir/groundingdino/config.py        a groundingdino-py SLConfig file
    out_dir/groundingdino/groundingdino_tiny.pth   {"model": state_dict}, torch.save

so that the tiny model loads through exactly the code that loads the real
``groundingdino_swint_ogc.pth`` + ``bert-base-uncased`` (``pipeline.models.grounding_dino.load_grounding_dino``).

The WordPiece vocabulary is built offline from the whole English words of the CLIP BPE
vocabulary that ships inside the open-clip-torch wheel (the real bert-base-uncased vocab is
not available without the hub), plus BERT's special tokens, ASCII punctuation, and single
characters with their ``##`` continuations, so every lower-case ASCII word tokenises
(common nouns such as "teddy", "giraffe" as one token, rarer ones into pieces).

Score calibration. Grounding DINO's class head (``ContrastiveEmbed``) has no parameters: a
query's logit for text token ``k`` is the dot product ``hs . t_k`` of the decoder output
``hs = LayerNorm_dec(x)`` and the text feature ``t_k = LayerNorm_text(y_k)`` of the last
text-enhancer layer. With random weights these dot products of two 256-d unit-variance
vectors spread over about +-15, so sigmoid scores are all ~0 or ~1 and the 0.25 thresholds
mean nothing. After random init the builder sets the affine parameters of those two
LayerNorms to constants: decoder norm weight ``alpha``, bias ``beta``; text norm weight 1,
bias ``delta = 1``. A LayerNorm's normalised output sums to zero over its channels, so the
logit becomes exactly ``alpha * (u . v) + D * beta * delta`` (``u``, ``v`` the normalised
vectors, ``D`` the hidden size): an affine map of the random dot product, and nothing
upstream of the class logits changes with ``alpha`` or ``beta``. The builder measures each
query's box score (max over the prompt's word tokens) on a fixed calibration set (four
synthetic images x two prompts) and solves for ``alpha`` and ``beta`` so that 15 % of those
queries score above 0.25 and 7 % above 0.3 (``KEEP_FRACTIONS``); box scores then spread over
about [0.07, 0.35] there (5-95 %), and a demo gets some boxes at 0.25 and fewer at 0.3.
Images unlike the calibration set shift the whole distribution (real photos: ~5-35 of the 50
queries pass 0.25).

Box head. Grounding DINO zero-initialises the last layer of its box MLP, so a random model's
boxes are its encoder's anchor squares (5-40 % of the image side, mostly the smallest).
The builder gives that layer small random weights and a positive width/height bias, so the
boxes vary in position and aspect and typically cover 15-60 % of the image side.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import re
import string
from pathlib import Path

import torch

from pipeline.core.images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

BERT_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    type_vocab_size=2,
)

#: Settings that differ from the package's GroundingDINO_SwinT_OGC.py (Swin-T is the
#: smallest backbone groundingdino-py supports; hidden_dim stays 256).
TINY_OVERRIDES = dict(
    enc_layers=1,
    dec_layers=2,
    num_queries=50,
    dim_feedforward=256,
    use_checkpoint=False,
    use_transformer_ckpt=False,
)

#: Fraction of the calibration set's queries whose box score should exceed each threshold.
KEEP_FRACTIONS = {0.25: 0.15, 0.3: 0.07}
TEXT_NORM_BIAS = 1.0
BOX_WEIGHT_STD = 0.5
BOX_WH_BIAS = 0.75

CHECKPOINT_NAME = "groundingdino_tiny.pth"
CALIBRATION_PROMPTS = (
    "teddy bear . traffic light . banana .",
    "a man . surfboard . wave . umbrella . giraffe .",
)
CALIBRATION_SIZES = ((427, 320), (320, 427), (480, 320), (320, 320))  # (width, height)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file shipped in the open-clip-torch wheel."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found in open-clip-torch: {path}")
    return path


def english_words_from_clip_bpe(path: str | Path | None = None) -> list[str]:
    """Whole lower-case ASCII words of CLIP's vocabulary, in CLIP's merge (frequency) order.

    CLIP's tokenizer uses the first 49152 - 256 - 2 merges of the file; a merge whose result
    ends with ``</w>`` is a whole word.
    """
    path = Path(path) if path is not None else clip_bpe_path()
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    words: list[str] = []
    seen: set[str] = set()
    for merge in merges:
        parts = merge.split()
        if len(parts) != 2:
            continue
        token = parts[0] + parts[1]
        if not token.endswith("</w>"):
            continue
        word = token[: -len("</w>")]
        if word.isascii() and word.isalpha() and word.islower() and word not in seen:
            seen.add(word)
            words.append(word)
    return words


def wordpiece_vocab(words: list[str]) -> list[str]:
    """BERT-style vocabulary: specials, punctuation, characters, ``##`` characters, words."""
    chars = list(string.ascii_lowercase + string.digits)
    vocab = SPECIAL_TOKENS + list(string.punctuation) + chars + [f"##{c}" for c in chars]
    present = set(vocab)
    vocab += [w for w in words if w not in present]
    return vocab


def build_tiny_bert(out_dir: str | Path, seed: int) -> Path:
    """Write a tiny BERT + uncased WordPiece tokenizer to ``out_dir``; return ``out_dir``.

    ``AutoTokenizer.from_pretrained(out_dir)`` and ``BertModel.from_pretrained(out_dir)``
    load it, which is what groundingdino-py does with ``text_encoder_type``.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocab(english_words_from_clip_bpe())
    vocab_file = out_dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(out_dir)

    config = BertConfig(vocab_size=len(vocab), **BERT_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    log.info("tiny BERT: %d words in vocab, %d parameters -> %s", len(vocab),
             sum(p.numel() for p in model.parameters()), out_dir)
    return out_dir


def packaged_config_path(name: str = "GroundingDINO_SwinT_OGC.py") -> Path:
    """A config file shipped inside the groundingdino package."""
    import groundingdino

    path = Path(groundingdino.__file__).parent / "config" / name
    if not path.exists():
        raise FileNotFoundError(f"no config {name!r} in the groundingdino package: {path}")
    return path


def tiny_config_text(text_encoder: str) -> str:
    """The package's SwinT-OGC config with ``TINY_OVERRIDES`` and ``text_encoder_type`` set."""
    text = packaged_config_path().read_text()
    overrides = {**TINY_OVERRIDES, "text_encoder_type": str(text_encoder)}
    for key, value in overrides.items():
        pattern = re.compile(rf"^{key} = .*$", flags=re.MULTILINE)
        text, n = pattern.subn(f"{key} = {value!r}", text)
        if n != 1:
            raise RuntimeError(f"expected one line '{key} = ...' in the packaged config, found {n}")
    return text


def _calibration_images() -> list[torch.Tensor]:
    """Deterministic synthetic images of several styles and sizes, normalised: (3, H, W) each."""
    g = torch.Generator().manual_seed(1234)
    images = []
    for k, (w, h) in enumerate(CALIBRATION_SIZES):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        if k % 2 == 0:  # smooth gradient with noise
            img = torch.stack([xx, yy, (xx + yy) / 2]) * 0.6 + 0.4 * torch.rand(3, h, w, generator=g)
        else:  # flat rectangles on a flat background
            img = torch.rand(3, 1, 1, generator=g).expand(3, h, w).clone()
            for _ in range(4):
                x0, y0 = (torch.rand(2, generator=g) * torch.tensor([w * 0.7, h * 0.7])).int().tolist()
                bw, bh = (torch.rand(2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 16).int().tolist()
                img[:, y0 : y0 + bh, x0 : x0 + bw] = torch.rand(3, 1, 1, generator=g)
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        images.append((img - mean) / std)
    return images


def _query_scores(model: torch.nn.Module) -> torch.Tensor:
    """Per query, the max logit over the prompt's word tokens, over the calibration set: (N,)."""
    from groundingdino.util.misc import nested_tensor_from_tensor_list

    special = set(model.specical_tokens)
    scores = []
    for image in _calibration_images():
        for prompt in CALIBRATION_PROMPTS:
            with torch.inference_mode():
                out = model(nested_tensor_from_tensor_list([image]), captions=[prompt])
            ids = model.tokenizer(prompt)["input_ids"]
            words = [i for i, t in enumerate(ids) if t not in special]
            scores.append(out["pred_logits"][0][:, words].max(dim=1).values)
    return torch.cat(scores)


def calibrate_scores(model: torch.nn.Module) -> tuple[float, float]:
    """Set the decoder/text LayerNorm affines so box scores straddle 0.25 and 0.3.

    On the calibration set, a fraction ``KEEP_FRACTIONS[t]`` of all queries ends up with a
    box score (max sigmoid over word tokens) above ``t``. Returns ``(alpha, beta)`` (see the
    module docstring); the class logits are exactly affine in them.
    """
    dec_norm = model.transformer.decoder.norm
    text_norm = model.transformer.encoder.text_layers[-1].norm2
    hidden = dec_norm.weight.numel()
    with torch.no_grad():
        text_norm.weight.fill_(1.0)
        text_norm.bias.fill_(TEXT_NORM_BIAS)
        dec_norm.weight.fill_(1.0)
        dec_norm.bias.fill_(0.0)
    raw = _query_scores(model)
    (t_lo, f_lo), (t_hi, f_hi) = sorted(KEEP_FRACTIONS.items())
    r_lo, r_hi = torch.quantile(raw, torch.tensor([1 - f_lo, 1 - f_hi])).tolist()
    alpha = (_logit(t_hi) - _logit(t_lo)) / (r_hi - r_lo)
    offset = _logit(t_lo) - alpha * r_lo
    beta = offset / (hidden * TEXT_NORM_BIAS)
    with torch.no_grad():
        dec_norm.weight.fill_(alpha)
        dec_norm.bias.fill_(beta)
    scores = torch.sigmoid(alpha * raw + offset)
    log.info(
        "score calibration: alpha %.4f beta %.5f; calibration box scores 5/50/95%%: %.3f %.3f %.3f, "
        "kept at %.2f: %.1f%%, at %.2f: %.1f%%",
        alpha, beta, *torch.quantile(scores, torch.tensor([0.05, 0.5, 0.95])).tolist(),
        t_lo, 100 * float((scores > t_lo).float().mean()), t_hi, 100 * float((scores > t_hi).float().mean()),
    )
    return alpha, beta


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def randomise_box_head(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give the (zero-initialised) last box-MLP layer random weights and a w/h bias."""
    last = model.bbox_embed[0].layers[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * BOX_WEIGHT_STD
                          / last.weight.shape[1] ** 0.5)
        last.bias.copy_(torch.tensor([0.0, 0.0, BOX_WH_BIAS, BOX_WH_BIAS]))


def build_tiny_grounding_dino(out_dir: str | Path, seed: int) -> dict[str, Path]:
    """Write the tiny BERT, config and checkpoint under ``out_dir``; return their paths.

    Keys: ``bert`` (folder), ``config`` (``groundingdino/config.py``), ``checkpoint``
    (``groundingdino/groundingdino_tiny.pth``). The config's ``text_encoder_type`` is the
    BERT folder path as given (relative to the working directory if ``out_dir`` is
    relative); ``load_grounding_dino`` overrides it anyway. Same seed -> same state dict.
    """
    from pipeline.models.grounding_dino import quiet_groundingdino

    out_dir = Path(out_dir)
    bert_dir = build_tiny_bert(out_dir / "bert", seed)
    gd_dir = out_dir / "groundingdino"
    gd_dir.mkdir(parents=True, exist_ok=True)
    config_path = gd_dir / "config.py"
    config_path.write_text(tiny_config_text(str(bert_dir)))

    with quiet_groundingdino(), contextlib.redirect_stdout(io.StringIO()) as captured:
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig

        args = SLConfig.fromfile(str(config_path))
        args.device = "cpu"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(args)
        model.eval()
        randomise_box_head(model, torch.Generator().manual_seed(seed + 1))
        calibrate_scores(model)
    for line in captured.getvalue().splitlines():
        log.debug("groundingdino: %s", line)

    checkpoint_path = gd_dir / CHECKPOINT_NAME
    tmp = checkpoint_path.with_name(f".{checkpoint_path.name}.tmp")
    torch.save({"model": model.state_dict()}, tmp)
    tmp.replace(checkpoint_path)
    log.info("tiny Grounding DINO: %d parameters -> %s",
             sum(p.numel() for p in model.parameters()), checkpoint_path)
    return {"bert": bert_dir, "config": config_path, "checkpoint": checkpoint_path}
