"""MultiGen benchmark, model-free part: prompt files, prompt sampling, per-image seeds, MG-k scores.

A MultiGen prompt names k object categories ("a photo of a A, a B, a C, a D, and a E.").
Each prompt is rendered ``images_per_prompt`` times; a detector returns labelled boxes.
For image j of prompt p with category set C_p, the detected set is

    D_{p,j} = { label : (p, j, label, s) is a detection, s > threshold, label in C_p }

and MG-k is the percentage of all P * J images with |D_{p,j}| >= k:

    MG-k = 100 / (P * J) * sum_{p,j} [ |D_{p,j}| >= k ]

The spread is the population std (ddof 0) of the per-image-index rates
r_{k,j} = 100 / P * sum_p [ |D_{p,j}| >= k ] over j = 0..J-1.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KS = (2, 3, 4, 5)
_OBJ_KEY = re.compile(r"^obj_(\d+)_attributes$")


@dataclass(frozen=True)
class Prompt:
    """One MultiGen prompt: its id, its text and the categories it names."""

    prompt_id: int
    text: str
    categories: tuple[str, ...]


def prompt_text(categories: Iterable[str]) -> str:
    """The official template: "a photo of a A, a B, and a C." ("a photo of a A and a B." for two)."""
    items = [f"a {c}" for c in categories]
    if not items:
        raise ValueError("a prompt needs at least one category")
    if len(items) == 1:
        body = items[0]
    elif len(items) == 2:
        body = f"{items[0]} and {items[1]}"
    else:
        body = ", ".join(items[:-1]) + f", and {items[-1]}"
    return f"a photo of {body}."


def read_prompts(path: str | Path) -> list[Prompt]:
    """Read an official MultiGen prompt file (``coco_obj_comp_5_1k.json`` and the like).

    The file is a JSON list of ``{"unique_id", "num_objects", "obj_1_attributes": [name], ...,
    "text"}``; every problem raises ``ValueError`` naming the entry index.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        msg = f"{path}: expected a JSON list of prompts, got {type(data).__name__}"
        raise ValueError(msg)  # noqa: TRY004
    prompts: list[Prompt] = []
    seen: dict[int, int] = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")  # noqa: TRY004
        for key in ("unique_id", "num_objects", "text"):
            if key not in entry:
                raise ValueError(f"{where}: missing key {key!r}")
        uid, num, text = entry["unique_id"], entry["num_objects"], entry["text"]
        if not isinstance(uid, int) or isinstance(uid, bool):
            raise ValueError(f"{where}: unique_id must be an integer, got {uid!r}")  # noqa: TRY004
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(
                f"{where}: num_objects must be a positive integer, got {num!r}"
            )
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: text must be a non-empty string")
        present = sorted(int(m.group(1)) for key in entry if (m := _OBJ_KEY.match(key)))
        if present != list(range(1, num + 1)):
            keys = [f"obj_{k}_attributes" for k in present]
            raise ValueError(
                f"{where}: num_objects={num} disagrees with the keys present {keys}"
            )
        categories = []
        for k in range(1, num + 1):
            attrs = entry[f"obj_{k}_attributes"]
            if (
                not isinstance(attrs, list)
                or not attrs
                or not isinstance(attrs[0], str)
            ):
                raise ValueError(
                    f"{where}: obj_{k}_attributes must be a list [name], got {attrs!r}"
                )
            name = attrs[0].strip()
            if not name:
                raise ValueError(f"{where}: obj_{k}_attributes has an empty category")
            if name in categories:
                raise ValueError(f"{where}: category {name!r} appears twice")
            if name.lower() not in text.lower():
                raise ValueError(
                    f"{where}: text {text!r} does not mention category {name!r}"
                )
            categories.append(name)
        if uid in seen:
            raise ValueError(
                f"{where}: duplicate unique_id {uid} (also entry {seen[uid]})"
            )
        seen[uid] = i
        prompts.append(Prompt(uid, text, tuple(categories)))
    return prompts


def make_prompts(categories: list[str], n: int, seed: int, k: int = 5) -> list[Prompt]:
    """Draw ``n`` prompts of ``k`` distinct categories each with ``random.Random(seed)``; ids 0..n-1."""
    pool = list(dict.fromkeys(categories))
    if len(pool) < k:
        raise ValueError(f"need at least k={k} distinct categories, got {len(pool)}")
    if n < 0 or k < 1:
        raise ValueError(f"n must be >= 0 and k >= 1, got n={n}, k={k}")
    rng = random.Random(seed)
    out = []
    for pid in range(n):
        cats = tuple(rng.sample(pool, k))
        out.append(Prompt(pid, prompt_text(cats), cats))
    return out


