"""The ``coco_download`` stage: fetch and extract COCO 2017 (the paper profiles).

The official COCO 2017 archives (``configs/paper-sd14.yaml`` lists them for section
``coco_download``)::

    http://images.cocodataset.org/annotations/annotations_trainval2017.zip  (241 MB; annotations/)
    http://images.cocodataset.org/zips/train2017.zip                        (18 GB; train2017/)
    http://images.cocodataset.org/zips/val2017.zip                          (1 GB; val2017/)

Downloads resume and archives are checked before extraction (``pipeline.core.download``).
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.download import download, extract_zip, read_marker, sha256_file
from pipeline.core.tables import write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoDownloadConfig:
    """Section ``coco_download``: zip archives to fetch and extract into ``out_dir``.

    ``urls`` empty (the demo profile) writes only ``out_dir/MANIFEST.json`` listing nothing.
    Archives are downloaded to ``out_dir/zips/`` and deleted after extraction unless
    ``keep_zips``.
    """

    urls: tuple[str, ...] = ()
    out_dir: str = "data/coco"
    keep_zips: bool = False

    def validate(self) -> None:
        names = []
        for url in self.urls:
            parsed = urllib.parse.urlparse(url)
            if parsed.scheme not in ("http", "https", "file"):
                raise ConfigError(f"coco_download.urls: {url!r} is not an http(s) or file URL")
            name = PurePosixPath(parsed.path).name
            if not name.endswith(".zip"):
                raise ConfigError(f"coco_download.urls: {url!r} does not name a .zip file")
            names.append(name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"coco_download.urls: several URLs share the file name(s) {dup}")
        if not self.out_dir:
            raise ConfigError("coco_download.out_dir must be non-empty")


def fetch_archives(cfg: CocoDownloadConfig) -> dict[str, Any]:
    """Download and extract every archive of ``cfg`` (skipping finished ones); writes and returns the manifest.

    ``out_dir/MANIFEST.json``: ``{"out_dir": str, "archives": [{"url", "zip", "bytes", "sha256",
    "members", "top_level"}, ...]}`` in the order of ``urls``.
    """
    out = Path(cfg.out_dir)
    zips = out / "zips"
    archives = []
    for url in cfg.urls:
        name = PurePosixPath(urllib.parse.urlparse(url).path).name
        zip_path = zips / name
        marker = read_marker(name, out)
        if marker is not None and (not zip_path.exists() or zip_path.stat().st_size == marker.get("bytes")):
            log.info("%s: already extracted into %s", name, out)
        else:
            download(url, zip_path)
            marker = extract_zip(zip_path, out, sha256=sha256_file(zip_path))
        if not cfg.keep_zips and zip_path.exists():
            zip_path.unlink()
            log.info("%s: deleted (keep_zips: false)", zip_path)
        archives.append({"url": url, **marker})
    if zips.is_dir() and not any(zips.iterdir()):
        zips.rmdir()
    manifest = {"out_dir": cfg.out_dir, "archives": archives}
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest, out / "MANIFEST.json")
    log.info("coco_download: %d archive(s) in %s", len(archives), out)
    return manifest
