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