VISOR_RELATIONS = ("to the left of", "to the right of", "above", "below")


def visor_prompts(categories: list[str], n: int | None, seed: int,
                  relations: Iterable[str] = VISOR_RELATIONS) -> list[Prompt]:
    """Two-object spatial prompts "a A to the left of a B." (the VISOR benchmark's template).

    All ordered pairs of distinct categories times the relations, in a fixed order; ``n``
    of them drawn with ``random.Random(seed)`` (``None``: all). Ids are positions in the
    full list, so a prompt keeps its id (and its images' seeds) whatever ``n`` is.
    """
    pool = list(dict.fromkeys(categories))
    relations = list(relations)
    if len(pool) < 2 or not relations:
        raise ValueError("visor prompts need at least 2 distinct categories and one relation")
    full = [(a, rel, b) for a in pool for b in pool if a != b for rel in relations]
    ids = range(len(full)) if n is None else sorted(random.Random(seed).sample(range(len(full)), min(n, len(full))))
    return [Prompt(i, f"a {full[i][0]} {full[i][1]} a {full[i][2]}.", (full[i][0], full[i][2])) for i in ids]


def image_seed(base_seed: int, prompt_id: int, image_index: int, namespace: str = "") -> int:
    """seed = int(sha256(f"{base_seed}:{prompt_id}:{image_index}")[:8 bytes], big endian) mod 2**63.

    A non-empty ``namespace`` (another benchmark) is prepended as ``f"{namespace}:..."``.
    """
    key = f"{base_seed}:{prompt_id}:{image_index}"
    digest = hashlib.sha256((f"{namespace}:{key}" if namespace else key).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def score(
    detections: Iterable[tuple[int, int, str, float]],
    prompts: list[Prompt],
    images_per_prompt: int,
    threshold: float = 0.1,
) -> dict:
    """MG-k (k = 2..5) in percent of all images, and the ddof-0 std over per-image-index rates.

    ``detections`` holds ``(prompt_id, image_index, label, score)``; see the module docstring
    for the formulas. Returns ``{"MG2": ..., "MG2_std": ..., ..., "MG5_std": ..., "images": N}``.
    """
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    if not prompts:
        raise ValueError("no prompts to score")
    by_id = {p.prompt_id: set(p.categories) for p in prompts}
    if len(by_id) != len(prompts):
        raise ValueError("duplicate prompt ids")
    found: dict[tuple[int, int], set[str]] = {}
    for pid, idx, label, s in detections:
        if pid not in by_id:
            raise ValueError(f"detection for unknown prompt_id {pid}")
        if not 0 <= idx < images_per_prompt:
            raise ValueError(
                f"detection for prompt {pid} has image_index {idx} outside 0..{images_per_prompt - 1}"
            )
        if s > threshold and label in by_id[pid]:
            found.setdefault((pid, idx), set()).add(label)
    n_prompts = len(prompts)
    result: dict = {}
    for k in KS:
        rates = [
            100.0
            * sum(len(found.get((p.prompt_id, j), ())) >= k for p in prompts)
            / n_prompts
            for j in range(images_per_prompt)
        ]
        result[f"MG{k}"] = statistics.fmean(rates)
        result[f"MG{k}_std"] = statistics.pstdev(rates)
    result["images"] = n_prompts * images_per_prompt
    return result


def category_recall(
    detections: Iterable[tuple[int, int, str, float]],
    prompts: list[Prompt],
    images_per_prompt: int,
    threshold: float = 0.1,
) -> list[dict]:
    """Which categories a model leaves out: per category c, over the images whose prompt names c,

        recall_c = 100 * #{(p, j) : c in C_p, c in D_{p,j}} / #{(p, j) : c in C_p}

    (``D_{p,j}`` as in the module docstring). Rows ``{"category", "images", "found", "recall"}``
    sorted by category.
    """
    found: dict[tuple[int, int], set[str]] = {}
    named = {p.prompt_id: set(p.categories) for p in prompts}
    for pid, idx, label, s in detections:
        if s > threshold and label in named.get(pid, ()):
            found.setdefault((pid, idx), set()).add(label)
    rows: dict[str, list[int]] = {}
    for p in prompts:
        for c in p.categories:
            acc = rows.setdefault(c, [0, 0])
            acc[0] += images_per_prompt
            acc[1] += sum(c in found.get((p.prompt_id, j), ()) for j in range(images_per_prompt))
    return [{"category": c, "images": n, "found": k, "recall": 100.0 * k / n} for c, (n, k) in sorted(rows.items())]
