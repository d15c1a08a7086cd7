"""Stage ``multigen_prompts``: fetch and check MultiGen prompt files (see pipeline/evaluate/prompt_files.py)."""

from __future__ import annotations

from pipeline.core.cli import parse, run_main
from pipeline.core.config import load_section
from pipeline.evaluate.prompt_files import PromptDownloadConfig, fetch_prompt_files


def main(argv: list[str] | None = None) -> dict:
    args, log = parse(__doc__, argv)
    cfg = load_section("multigen_prompts", PromptDownloadConfig, args.params)
    manifest = fetch_prompt_files(cfg)
    log.info("multigen_prompts: %d file(s) in %s", len(manifest["files"]), cfg.out_dir)
    return manifest


if __name__ == "__main__":
    run_main(main, "multigen_prompts")
