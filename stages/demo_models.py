"""Stage ``demo_models``: build the demo profile's tiny models (see pipeline/models/tiny.py)."""

from __future__ import annotations

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section
from pipeline.models.tiny import DemoModelsConfig, build_tiny_models


def main(argv: list[str] | None = None) -> None:
    args, log = parse(__doc__, argv)
    cfg = load_section("demo_models", DemoModelsConfig, args.params)
    for name, path in build_tiny_models(cfg).items():
        log.info("%s: %s", name, path)


if __name__ == "__main__":
    run_main(main, "demo_models")
