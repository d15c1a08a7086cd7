"""The official training list's figures beside a rebuilt dataset's counts."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.core.official_list import OFFICIAL, beside_official, paper_data_mode


def test_counts_beside_the_official_figures():
    out = beside_official(captions=4526, masked_nouns=6817)
    assert out == {"official_list": {"captions": {"here": 4526, "official": 4526, "ratio": 1.0},
                                     "masked_nouns": {"here": 6817, "official": 13634, "ratio": 0.5}}}
    assert OFFICIAL == {"captions": 4526, "nouns": 15156, "masked_nouns": 13634}
    with pytest.raises(ValueError, match="no official figure"):
        beside_official(images=3)
    with pytest.raises(ValueError, match="expected a count"):
        beside_official(nouns=-1)


def test_paper_data_mode_is_read_from_the_captions_table():
    def table(official):
        return pa.table({"image_id": pa.array([1] * len(official), pa.int64()),
                         "official_nouns": pa.array(official, pa.string())})

    assert paper_data_mode(table(['[["dog", null]]', None]))
    assert not paper_data_mode(table([None, None]))
    assert not paper_data_mode(table([]))
    assert not paper_data_mode(pa.table({"image_id": [1]}))


def test_official_summary_only_in_the_paper_data_mode(tmp_path):
    from pipeline.core.official_list import official_summary
    from pipeline.core.tables import write_table

    paper = pa.table({"image_id": pa.array([1], pa.int64()), "official_nouns": pa.array(['[["dog", "m.png"]]'])})
    coco = pa.table({"image_id": pa.array([1], pa.int64()), "official_nouns": pa.array([None], pa.string())})
    write_table(paper, tmp_path / "paper.parquet")
    write_table(coco, tmp_path / "coco.parquet")
    assert official_summary(tmp_path / "paper.parquet", captions=1, masked_nouns=1)["official_list"]["captions"] == {
        "here": 1, "official": 4526, "ratio": 0.0002}
    assert official_summary(str(tmp_path / "coco.parquet"), captions=1) == {}
    assert official_summary(paper, masked_nouns=2)["official_list"]["masked_nouns"]["here"] == 2
