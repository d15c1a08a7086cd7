"""Every profile's counts fit its data: checked from published sizes without the data, and from disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError
from pipeline.core.satisfiable import (
    KNOWN_SIZES,
    check_params,
    data_size,
    require_satisfiable,
)
from stages.profiles import available, resolve, use, validate

REPO = Path(__file__).resolve().parents[1]
PAPER = ("paper-sd14", "paper-sd21")


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """Run from an empty folder: every size comes from KNOWN_SIZES."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_published_sizes():
    assert (KNOWN_SIZES["captions_train2017.json"].images, KNOWN_SIZES["captions_val2017.json"].images) == (118_287, 5_000)
    assert KNOWN_SIZES["captions_val2017.json"].captions == 25_014
    assert KNOWN_SIZES["coco_obj_comp_5_1k.json"].prompts == KNOWN_SIZES["ade20k_obj_comp_5_1k.json"].prompts == 1_000


@pytest.mark.parametrize("name", available(REPO / "configs"))
def test_every_profile_fits_the_known_sizes(name, no_data):
    params = resolve(REPO / "configs" / f"{name}.yaml")
    assert check_params(params) == []


@pytest.mark.parametrize("name", PAPER)
def test_paper_profiles_are_checked_against_published_sizes(name, no_data):
    params = resolve(REPO / "configs" / f"{name}.yaml")
    assert data_size(params["dataset"]["fid_captions"]).source == "known"
    too_many = json.loads(json.dumps(params))
    too_many["evaluate"]["fid"].update(num_images=10_000, captions_per_image=1)   # the old, impossible setting
    too_many["evaluate"]["multigen"]["ade20k"]["num_prompts"] = 1_001
    too_many["evaluate"]["fid"]["captions_per_image"] = 6
    too_many["train"]["holdout_images"] = 4_526
    problems = "\n".join(check_params(too_many))
    assert "evaluate.fid.num_images (real images) = 10000" in problems and "holds 5000 (published size)" in problems
    assert "captions_per_image = 6" in problems
    assert "evaluate.multigen.ade20k.num_prompts = 1001 but data/multigen/ade20k_obj_comp_5_1k.json holds 1000" in problems
    assert "train.holdout_images" in problems and "holds 4526" in problems


def test_profiles_use_refuses_an_unsatisfiable_profile(tmp_path, no_data):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "paper-sd14.yaml").write_text((REPO / "configs" / "paper-sd14.yaml").read_text())
    (configs / "bad.yaml").write_text(yaml.safe_dump({"base": "paper-sd14", "evaluate": {"fid": {"num_images": 10_000}}}))
    target = tmp_path / "params.yaml"
    with pytest.raises(ConfigError, match="evaluate.fid.num_images"):
        use("bad", configs, target)
    assert not target.exists()
    use("paper-sd14", configs, target)
    validate(configs / "paper-sd14.yaml")


def test_sizes_on_disk_win_over_published_ones(coco_mini, tmp_path, monkeypatch):
    captions = coco_mini / "annotations" / "captions_train2017.json"
    size = data_size(captions)
    assert (size.source, size.images, size.captions) == ("disk", 80, 400) and size.min_captions_per_image >= 5
    params = {"captions": {"source": str(captions), "select": "first_n", "first_n": 401}}
    assert check_params(params) == [f"captions.first_n = 401 but {captions} holds 400 (on disk)"]
    with pytest.raises(ConfigError, match="first_n = 401"):
        require_satisfiable(params)
    params = {"captions": {"source": str(captions), "select": "all"}, "train": {"holdout_images": 80}}
    assert check_params(params) == [f"train.holdout_images (+ 1 training image) = 81 but {captions} holds 80 (on disk)"]
    params["train"]["holdout_images"] = 79
    assert check_params(params) == []


def test_object_accuracy_pool(no_data):
    params = {"evaluate": {"object_accuracy": {"categories": ["cat", "dog", "cow"], "relations": ["above"],
                                               "num_prompts": 7}}}
    expected = "evaluate.object_accuracy.num_prompts = 7 but 3 categories x 1 relations give 6 prompts"
    assert check_params(params) == [expected]


def test_a_stage_checks_its_own_counts_only(no_data):
    params = resolve(REPO / "configs" / "paper-sd14.yaml")
    params["evaluate"]["fid"]["num_images"] = 10_000
    assert check_params(params, only=("captions", "train")) == []
    assert len(check_params(params, only=("evaluate",))) == 1


def test_evaluation_may_hold_out_every_image_and_picks_what_train_holds_out():
    from types import SimpleNamespace

    from pipeline.train.holdout import split_holdout

    examples = [SimpleNamespace(image_id=i // 2) for i in range(6)]  # 3 images, 2 captions each
    _, train_held = split_holdout(examples, 1, seed=7)
    _, eval_held = split_holdout(examples, 1, seed=7, name="evaluate.attention.holdout_images", keep_training=False)
    assert eval_held == train_held and len(train_held) == 2
    with pytest.raises(ConfigError, match=r"train.holdout_images=3 leaves no training image"):
        split_holdout(examples, 3, seed=7)
    kept, held = split_holdout(examples, 3, seed=7, name="evaluate.attention.holdout_images", keep_training=False)
    assert kept == [] and len(held) == 6
    with pytest.raises(ConfigError, match=r"evaluate.attention.holdout_images=4 asks for more"):
        split_holdout(examples, 4, seed=7, name="evaluate.attention.holdout_images", keep_training=False)


@pytest.mark.parametrize("name", PAPER)
def test_a_captions_table_another_profile_left_on_disk_does_not_judge_a_paper_profile(name, no_data):
    """After `make repro` (the demo: 48 captions on disk) a paper profile still validates: its
    captions stage will rebuild that table from the 4,526-line list."""
    import pyarrow as pa

    from pipeline.core.tables import write_table

    write_table(pa.table({"image_id": [1, 2], "caption_id": [1, 2]}), no_data / "data/captions/captions.parquet")
    params = resolve(REPO / "configs" / f"{name}.yaml")
    assert params["evaluate"]["attention"]["holdout_images"] > 2 and check_params(params) == []
