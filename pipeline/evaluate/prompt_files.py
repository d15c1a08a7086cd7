"""Section ``multigen_prompts``: fetch prompt files (the official MultiGen ones for the paper profiles).

Each URL's file lands in ``out_dir/<file name>`` through ``download.download`` (resumable,
size- and sha256-checked) and is then read with ``multigen.read_prompts``, so a file of the
wrong format fails here, naming the entry, not hours later in ``evaluate``.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.download import download, sha256_file
from pipeline.core.tables import write_json
from pipeline.evaluate.multigen import read_prompts

log = logging.getLogger(__name__)

OFFICIAL = "https://raw.githubusercontent.com/mlpc-ucsd/TokenCompose/main/multigen/"


@dataclass(frozen=True)
class PromptDownloadConfig:
    """``sha256``: file name -> expected hex digest (files not named there are not checked)."""

    urls: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)
    out_dir: str = "data/multigen"

    def validate(self) -> None:
        names = [PurePosixPath(urllib.parse.urlparse(u).path).name for u in self.urls]
        if any(urllib.parse.urlparse(u).scheme not in ("http", "https", "file") for u in self.urls):
            raise ConfigError(f"multigen_prompts.urls: only http(s) and file URLs: {self.urls}")
        if len(set(names)) != len(names) or not all(n.endswith(".json") for n in names):
            raise ConfigError(f"multigen_prompts.urls: distinct .json file names needed, got {names}")


def fetch_prompt_files(cfg: PromptDownloadConfig) -> dict[str, Any]:
    """Download (or keep) every file, check it, and write ``out_dir/MANIFEST.json``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for url in cfg.urls:
        name = PurePosixPath(urllib.parse.urlparse(url).path).name
        dest = out / name
        expected = cfg.sha256.get(name)
        if dest.exists() and (expected is None or sha256_file(dest) == expected):
            log.info("%s: already here", dest)
        else:
            download(url, dest, sha256=expected)
        prompts = read_prompts(dest)
        files.append({"url": url, "file": name, "sha256": sha256_file(dest), "prompts": len(prompts)})
    manifest = {"out_dir": cfg.out_dir, "files": files}
    write_json(manifest, out / "MANIFEST.json")
    return manifest
