"""Stage ``evaluate``: MultiGen, Object Accuracy, FID and attention grounding of one model.

    python -m stages.evaluate --model base                       # one process
    accelerate launch --num_processes 8 -m stages.evaluate --model tokencompose
    python -m stages.evaluate --model base --only multigen:17_3 --out 17_3.png   # one image alone
"""

from __future__ import annotations

import json

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section, read_params
from pipeline.core.satisfiable import require_satisfiable
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.run import regenerate, run_evaluate


def main(argv: list[str] | None = None) -> None:
    def extend(p):
        p.add_argument("--model", required=True, help="a key of evaluate.models")
        p.add_argument("--only", default=None, help="draw one image alone: <benchmark>:<key>, e.g. multigen:17_3")
        p.add_argument("--out", default=None, help="where --only writes its PNG (default: <key>.png)")

    args, log = parse(__doc__, argv, extend)
    cfg = load_section("evaluate", EvaluateConfig, args.params)
    require_satisfiable(read_params(args.params), args.params, only=("evaluate",))  # before any work
    if args.only is not None:
        path = regenerate(cfg, args.model, args.only, args.out or f"{args.only.replace(':', '_')}.png")
        log.info("wrote %s", path)
        return
    metrics = run_evaluate(cfg, args.model)
    if metrics is not None:
        log.info("evaluate %s: %s", args.model, json.dumps(metrics))


if __name__ == "__main__":
    run_main(main, "evaluate")
