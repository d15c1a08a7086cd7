"""Shared fixtures: the real COCO subset in ../shared, tiny models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stagerun import make_workspace, small_params

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOKENCOMPOSE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session", autouse=True)
def digest_cache_file(tmp_path_factory) -> Path:
    """Tests keep the input digest cache (``pipeline.core.digests``) out of the repository."""
    path = tmp_path_factory.mktemp("digest-cache") / "digests.json"
    os.environ.setdefault("TOKENCOMPOSE_DIGEST_CACHE", str(path))
    return Path(os.environ["TOKENCOMPOSE_DIGEST_CACHE"])


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


#: the longest test files (``pytest --durations``, alone on 2 cores: test_dvc 230 s, test_evaluate 250,
#: test_launch 80, test_train 210, test_stages 160; the rest about 250 together), run first so that
#: ``make test``'s two workers (``-n 2 --dist loadfile``) finish together. xdist hands a worker its
#: next file as soon as the current one has at most 2 tests left, so the one-test test_dvc is
#: followed on its worker by test_launch, while test_evaluate's worker takes test_train.
LONGEST_FIRST = ("test_dvc.py", "test_evaluate.py", "test_launch.py", "test_train.py", "test_stages.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
