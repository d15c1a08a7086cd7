"""Print the paper's Table 1 from the evaluate stage's metrics, with the published numbers beside them.

    python -m stages.table1                      # every model of evaluate.models, Markdown on stdout
    python -m stages.table1 --out table1.md

Columns in Table 1's order: Object Accuracy; MultiGen MG2-MG5 per prompt set (COCO, ADE20K; a
single set is "MultiGen"); FID (COCO); FID (Flickr30K); latency (s/image). A model that has no
``metrics.json`` yet, a metric that was skipped (with its recorded reason) or that is not a
number is shown as such, never as a value. A model whose metrics carry ``flags`` (e.g. models
with random weights) is marked "(flagged)" and each flag is printed under the table.

The published rows (SD 1.4 and TokenCompose, SD 1.4 based) are the official repository's
README table (github.com/mlpc-ucsd/TokenCompose), which reproduces the paper's Table 1; MG-k
carries its spread over the 10 images of a prompt as "mean ± std".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.core.cli import parse
from pipeline.core.config import load_section
from pipeline.evaluate.config import EvaluateConfig

SOURCE = "github.com/mlpc-ucsd/TokenCompose README (Table 1 of the paper), checked"
MG = ("MG2", "MG3", "MG4", "MG5")
PUBLISHED = {
    "SD 1.4 (published)": {
        "object_accuracy": 29.86,
        "multigen_coco": {"MG2": 90.72, "MG2_std": 1.33, "MG3": 50.74, "MG3_std": 0.89,
                          "MG4": 11.68, "MG4_std": 0.45, "MG5": 0.88, "MG5_std": 0.21},
        "multigen_ade20k": {"MG2": 89.81, "MG2_std": 0.40, "MG3": 53.96, "MG3_std": 1.14,
                            "MG4": 16.52, "MG4_std": 1.13, "MG5": 1.89, "MG5_std": 0.34},
        "fid": 20.88, "fid_flickr30k": 71.46, "latency_s_per_image": 7.54,
    },
    "TokenCompose (published)": {
        "object_accuracy": 52.15,
        "multigen_coco": {"MG2": 98.08, "MG2_std": 0.40, "MG3": 76.16, "MG3_std": 1.04,
                          "MG4": 28.81, "MG4_std": 0.95, "MG5": 3.28, "MG5_std": 0.48},
        "multigen_ade20k": {"MG2": 97.75, "MG2_std": 0.34, "MG3": 76.93, "MG3_std": 1.09,
                            "MG4": 33.92, "MG4_std": 1.47, "MG5": 6.21, "MG5_std": 0.62},
        "fid": 20.19, "fid_flickr30k": 71.13, "latency_s_per_image": 7.56,
    },
}
SET_LABELS = {"multigen_coco": "COCO", "multigen_ade20k": "ADE20K", "multigen": "MultiGen"}


def _number(value, std=None, digits: int = 2) -> str:
    if value is None:
        return "skipped"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if isinstance(std, (int, float)) and math.isfinite(std) else text


def multigen_keys(rows: dict[str, dict]) -> list[str]:
    """The MultiGen metric keys of any row: COCO, ADE20K first, then the others in name order."""
    found = {k for m in rows.values() for k, v in m.items() if k.startswith("multigen") and isinstance(v, dict)}
    first = [k for k in ("multigen_coco", "multigen_ade20k") if k in found]
    return first + sorted(found - set(first))


def table1(models: dict[str, dict | None]) -> str:
    """Markdown: the published rows, then one row per model (None: not evaluated yet)."""
    rows = {**PUBLISHED, **{name: m for name, m in models.items()}}
    sets = multigen_keys({k: v for k, v in rows.items() if v})
    header = ["model", "Object Accuracy"]
    header += [f"{SET_LABELS.get(s, s)} {k}" for s in sets for k in MG]
    header += ["FID (COCO)", "FID (Flickr30K)", "latency (s/img)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    notes = []
    for name, m in rows.items():
        if m is None:
            lines.append(f"| {name} | " + " | ".join(["not evaluated"] * (len(header) - 1)) + " |")
            continue
        cells = [_number(m.get("object_accuracy", math.nan))]
        for s in sets:
            mg = m.get(s) or {}
            cells += [_number(mg.get(k, math.nan), mg.get(f"{k}_std")) for k in MG]
        cells += [_number(m.get(k, math.nan)) for k in ("fid", "fid_flickr30k")]
        cells.append(_number(m.get("latency_s_per_image", math.nan)))
        flags = m.get("flags") or []
        lines.append(f"| {name}{' (flagged)' if flags else ''} | " + " | ".join(cells) + " |")
        notes += [f"- {name}: {flag}" for flag in flags]
        for key, reason in (m.get("skipped") or {}).items():
            notes.append(f"- {name}, {key}: skipped: {reason}")
    lines += ["", f"Published rows: {SOURCE}.", *notes]
    return "\n".join(lines) + "\n"


def read_models(cfg: EvaluateConfig) -> dict[str, dict | None]:
    out = {}
    for name in cfg.models:
        path = Path(cfg.out_dir) / name / "metrics.json"
        out[name] = json.loads(path.read_text()) if path.is_file() else None
    return out


def main(argv: list[str] | None = None) -> str:
    args, log = parse(__doc__.splitlines()[0], argv, lambda p: p.add_argument("--out", default=None))
    cfg = load_section("evaluate", EvaluateConfig, args.params)
    text = table1(read_models(cfg))
    if args.out:
        Path(args.out).write_text(text)
        log.info("wrote %s", args.out)
    else:
        print(text, end="")  # noqa: T201 - the table is the command's output
    return text


if __name__ == "__main__":
    main()
