"""The project's own code behind a module: every project file it imports, directly or not.

``code_files("stages.train")`` follows ``import`` / ``from ... import`` statements (also those
inside functions) through the project's packages (``pipeline``, ``stages``, ``bench``) and
returns their files, package ``__init__.py`` files included. Third-party imports are left out.
One rule serves two checks: a stage's DVC ``deps`` must cover these files (``tests/test_layout.py``),
and resumable work (training checkpoints, ground/segment shards) is keyed by ``code_digest``, so a
change to any of them makes old partial results another run's.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "stages", "bench")


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), else None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(name: str) -> set[str]:
    """Project modules that module ``name`` imports anywhere in its file (relative imports resolved)."""
    path = module_file(name)
    if path is None:
        raise ModuleNotFoundError(f"{name} is not a module of {PACKAGES} under {ROOT}")
    package = _package_of(name, path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # ``from pkg import mod`` imports the submodule when there is one
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for k in range(1, len(parts) + 1):  # the packages on the way are imported too
                prefix = ".".join(parts[:k])
                if module_file(prefix) is not None:
                    found.add(prefix)
    found.discard(name)
    return found


@lru_cache(maxsize=None)
def code_files(name: str) -> tuple[Path, ...]:
    """Every project file module ``name`` runs: itself and the closure of its project imports, sorted."""
    parts = name.split(".")
    seen, todo = set(), [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module) - seen)
    return tuple(sorted(module_file(m) for m in seen))


def code_digest(name: str) -> str:
    """sha256 (16 hex digits) over the paths and bytes of ``code_files(name)``."""
    h = hashlib.sha256()
    for path in code_files(name):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
