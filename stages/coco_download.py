"""Stage ``coco_download``: fetch and extract the COCO 2017 archives (paper profiles).

Usage: ``python -m stages.coco_download [--params params.yaml]``
Reads section ``coco_download`` (``pipeline.data.coco_download.CocoDownloadConfig``: urls, out_dir,
keep_zips); the official URLs are in ``configs/paper-sd14.yaml``. With no urls (the demo
profile) it only writes ``<out_dir>/MANIFEST.json`` listing nothing. Interrupted downloads
resume on the next run; extracted archives are skipped.
"""

from __future__ import annotations

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section
from pipeline.data.coco_download import CocoDownloadConfig, fetch_archives


def main(argv: list[str] | None = None) -> dict:
    args, log = parse(__doc__.splitlines()[0], argv)
    cfg = load_section("coco_download", CocoDownloadConfig, args.params)
    log.info("coco_download: %s", cfg)
    return fetch_archives(cfg)


if __name__ == "__main__":
    run_main(main, "coco_download")
