"""Shared fixtures: the real COCO subset in ../shared, tiny models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stagerun import make_workspace, small_params

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENCOMPOSE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or ``$TOKENCOMPOSE_SHARED``). In CI a missing folder fails, elsewhere it skips."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared data folder missing in CI: {SHARED}")
        pytest.skip(f"shared data folder not found: {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def coco_mini(shared_dir: Path) -> Path:
    path = shared_dir / "coco-mini"
    assert (path / "annotations" / "captions_train2017.json").exists(), path
    return path


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("ws") / "base", small_params())
