"""The layout is the architecture: layers that import only downwards, DVC deps that cover the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core.code import ROOT, code_files, imported_modules, module_file

#: bottom to top; a module may import its own sub-package and the layers below it, never above
LAYERS = {
    "pipeline.core": 0,
    "pipeline.models": 1,
    "pipeline.data": 2,
    "pipeline.demo": 2,
    "pipeline.train": 3,
    "pipeline.evaluate": 4,
    "stages": 5,
    "bench": 5,
}


def _layer(module: str) -> str | None:
    for prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def _modules() -> list[str]:
    names = []
    for package in ("pipeline", "stages", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_belongs_to_a_layer():
    orphans = [m for m in _modules() if m != "pipeline" and _layer(m) is None]
    assert orphans == [], f"modules outside the layers {list(LAYERS)}: {orphans}"


def test_no_import_runs_upwards():
    upward = []
    for module in _modules():
        own = _layer(module)
        if own is None:
            continue
        for target in imported_modules(module):
            other = _layer(target)
            if other is None or other == own:
                continue
            if LAYERS[other] >= LAYERS[own]:
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports from a lower layer to a higher (or sideways):\n" + "\n".join(upward)


def test_imported_modules_sees_relative_lazy_and_package_imports(tmp_path):
    # the rule the DVC check relies on, on modules whose imports are known
    assert "pipeline.core.schemas" in imported_modules("pipeline.core.tables")
    # a lazy import inside a function body counts
    assert "pipeline.data.overlays" in imported_modules("pipeline.data.segment")
    assert "pipeline.core" in imported_modules("pipeline.models.sam")
    assert module_file("torch") is None


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_cover_every_module_it_runs(stage):
    spec = _stages()[stage]
    module = spec["cmd"].split(" -m ", 1)[1].split()[0]  # after python, torchrun or accelerate launch
    deps = [d for d in spec["deps"] if "${" not in d]
    missing = [str(p.relative_to(ROOT)) for p in code_files(module)
               if p.stat().st_size and not _covered(p, deps)]
    assert missing == [], f"dvc.yaml stage {stage}: deps {deps} miss code it runs: {missing}"
    stale = [d for d in deps if not (ROOT / d).exists()]
    assert stale == [], f"dvc.yaml stage {stage}: deps that do not exist: {stale}"


def test_a_new_import_is_caught():
    """The check fails when a stage's code starts importing a package its deps leave out."""
    spec = _stages()["captions"]
    deps = [d for d in spec["deps"] if "${" not in d]
    files = code_files("stages.train")  # train's code: pipeline/train, pipeline/models, ...
    assert any(not _covered(p, deps) for p in files if p.stat().st_size)



def _resolve(text: str, params: dict, **local: str) -> Path:
    """``${section.key}`` (and foreach's ``${key}``/``${item}``) filled as DVC's interpolation does."""
    import re

    def value(match):
        name = match.group(1)
        if name in local:
            return local[name]
        node = params
        for part in name.split("."):
            node = node[part]
        return str(node)

    return Path(re.sub(r"\$\{\s*([\w.]+)\s*\}", value, text))


def _expanded(params: dict) -> list[tuple[str, list[Path], list[Path]]]:
    """(stage, deps, outs) in dvc.yaml's order, ``foreach`` stages once per item."""
    rows = []
    for name, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        items = {"": ""}
        if "foreach" in spec:
            items = _resolve_dict(spec["foreach"], params)
            spec = spec["do"]
        for key, item in items.items():
            local = {"key": key, "item": str(item)}
            paths = {kind: [_resolve(next(iter(e)) if isinstance(e, dict) else e, params, **local)
                            for e in spec.get(kind) or []] for kind in ("deps", "outs", "metrics", "plots")}
            rows.append((f"{name}@{key}" if key else name, paths["deps"],
                         paths["outs"] + paths["metrics"] + paths["plots"]))
    return rows


def _resolve_dict(ref: str, params: dict) -> dict:
    node = params
    for part in ref.strip("${} ").split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("profile", ["demo", "rehearsal-sd14", "paper-sd14"])
def test_dvc_yaml_lists_stages_in_the_order_they_run(profile):
    """A stage comes after every stage whose outputs it reads, so running them one by one in file
    order (``dvc repro --single-item``, as ``bench.rehearsal`` does) never meets a missing input."""
    from stages.profiles import resolve

    stages = _expanded(resolve(ROOT / "configs" / f"{profile}.yaml"))
    late = [f"{name} reads {dep}, written by {other} (listed later)"
            for i, (name, deps, _) in enumerate(stages) for dep in deps
            for other, _, outs in stages[i + 1:] if any(dep == o or o in dep.parents for o in outs)]
    assert late == [], "dvc.yaml:\n" + "\n".join(late)
