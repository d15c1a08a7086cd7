"""Named params profiles: ``configs/<name>.yaml`` -> ``params.yaml``.

    python -m pipeline.profiles list
    python -m pipeline.profiles use paper-sd14     # then: dvc repro
    python -m pipeline.profiles use demo           # back to the default

A profile is a complete params file; ``use`` validates it (every section must load into its
stage's config) before copying it over ``params.yaml``, so a broken profile never lands.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .config import ConfigError, read_params

CONFIGS = Path("configs")


def available(configs: Path = CONFIGS) -> list[str]:
    return sorted(p.stem for p in configs.glob("*.yaml"))


def validate(path: Path) -> None:
    """Load every section of a profile into its typed config (raises ConfigError)."""
    from .coco import CaptionsConfig
    from .config import from_dict
    from .demo import DemoDataConfig
    from .download import CocoDownloadConfig
    from .grounding import GroundConfig
    from .nouns import NounsConfig
    from .segmentation import SegmentConfig
    from .tiny import DemoModelsConfig

    sections = {
        "demo_data": DemoDataConfig,
        "demo_models": DemoModelsConfig,
        "coco_download": CocoDownloadConfig,
        "captions": CaptionsConfig,
        "nouns": NounsConfig,
        "ground": GroundConfig,
        "segment": SegmentConfig,
    }
    params = read_params(path)
    missing = sorted(set(sections) - set(params))
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing}")
    for name, cls in sections.items():
        from_dict(cls, params[name], f"{path}:{name}")


def use(name: str, configs: Path = CONFIGS, target: Path = Path("params.yaml")) -> Path:
    src = configs / f"{name}.yaml"
    if not src.exists():
        raise SystemExit(f"no profile {name!r}; available: {', '.join(available(configs))}")
    validate(src)
    shutil.copyfile(src, target)
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    u = sub.add_parser("use")
    u.add_argument("name")
    args = p.parse_args(argv)
    if args.cmd == "list":
        print("\n".join(available()))
    else:
        print(f"params.yaml <- configs/{args.name}.yaml")
        use(args.name)


if __name__ == "__main__":
    main()
