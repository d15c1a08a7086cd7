"""Stage ``demo_data``: draw the demo COCO-format dataset (images, captions, instances).

Reads params section ``demo_data`` and writes ``<out_dir>/images/*.jpg`` and
``<out_dir>/annotations/{captions_train,instances_train,demo_objects}.json``.

    python -m stages.demo_data [--params params.yaml]
"""

from __future__ import annotations

import argparse
import time

from pipeline.core.cli import run_main
from pipeline.core.config import DEFAULT_PARAMS, load_section
from pipeline.core.logs import setup_logging
from pipeline.demo import DemoDataConfig, generate_demo


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    log = setup_logging()
    cfg = load_section("demo_data", DemoDataConfig, args.params)
    log.info("demo_data: %d images, sides %d-%d px, %d captions each, seed %d -> %s",
             cfg.num_images, cfg.min_size, cfg.max_size, cfg.captions_per_image, cfg.seed,
             cfg.out_dir)
    start = time.perf_counter()
    summary = generate_demo(cfg)
    log.info("wrote %d images, %d captions, %d annotations (%d polygons, %d RLE, %d crowds, "
             "%d partly occluded) in %.1fs", summary["images"], summary["captions"],
             summary["annotations"], summary["polygon_annotations"], summary["rle_annotations"],
             summary["crowd_annotations"], summary["occluded_annotations"],
             time.perf_counter() - start)
    log.info("annotations per category: %s",
             ", ".join(f"{k} {v}" for k, v in summary["per_category"].items()))
    return summary


if __name__ == "__main__":
    run_main(main, "demo_data")
