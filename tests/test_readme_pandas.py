"""The README's pandas example runs, as written, on small tables of the stages' schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from pipeline.core.masks import encode_rle
from pipeline.core.schemas import CAPTIONS_SCHEMA, MASKS_SCHEMA, NOUNS_SCHEMA
from pipeline.core.tables import write_table

REPO = Path(__file__).resolve().parents[1]


def readme_pandas_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "import pandas as pd" in b]
    return block


def test_readme_pandas_example_runs(tmp_path: Path, monkeypatch, capsys):
    import numpy as np

    caps = [{"image_id": 1, "caption_id": 10, "file": "a.jpg", "path": "img/a.jpg", "width": 4, "height": 2,
             "mode": "RGB", "caption": "a dog and a cat on a dog bed", "official_nouns": None}]
    nouns = [{"noun_id": 10000 + i, "caption_id": 10, "image_id": 1, "noun_index": i, "text": t, "lemma": t,
              "start": 0, "end": 1, "token_indices": [i + 1], "truncated": False}
             for i, t in enumerate(["dog", "cat", "dog"])]
    half = np.zeros((2, 4), dtype=bool)
    half[:, :2] = True
    masks = [{"noun_id": 10000, "caption_id": 10, "image_id": 1, "text": "dog", "height": 2, "width": 4,
              "rle": encode_rle(half), "area": 4, "n_boxes": 1},
             {"noun_id": 10001, "caption_id": 10, "image_id": 1, "text": "cat", "height": 2, "width": 4,
              "rle": encode_rle(half[:1]), "area": 2, "n_boxes": 1}]
    write_table(pa.Table.from_pylist(caps, schema=CAPTIONS_SCHEMA), tmp_path / "data/captions/captions.parquet")
    write_table(pa.Table.from_pylist(nouns, schema=NOUNS_SCHEMA), tmp_path / "data/nouns/nouns.parquet")
    write_table(pa.Table.from_pylist(masks[:1], schema=MASKS_SCHEMA),
                tmp_path / "data/reference_masks/masks/part-00000.parquet")
    write_table(pa.Table.from_pylist(masks[1:], schema=MASKS_SCHEMA),
                tmp_path / "data/reference_masks/masks/part-00001.parquet")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_pandas_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"dog\s+2\n", out) and re.search(r"cat\s+1\n", out)   # value counts
    assert re.search(r"cat\s+0\.25\n", out) and re.search(r"dog\s+0\.50?\n", out)  # both shards read
