"""Profiles: every file under configs/ loads into the stages' typed configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError
from stages.profiles import available, use, validate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", available(REPO / "configs"))
def test_every_profile_validates(name: str):
    validate(REPO / "configs" / f"{name}.yaml")


def test_params_yaml_is_the_demo_profile():
    assert (REPO / "params.yaml").read_text() == (REPO / "configs" / "demo.yaml").read_text()


def test_paper_profile_has_the_paper_settings():
    p = yaml.safe_load((REPO / "configs" / "paper-sd14.yaml").read_text())
    assert p["ground"]["box_threshold"] == p["ground"]["text_threshold"] == 0.25
    assert (p["ground"]["image_size"], p["ground"]["max_size"]) == (800, 1333)
    assert p["ground"]["config"] == "GroundingDINO_SwinT_OGC.py"
    assert p["ground"]["phrase_rule"] == "official"
    assert p["segment"]["model_type"] == "hq_vit_h" and p["segment"]["checkpoint"].endswith("sam_hq_vit_h.pth")
    assert p["dataset"]["format"] == "tokencompose"
    assert (p["nouns"]["source"], p["nouns"]["occurrence"], p["nouns"]["token_rule"]) == ("official", "first", "official")
    assert p["captions"]["max_reject_share"] == p["nouns"]["max_reject_share"] == 0.01  # strict: 1%


def test_use_copies_a_valid_profile_and_refuses_a_broken_one(tmp_path: Path):
    configs = tmp_path / "configs"
    configs.mkdir()
    good = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    good["ground"]["box_threshold"] = 0.4
    (configs / "good.yaml").write_text(yaml.safe_dump(good))
    bad = dict(good, ground={**good["ground"], "box_treshold": 0.4})
    (configs / "bad.yaml").write_text(yaml.safe_dump(bad))
    target = tmp_path / "params.yaml"
    use("good", configs, target)
    assert yaml.safe_load(target.read_text())["ground"]["box_threshold"] == 0.4
    with pytest.raises(ConfigError, match="box_treshold"):
        use("bad", configs, target)
    assert yaml.safe_load(target.read_text())["ground"]["box_threshold"] == 0.4
    with pytest.raises(SystemExit, match="available: bad, good"):
        use("nope", configs, target)


def test_floats_as_dvc_exp_run_writes_them_are_read_as_floats():
    """`dvc exp run -S train.gamma_pixel=5e-5` writes `5e-05`, which YAML 1.1 reads as a string."""
    from pipeline.core.config import from_dict
    from pipeline.train.config import TrainConfig

    params = yaml.safe_load("gamma_pixel: 5e-05\nlambda_token: 1.0e-3\n")
    assert params["gamma_pixel"] == "5e-05"
    cfg = from_dict(TrainConfig, params, "train")
    assert cfg.gamma_pixel == 5e-5 and cfg.lambda_token == 1e-3
    with pytest.raises(ConfigError, match="expected float"):
        from_dict(TrainConfig, {"gamma_pixel": "lots"}, "train")


def test_paper_profile_evaluates_with_the_official_protocol():
    from pipeline.core.config import from_dict
    from pipeline.evaluate.config import EvaluateConfig
    from stages.profiles import resolve

    for name, res in (("paper-sd14", 512), ("paper-sd21", 768)):
        ev = from_dict(EvaluateConfig, resolve(REPO / "configs" / f"{name}.yaml")["evaluate"], name)
        g = ev.generation
        assert (g.steps, g.guidance_scale, g.resolution) == (50, 7.5, res)
        # Table 1 in one run: both MultiGen prompt sets, each with its own metrics key
        assert [(ps.bench, ps.out) for ps in ev.prompt_sets()] == [("multigen_coco", "multigen/coco"),
                                                                  ("multigen_ade20k", "multigen/ade20k")]
        for name, mg in ev.multigen.items():
            assert mg.prompts == f"data/multigen/{name}_obj_comp_5_1k.json" and mg.images_per_prompt == 10
            assert (mg.detector, mg.threshold) == ("google/owlv2-large-patch14-ensemble", 0.1)
        assert ev.fid_flickr30k is not None and ev.fid_flickr30k.features == "inception"
        assert ev.object_accuracy.detector == "google/owlvit-base-patch32" and len(ev.object_accuracy.categories) == 80
        # val2017 has 5,000 images: all of them as the real set, 2 captions each -> 10,000 generated
        assert (ev.fid.num_images, ev.fid.captions_per_image, ev.fid.features) == (5000, 2, "inception")
        assert set(ev.models) == {"base", "tokencompose"}


def test_nested_sections_are_typed_and_checked():
    from pipeline.core.config import from_dict
    from pipeline.evaluate.config import EvaluateConfig

    ev = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["evaluate"]
    cfg = from_dict(EvaluateConfig, ev, "evaluate")
    assert cfg.generation.steps == ev["generation"]["steps"] and cfg.models["base"] == ev["models"]["base"]
    bad = {**ev, "generation": {**ev["generation"], "stpes": 3}}
    with pytest.raises(ConfigError, match=r"evaluate\.generation: unknown key\(s\) \['stpes'\]"):
        from_dict(EvaluateConfig, bad, "evaluate")
    with pytest.raises(ConfigError, match="evaluate.models.base: expected str"):
        from_dict(EvaluateConfig, {**ev, "models": {"base": 3}}, "evaluate")
    with pytest.raises(ConfigError, match="keep_threshold <= threshold"):
        from_dict(EvaluateConfig, {**ev, "multigen": {**ev["multigen"], "keep_threshold": 0.5}}, "evaluate")


# Keys a rehearsal profile may change against its paper profile: model paths, data paths,
# counts, output folders and URLs. Anything else (resolutions, thresholds, supervised layers,
# losses, optimizer, precision, batch, accumulation, ...) must stay the paper's.
REHEARSAL_MAY_DIFFER = (
    "rehearsal_models.*", "coco_download.urls", "multigen_prompts.*", "*.out_dir",
    # data paths only: the data mode (format, selection, noun source, rules) is the paper's
    "dataset.captions", "dataset.coco_captions", "dataset.images_dir", "dataset.instances",
    "dataset.fid_captions", "dataset.fid_images_dir",
    "evaluate.multigen.*.prompts", "evaluate.fid_flickr30k.enabled",
    # model paths
    "ground.checkpoint", "ground.text_encoder", "segment.checkpoint", "train.pretrained",
    "evaluate.pretrained", "evaluate.models.*", "evaluate.multigen.*.detector",
    "evaluate.object_accuracy.detector",
    # counts
    "ground.shard_size", "segment.shard_size", "train.max_train_steps", "train.checkpointing_steps",
    "train.checkpoints_total_limit", "train.heatmap_steps", "train.heatmap_captions",
    "train.holdout_images", "train.card_samples", "train.card_sample_steps", "evaluate.grid_images", "evaluate.generation.steps",
    "evaluate.multigen.*.num_prompts", "evaluate.multigen.*.images_per_prompt",
    "evaluate.multigen.*.heatmap_prompts", "evaluate.object_accuracy.num_prompts",
    "evaluate.object_accuracy.images_per_prompt", "evaluate.fid.num_images", "evaluate.fid.captions_per_image",
    "evaluate.attention.holdout_images",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _forbidden_differences(rehearsal: dict, paper: dict) -> list[str]:
    import fnmatch

    a, b = _flatten(rehearsal), _flatten(paper)
    changed = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [k for k in changed if not any(fnmatch.fnmatchcase(k, p) for p in REHEARSAL_MAY_DIFFER)]


@pytest.mark.parametrize("variant,paper_name", [("sd14", "paper-sd14"), ("sd21", "paper-sd21"),
                                                ("sdxl", "sdxl-lora")])
def test_rehearsal_profile_differs_from_the_paper_only_in_paths_and_counts(variant: str, paper_name: str):
    from stages.profiles import resolve

    name = "rehearsal-sdxl-lora" if variant == "sdxl" else f"rehearsal-{variant}"
    rehearsal = resolve(REPO / "configs" / f"{name}.yaml")
    paper = resolve(REPO / "configs" / f"{paper_name}.yaml")
    assert _forbidden_differences(rehearsal, paper) == []
    t, p = rehearsal["train"], paper["train"]
    for key in ("resolution", "attn_blocks", "lambda_token", "gamma_pixel", "loss_mode", "learning_rate",
                "mixed_precision", "global_batch_size", "train_batch_size", "adapter", "lora_rank", "expect"):
        assert t[key] == p[key], key
    assert t["global_batch_size"] == 4 and t["max_train_steps"] >= 2
    assert rehearsal["ground"]["box_threshold"] == paper["ground"]["box_threshold"]
    assert f"models/rehearsal/{variant}" == t["pretrained"] == rehearsal["evaluate"]["pretrained"]
    assert variant in rehearsal["rehearsal_models"]["kinds"]
    assert rehearsal["dataset"]["format"] == "tokencompose" and rehearsal["captions"]["select"] == "all"
    # the check itself catches a changed setting, nested or not, the data mode included
    for key, value in (("ground", {"box_threshold": 0.3}), ("evaluate", {"generation": {"resolution": 256}}),
                       ("dataset", {"format": "coco"}), ("nouns", {"source": "spacy"}),
                       ("captions", {"select": "first_n"})):
        bad = {**rehearsal, key: {**rehearsal[key], **{k: {**rehearsal[key][k], **v} if isinstance(v, dict) else v
                                                      for k, v in value.items()}}}
        assert _forbidden_differences(bad, paper) != []


def test_rehearsal_profiles_read_the_shared_coco_subset():
    from stages.profiles import resolve

    for variant in ("sd14", "sd21"):
        p = resolve(REPO / "configs" / f"rehearsal-{variant}.yaml")
        d = p["dataset"]
        assert d["captions"].endswith("tokencompose-sample/metadata-coco-mini.jsonl")
        for path in (d["captions"], d["coco_captions"], d["images_dir"], d["instances"], d["fid_captions"],
                     d["fid_images_dir"],
                     *(m["prompts"] for m in p["evaluate"]["multigen"].values())):
            assert path.startswith("../shared/"), path
