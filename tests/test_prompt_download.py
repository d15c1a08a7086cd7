"""multigen_prompts: prompt files fetched by URL, checked by sha256 and by format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.evaluate.prompt_files import PromptDownloadConfig, fetch_prompt_files

COCO_SHA = "fdac55817fbab0dc3710e60b82a8b238e41a1ed771660b6050e27ba96dea35cd"


def test_official_file_by_url_checked_and_listed(shared_dir: Path, tmp_path: Path):
    src = shared_dir / "multigen" / "coco_obj_comp_5_1k.json"
    cfg = PromptDownloadConfig(urls=[src.as_uri()], sha256={src.name: COCO_SHA}, out_dir=str(tmp_path / "mg"))
    manifest = fetch_prompt_files(cfg)
    assert manifest["files"] == [{"url": src.as_uri(), "file": src.name, "sha256": COCO_SHA, "prompts": 1000}]
    assert (tmp_path / "mg" / src.name).read_bytes() == src.read_bytes()
    assert json.loads((tmp_path / "mg" / "MANIFEST.json").read_text()) == manifest
    stamp = (tmp_path / "mg" / src.name).stat().st_mtime_ns
    fetch_prompt_files(cfg)  # already there with the right digest: kept
    assert (tmp_path / "mg" / src.name).stat().st_mtime_ns == stamp


def test_wrong_digest_and_wrong_format_fail(shared_dir: Path, tmp_path: Path):
    src = shared_dir / "multigen" / "coco_obj_comp_5_1k.json"
    with pytest.raises(Exception, match="sha256"):
        fetch_prompt_files(PromptDownloadConfig(urls=[src.as_uri()], sha256={src.name: "0" * 64},
                                                out_dir=str(tmp_path / "a")))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"unique_id": 0, "num_objects": 1, "text": "a photo of a cat."}]))
    with pytest.raises(ValueError, match="entry 0: num_objects=1 disagrees"):
        fetch_prompt_files(PromptDownloadConfig(urls=[bad.as_uri()], out_dir=str(tmp_path / "b")))


def test_config_refuses_odd_urls():
    with pytest.raises(ConfigError, match="json"):
        from_dict(PromptDownloadConfig, {"urls": ["https://x/y.txt"]}, "multigen_prompts")
    with pytest.raises(ConfigError, match="http"):
        from_dict(PromptDownloadConfig, {"urls": ["ftp://x/y.json"]}, "multigen_prompts")
