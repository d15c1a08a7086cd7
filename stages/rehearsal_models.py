"""Stage ``rehearsal_models``: the paper's models with real architectures and random weights.

See pipeline/models/rehearsal.py. The demo and paper profiles list no kinds (nothing is built);
the rehearsal profiles build every model the paper profile loads.
"""

from __future__ import annotations

from pipeline.core.cli import parse
from pipeline.core.config import load_section
from pipeline.models.rehearsal import RehearsalModelsConfig, build_rehearsal_models


def main(argv: list[str] | None = None) -> None:
    args, log = parse(__doc__, argv)
    cfg = load_section("rehearsal_models", RehearsalModelsConfig, args.params)
    for name, path in build_rehearsal_models(cfg).items():
        log.info("%s: %s", name, path)


if __name__ == "__main__":
    main()
