"""Rehearsal models: the paper's architectures at small cost (meta device), one real round trip,
the rehearsal runner's plan, and the GPU report's --quick mode on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from stagerun import REPO, run_stage


def test_paper_architectures_have_the_published_parameter_counts():
    from pipeline.models.rehearsal import param_counts

    counts = param_counts()
    assert counts["sd14_unet"] == 859_520_964          # SD1.4's 859.5M UNet
    assert counts["sd14_vae"] == counts["sd21_vae"] == 83_653_863
    assert counts["sd14_text_encoder"] == 123_060_480  # CLIP ViT-L/14 text tower
    assert counts["sd21_unet"] == 865_910_724
    assert counts["sd21_text_encoder"] == 340_387_840  # OpenCLIP ViT-H/14 text tower, 23 layers
    assert counts["sam_vit_h"] == 641_090_608          # image encoder 637M + prompt encoder + decoder
    assert 430e6 < counts["owlv2_large"] < 440e6 and 150e6 < counts["owlvit_base"] < 155e6


def test_sdxl_architecture_has_the_published_parameter_counts():
    from pipeline.models.rehearsal import SDXL_PARTS, check_sdxl_parts, param_counts

    counts = param_counts(kinds=("sdxl",))
    assert counts == {"sdxl_unet": 2_567_463_684, "sdxl_vae": 83_653_863,
                      "sdxl_text_encoder": 123_060_480,       # CLIP ViT-L/14 text tower
                      "sdxl_text_encoder_2": 694_659_840}     # OpenCLIP ViT-bigG/14 text tower + projection
    check_sdxl_parts(SDXL_PARTS)  # cross-attention 2048 = 768 + 1280, added embedding 2816 = 6 x 256 + 1280


def test_sdxl_is_a_kind_the_config_accepts():
    from pipeline.core.config import ConfigError
    from pipeline.models.rehearsal import KINDS, RehearsalModelsConfig

    assert KINDS[-1] == "sdxl"  # appended: the other kinds keep their seeds
    RehearsalModelsConfig(kinds=("sd14", "sdxl")).validate()
    with pytest.raises(ConfigError, match="unknown \\['sdxl_refiner'\\]"):
        RehearsalModelsConfig(kinds=("sdxl_refiner",)).validate()


def _tiny_sdxl_parts() -> dict:
    from pipeline.models.rehearsal import CLIP_L14_TEXT, OPENCLIP_BIGG14_TEXT, SDXL_PARTS

    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
    return dict(
        unet=dict(SDXL_PARTS["unet"], sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1,
                  norm_num_groups=8, transformer_layers_per_block=(1, 1, 1), attention_head_dim=(2, 4, 4),
                  cross_attention_dim=64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=80),
        vae=dict(SDXL_PARTS["vae"], block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, sample_size=32),
        text=dict(CLIP_L14_TEXT, **small), text_2=dict(OPENCLIP_BIGG14_TEXT, **small))


def test_sdxl_builder_writes_the_release_layout_that_diffusers_loads(tmp_path: Path, monkeypatch):
    """The real builder, through build_rehearsal_models, with tiny configs swapped in."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from pipeline.core.provenance import random_weight_models
    from pipeline.models import rehearsal

    monkeypatch.setattr(rehearsal, "SDXL_PARTS", _tiny_sdxl_parts())
    with pytest.raises(ValueError, match="cross-attention 2048"):
        rehearsal.check_sdxl_parts(dict(rehearsal.SDXL_PARTS, unet=rehearsal.SDXL_BASE_UNET))
    out = tmp_path / "models"
    paths = rehearsal.build_rehearsal_models(rehearsal.RehearsalModelsConfig(kinds=("sdxl",), seed=5,
                                                                             out_dir=str(out)))
    folder = out / "sdxl"
    assert paths["sdxl"] == str(folder) and random_weight_models([folder / "unet"]) == [str(folder / "unet")]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"} <= {
        p.name for p in folder.iterdir()}
    weights = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin"))
    assert weights == ["text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
                       "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer_2.pad_token_id == 0
    assert pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.vae.config.force_upcast and pipe.vae.config.scaling_factor == 0.13025
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    sched = pipe.scheduler.config
    assert (sched.timestep_spacing, sched.steps_offset, sched.prediction_type, sched.beta_end) == (
        "leading", 1, "epsilon", 0.012)
    assert pipe.unet.config.addition_embed_type == "text_time"
    image = pipe("a cat", num_inference_steps=1, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)
    # seeded per component: a second build gives the same weights
    first = pipe.unet.state_dict()
    rehearsal.build_rehearsal_models(rehearsal.RehearsalModelsConfig(kinds=("sdxl",), seed=5, out_dir=str(out)))
    again = StableDiffusionXLPipeline.from_pretrained(folder).unet.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_bert_vocab_has_bert_base_uncased_layout():
    from pipeline.models.rehearsal import BERT_BASE_UNCASED, rehearsal_wordpiece_vocab

    vocab = rehearsal_wordpiece_vocab()
    assert len(vocab) == BERT_BASE_UNCASED["vocab_size"] == len(set(vocab))
    assert [vocab.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 100, 101, 102, 103]
    assert "giraffe" in vocab and "." in vocab


def test_stage_builds_fid_inception_that_torchmetrics_loads(tmp_path: Path, monkeypatch):
    """The smallest real-architecture model, through the stage script, loaded by the FID code."""
    from pipeline.evaluate.fid import FidMetric
    from pipeline.models.rehearsal import INCEPTION_CHECKPOINT

    params = {"rehearsal_models": {"kinds": ["inception"], "seed": 3, "out_dir": "models/rehearsal"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage(tmp_path, "stages.rehearsal_models")
    out = tmp_path / "models/rehearsal"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["kinds"] == ["inception"] and manifest["seed"] == 3
    from pipeline.core.provenance import random_weight_models
    assert random_weight_models([out / "torch", "google/owlv2-large-patch14-ensemble"]) == [str(out / "torch")]
    path = out / INCEPTION_CHECKPOINT
    first = torch.load(path, weights_only=True)
    assert first["fc.weight"].shape == (1008, 2048) and len(first) > 300
    run_stage(tmp_path, "stages.rehearsal_models")          # same seed -> same weights
    second = torch.load(path, weights_only=True)
    assert all(torch.equal(first[k], second[k]) for k in first)
    monkeypatch.setenv("TORCH_HOME", str(out / "torch"))     # where torch-fidelity looks, as `make rehearsal` sets
    metric = FidMetric("inception")
    loaded = metric.metric.inception.state_dict()
    assert set(loaded) == set(first)
    assert all(torch.equal(loaded[k].float(), first[k].float()) for k in first)


def test_rehearsal_runner_plans_every_stage_and_the_resume():
    from bench.rehearsal import stage_order
    from stages.profiles import resolve

    params = resolve(REPO / "configs" / "rehearsal-sd14.yaml")
    order = stage_order(REPO / "dvc.yaml", params)
    assert order.index("rehearsal_models") < order.index("ground") < order.index("train") < order.index("evaluate@base")
    assert {"evaluate@base", "evaluate@tokencompose"} <= set(order)
    assert params["train"]["max_train_steps"] >= 2 and params["train"]["checkpointing_steps"] == 1


def test_rehearsal_stops_before_work_on_a_full_disk_and_counts_hard_links_once(tmp_path: Path):
    import os

    from bench.rehearsal import check_free_disk, disk_gb

    (tmp_path / "a").write_bytes(b"x" * 1000)
    os.link(tmp_path / "a", tmp_path / "b")  # DVC's cache may hard-link outputs
    assert disk_gb(tmp_path) == 1000 / 1e9
    check_free_disk(tmp_path, 0.0)
    with pytest.raises(SystemExit, match="needs about .* GB free"):
        check_free_disk(tmp_path, 1e12)


def test_gpu_report_quick_runs_on_the_cpu():
    from bench.gpu_report import report

    table = report(quick=True, device="cpu")
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    by_name = {ln.split(" | ")[0][2:]: ln for ln in lines}
    for mode in ("plain", "tokencompose", "official-style"):
        assert " s/step" in by_name[f"SD1.4 train step {mode}, fp32 batch 1"]
    assert any("masks/s" in ln and "skipped" not in ln for ln in lines)
    assert any(ln.startswith("| tiny SD generation") and "images/s" in ln for ln in lines)
    assert any(ln.startswith("| OWLv2 tiny") and "images/s" in ln for ln in lines)
    assert "command: python -m bench --gpu --quick" in table


def test_gpu_report_runs_the_parts_asked_and_keeps_the_table_after_every_part(tmp_path: Path, monkeypatch):
    from bench.gpu_report import report

    done = []

    def part(name):
        def rows(device, quick):
            done.append(name)
            if name == "second":  # the table of the first part is on disk while the second runs
                assert "| first row |" in (tmp_path / "gpu_report.md").read_text()
            return [(f"{name} row", "1", "", "")]
        return rows

    monkeypatch.setattr("bench.gpu_report.PARTS", {n: part(n) for n in ("first", "second", "third")})
    table = report(quick=True, device="cpu", parts=["second", "first"], out=tmp_path)
    assert done == ["first", "second"] and "third" not in table  # PARTS' order, only those asked
    assert (tmp_path / "gpu_report.md").read_text().strip() == table
    with pytest.raises(SystemExit, match="unknown report parts \\['nope'\\]"):
        report(quick=True, device="cpu", parts=["nope"])


def test_gpu_report_part_runs_in_a_child_process_with_its_site_first_on_the_path(tmp_path: Path, monkeypatch):
    """How the Grounding DINO part gets transformers < 5 on the GPU machine (GPU_REPORT_GDINO_SITE)."""
    from bench.gpu_report import part_in_subprocess, report

    site = tmp_path / "site"
    (site / "transformers").mkdir(parents=True)   # a folder that shadows the installed transformers
    (site / "transformers" / "__init__.py").write_text('__version__ = "0.0-site"\n')
    rows = part_in_subprocess("grounding_dino", "cpu", True, site)
    assert rows == [("Grounding DINO SwinT-OGC", "skipped", "", "--quick: the full model only; transformers 0.0-site")]
    monkeypatch.setenv("GPU_REPORT_GDINO_SITE", str(site))
    monkeypatch.setattr("bench.gpu_report.PARTS", {"grounding_dino": lambda *a: [("in-process", "", "", "")]})
    assert "transformers 0.0-site" in report(quick=True, device="cpu")
    with pytest.raises(RuntimeError, match="failed \\(exit 2\\)"):
        part_in_subprocess("no_such_part", "cpu", True, site)
