"""Stable Diffusion's CLIP tokenizer, built offline from the real CLIP BPE vocabulary.

SD v1.x (``CompVis/stable-diffusion-v1-4``, subfolder ``tokenizer``) uses OpenAI CLIP's
byte-level BPE: 49,408 ids = 256 byte symbols + the same with ``</w>`` + 48,894 merges +
``<|startoftext|>`` (49406) + ``<|endoftext|>`` (49407). The merges ship inside the
``open-clip-torch`` wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``); from them
``build_clip_tokenizer`` writes ``vocab.json`` + ``merges.txt`` exactly as OpenAI's
``SimpleTokenizer`` builds its tables, so ids match SD's tokenizer one for one.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import logging
from pathlib import Path

from transformers import CLIPTokenizer, CLIPTokenizerFast

log = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77  # the text sequence: start token at 0, content at 1..75, end token
#: the last position a caption's content token can take (75): start at 0, end token after it
LAST_CONTENT_POSITION = MODEL_MAX_LENGTH - 2
NUM_MERGES = 49152 - 256 - 2  # 48,894, as in OpenAI's SimpleTokenizer

# Strings on which the fast (Rust) tokenizer must give the slow one's ids before it is saved.
_PROBES = (
    "a photo of a cat",
    "An older woman sitting in a wheel chair holding a big white teddy bear.",
    "A cat is walking toward a Coca-Cola bottle. ",
    "A man's  dog\tand   3 kittens, 12 apples!",
    "Café crème on a table",
    "A naïve 🐶 dog",
    "HELLO   World... <b>bold</b> & 'quoted' words; don't won't it'll we're",
)


def bpe_vocab_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip`` package."""
    try:
        ref = importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    except ModuleNotFoundError as e:
        raise FileNotFoundError("open-clip-torch is not installed; it ships the CLIP BPE vocabulary") from e
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary not found in open_clip: {path}")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable unicode character table of GPT-2 / CLIP byte-level BPE (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Rebuild CLIP's ``(vocab, merges)``: vocab token -> id (49,408 entries), merges as ``"a b"`` lines."""
    bpe_path = Path(bpe_path) if bpe_path is not None else bpe_vocab_path()
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    if len(merges) != NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{bpe_path}: expected {NUM_MERGES} merge lines of two symbols each")
    symbols = list(bytes_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols]
    symbols.extend("".join(m.split()) for m in merges)
    symbols.extend([BOS, EOS])
    vocab = {s: i for i, s in enumerate(symbols)}
    if len(vocab) != VOCAB_SIZE or vocab[BOS] != BOS_ID or vocab[EOS] != EOS_ID:
        raise ValueError(f"rebuilt CLIP vocabulary is inconsistent: {len(vocab)} entries")
    return vocab, merges


def _fast_matches_slow(fast: CLIPTokenizerFast, slow: CLIPTokenizer) -> bool:
    for text in _PROBES:
        if fast(text)["input_ids"] != slow(text)["input_ids"]:
            log.warning("fast CLIP tokenizer differs from the slow one on %r", text)
            return False
    return True


def build_clip_tokenizer(out_dir: str | Path, save_fast: bool = True) -> Path:
    """Write SD v1.4's CLIP tokenizer to ``out_dir`` and return it.

    Files: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``
    (what ``CLIPTokenizer.from_pretrained(out_dir)`` reads), plus ``tokenizer.json`` (the fast
    tokenizer) when ``save_fast`` and the converted fast tokenizer reproduces the slow one's ids.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    vocab_file = out_dir / "vocab.json"
    merges_file = out_dir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")

    slow = CLIPTokenizer(
        vocab_file=str(vocab_file),
        merges_file=str(merges_file),
        errors="replace",
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=MODEL_MAX_LENGTH,
        do_lower_case=True,
        add_prefix_space=False,
    )
    slow.save_pretrained(out_dir)
    (out_dir / "tokenizer.json").unlink(missing_ok=True)
    if save_fast:
        fast = CLIPTokenizerFast.from_pretrained(out_dir)
        if _fast_matches_slow(fast, slow):
            fast.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
        else:
            log.warning("not saving tokenizer.json: the converted fast tokenizer does not match")
    log.info("CLIP tokenizer (%d ids) written to %s", len(vocab), out_dir)
    return out_dir


def load_clip_tokenizer(
    name_or_path: str | Path, subfolder: str | None = None, fast: bool = False
) -> CLIPTokenizer | CLIPTokenizerFast:
    """Load SD's tokenizer from a folder or a hub id (+ ``subfolder``, e.g. ``"tokenizer"``).

    ``fast=False`` gives ``CLIPTokenizer`` (what SD's training scripts use); ``fast=True`` gives
    ``CLIPTokenizerFast``, converted from the slow files when the folder has no ``tokenizer.json``.
    """
    cls = CLIPTokenizerFast if fast else CLIPTokenizer
    path = Path(name_or_path)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if path.exists():
        folder = path / subfolder if subfolder else path
        if not (folder / "vocab.json").is_file():
            raise FileNotFoundError(f"no CLIP tokenizer (vocab.json) in {folder}")
        tok = cls.from_pretrained(folder)
    else:
        tok = cls.from_pretrained(str(name_or_path), **kwargs)
    if len(tok) != VOCAB_SIZE or tok.bos_token_id != BOS_ID or tok.eos_token_id != EOS_ID:
        raise ValueError(f"{name_or_path}: not a CLIP tokenizer ({len(tok)} ids, bos {tok.bos_token_id})")
    return tok
