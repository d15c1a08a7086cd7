"""Typed params sections.

Every stage reads exactly one section of ``params.yaml`` into a frozen dataclass that
lives next to the code it configures (``NounsConfig`` in ``pipeline/data/nouns.py``, ...).
Unknown keys and missing required keys are errors, so a typo in ``dvc exp run -S`` fails
loudly instead of being ignored.

The dataset's input files are the exception: they are set once, in section ``dataset``, and
``load_section`` fills them into the sections that read them (``DATASET_FIELDS``), so every
stage's paths derive from one place; ``dvc.yaml`` names the same ``${dataset.*}`` keys as deps.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params section does not match its dataclass."""


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a whole params file (``params.yaml`` or a profile under ``configs/``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and lightly coerce: int -> float, list -> tuple) one value against its type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt, f"{where} key"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads "5e-05" -- as `dvc exp run -S` writes it -- as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if annotation in (int, float, str, bool):
        if annotation is int and isinstance(value, bool):
            raise ConfigError(f"{where}: expected int, got {value!r}")
        if not isinstance(value, annotation):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``data``; unknown or missing keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r}")
            continue
        kwargs[name] = _coerce(data[name], hints[name], f"{where}.{name}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


# The dataset's files, set once in section ``dataset`` and filled into the sections that read
# them: section -> {key inside the section (dotted for nested sections): key of ``dataset``}.
# A filled key may not also be written in its section (two sources of one path would drift).
DATASET_SECTION = "dataset"
DATASET_FIELDS: dict[str, dict[str, str]] = {
    "captions": {"format": "format", "source": "captions", "coco_captions": "coco_captions",
                 "images_dir": "images_dir", "instances": "instances"},
    "reference_masks": {"instances_json": "instances"},
    "evaluate": {"fid.captions": "fid_captions", "fid.images_dir": "fid_images_dir"},
}


@dataclass(frozen=True)
class DatasetConfig:
    """Section ``dataset``: the COCO-format dataset every stage's input paths come from."""

    format: Literal["coco", "tokencompose"]   # captions file kind: COCO captions json | TokenCompose metadata.jsonl
    captions: str                             # captions file (captions_train2017.json, metadata.jsonl)
    images_dir: str                           # folder the captions' file names are relative to
    instances: str                            # COCO instances json of the same images (reference masks, checks)
    fid_captions: str                         # FID split: COCO captions json (paper: captions_val2017.json)
    fid_images_dir: str                       # FID split: its image folder (paper: val2017)
    coco_captions: str | None = None          # format tokencompose: COCO captions json giving caption ids

    def validate(self) -> None:
        for name in ("captions", "images_dir", "instances", "fid_captions", "fid_images_dir"):
            if not getattr(self, name):
                raise ConfigError(f"dataset.{name} must be non-empty")
        if self.format == "coco" and self.coco_captions is not None:
            raise ConfigError("dataset.coco_captions is only used with format 'tokencompose'; set it to null")


def with_dataset(params: dict[str, Any], section: str, where: str = "params") -> dict[str, Any]:
    """Section ``section`` of ``params`` with its dataset paths filled from section ``dataset``."""
    if section not in params:
        raise ConfigError(f"{where}: no section {section!r}")
    fields = DATASET_FIELDS.get(section)
    if not fields:
        return params[section]
    if DATASET_SECTION not in params:
        raise ConfigError(f"{where}: no section {DATASET_SECTION!r} (section {section!r} reads its paths from it)")
    dataset = from_dict(DatasetConfig, params[DATASET_SECTION], DATASET_SECTION)
    out = copy.deepcopy(params[section])
    for key, source in fields.items():
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {section}.{name} must be a mapping")
        if leaf in node:
            raise ConfigError(f"{where}: {section}.{key} is set by {DATASET_SECTION}.{source}; "
                              f"remove it from section {section!r}")
        node[leaf] = getattr(dataset, source)
    return out


def load_section(section: str, cls: type[T], params_path: str | Path = DEFAULT_PARAMS) -> T:
    """Read section ``section`` of ``params_path`` into ``cls``, its dataset paths filled from
    section ``dataset`` (``DATASET_FIELDS``)."""
    params = read_params(params_path)
    return from_dict(cls, with_dataset(params, section, str(params_path)), section)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses included)."""

    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)  # type: ignore[arg-type]
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not fingerprintable: {type(o)}")

    blob = json.dumps(parts, sort_keys=True, default=default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
