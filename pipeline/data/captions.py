"""The captions stage: read COCO-format captions (or TokenCompose's metadata), validate, select.

Inputs
------
``source`` is the one input file, read according to ``format``:

- ``format: coco`` -- the official COCO captions json: ``{"images": [{"id", "file_name",
  "width", "height", ...}], "annotations": [{"id", "image_id", "caption"}]}``. One input row
  per annotation.
- ``format: tokencompose`` -- the official TokenCompose training ``metadata.jsonl``: one
  ``{"file_name", "text", "attn_list": [[noun, mask path or null], ...]}`` per line (4,526
  lines, one caption per image). One input row per non-blank line. ``image_id`` is the last
  group of digits in the file name (``000000000142.jpg`` -> 142). ``caption_id`` is the
  0-based line number, unless ``coco_captions`` (optional, a COCO captions json such as
  ``data/coco/annotations/captions_train2017.json``) is given: then ``image_id`` comes from
  the COCO ``images`` entry with that file name, ``caption_id`` is the id of the COCO
  caption annotation of that image whose normalised text is equal (the smallest id if
  several are), and the json's width/height are checked too. The official noun list is kept
  as ``official_nouns``: the ``attn_list`` as a JSON list of ``[noun, mask path or null]`` pairs
  in the file's order, so that ``nouns.source: official`` can skip the nouns without a mask.

Row checks, in this order; a row gets the first reason that applies (reject codes):
  ``duplicate_caption_id``  the first row in file order claims an id; every later row with the
                            same id is rejected, whatever else is wrong with it
  ``unknown_image``         a COCO annotation whose image_id is not in ``images``; a
                            tokencompose file name absent from ``coco_captions``
  ``unsafe_path``           file name empty, absolute, with a drive letter, a backslash
                            or NUL, or a ``..`` part (lexical check: symlinks inside images_dir,
                            such as a DVC symlink cache, are allowed)
  ``bad_file_name``         tokencompose only: no digits in the file name to give an image_id
  ``unmatched_caption``     tokencompose with coco_captions: no COCO caption of that image
                            has this text (if no line matches at all the stage raises instead)
  ``empty_caption``         empty or whitespace-only after normalisation

Then selection (on rows that passed the row checks; it depends only on the annotations,
never on the image files):
  ``all``            every row
  ``one_per_image``  per image the row with the smallest caption_id
  ``first_n``        the first ``first_n`` rows by caption_id
  ``ids``            the caption ids listed in ``ids_file`` (one integer a line; blank lines
                     and ``#`` comments allowed). An id that is not in the input at all is an
                     error (a wrong ids file or profile), not a reject. An id whose row was
                     rejected by a row check stays a reject with that reason.
  ``clip_best``      per image the caption CLIP matches best (TokenCompose's choice; the one
                     mode that looks at the pixels: it runs after the image checks below, on
                     every caption of the images that pass them; ``pipeline.data.caption_choice``).
                     ``clip_model`` (hub id or folder) is loaded before anything is read; an
                     image CLIP cannot score rejects its captions as ``clip_failed``; the chosen
                     caption's logit is the table's ``clip_score``.
Rows that passed the row checks but were not chosen are counted as ``not_selected``; they
are not rejects.

Then image checks on the selected rows, each image decoded once (``img.load()``):
  ``missing_image``     no such file under images_dir
  ``corrupt_image``     PIL cannot open or fully decode it (truncated, not an image, ...)
  ``unsupported_mode``  16-bit or float pixels (see ``pipeline.core.images``)
A width/height in the json that disagrees with the decoded image is not a reject: the row
is kept with the real size, a warning names the images, and ``summary.size_mismatch`` counts
them. ``first_n`` therefore keeps fewer than N rows when some of the N have bad images.

Captions are NFC-normalised with runs of whitespace collapsed to one space and stripped;
non-ASCII text is kept.

A structurally malformed input (not JSON, missing keys, non-integer ids, a caption that is
not a string or null) raises ValueError naming the position: that is a wrong file, not a
row to skip.

Outputs (``out_dir``)
---------------------
- ``captions.parquet``: ``CAPTIONS_SCHEMA`` below, sorted by caption_id. ``path`` is
  ``images_dir/file`` with images_dir as configured (relative to the repo root for the
  default params). ``mode`` is the image's original PIL mode (``RGB``, ``L``, ``CMYK``);
  read pixels with ``pipeline.core.images.load_rgb(path)``.
- ``rejects.parquet``: the common rejects schema (``pipeline.core.schemas.REJECTS_SCHEMA``), key
  = caption id (tokencompose rows without a COCO id: ``line:<n>``).
- ``summary.json``: format, select, input_rows, kept, rejected, not_selected,
  rejected_by_reason, images (distinct kept images), images_decoded, size_mismatch,
  modes (distinct kept images per mode); ``clip_best``: clip_model; ``format: tokencompose``:
  ``official_list``, the kept captions beside the official list's 4,526
  (``pipeline.core.official_list``). ``input_rows == kept + rejected + not_selected`` is checked
  before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Literal

import pyarrow as pa
from tqdm import tqdm

from pipeline.core.config import ConfigError
from pipeline.core.guards import StageInputError, check_rejects
from pipeline.core.devices import resolve_device
from pipeline.core.images import RGB_CONVERTIBLE, ImageInfo, probe
from pipeline.core.official_list import beside_official
from pipeline.core.schemas import CAPTIONS_SCHEMA
from pipeline.core.tables import read_table, rejects_table, write_json, write_table
from pipeline.data.caption_choice import CLIP_FAILED, Scorer, choose_by_clip, clip_scorer
from pipeline.data.reference_masks import check_instances_match

log = logging.getLogger(__name__)

STAGE = "captions"

REASONS = (
    "duplicate_caption_id",
    "unknown_image",
    "unsafe_path",
    "bad_file_name",
    "unmatched_caption",
    "empty_caption",
    "missing_image",
    "corrupt_image",
    "unsupported_mode",
    "clip_failed",
)
SELECT_MODES = ("all", "one_per_image", "first_n", "ids", "clip_best")


@dataclass(frozen=True)
class CaptionsConfig:
    """Section ``captions`` of params.yaml (see the module docstring)."""

    format: Literal["coco", "tokencompose"]
    source: str                       # COCO captions json, or TokenCompose metadata.jsonl
    images_dir: str
    select: Literal["all", "one_per_image", "first_n", "ids", "clip_best"] = "all"
    first_n: int | None = None
    ids_file: str | None = None
    out_dir: str = "data/captions"
    coco_captions: str | None = None  # tokencompose only: take caption ids from this COCO json
    instances: str | None = None      # COCO instances json: kept images' ids and sizes checked against it
    max_reject_share: float = 0.5     # more rejects than this share of the rows checked: the stage fails
    clip_model: str | None = None     # select clip_best: a CLIP hub id or folder (paper: openai/clip-vit-large-patch14-336)
    device: str = "auto"              # select clip_best: where CLIP runs (auto | cpu | cuda | cuda:N)

    def validate(self) -> None:
        if not self.source:
            raise ConfigError("captions.source must be non-empty")
        if not 0.0 <= self.max_reject_share <= 1.0:
            raise ConfigError(f"captions.max_reject_share must be in [0, 1], got {self.max_reject_share!r}")
        if self.format == "coco" and self.coco_captions is not None:
            raise ConfigError("dataset.coco_captions is only used with format 'tokencompose'; set it to null")
        if self.select == "first_n":
            if self.first_n is None or self.first_n < 1:
                raise ConfigError(f"captions.first_n must be >= 1 with select 'first_n', got {self.first_n!r}")
        elif self.first_n is not None:
            raise ConfigError(f"captions.first_n is set but select is {self.select!r}; "
                              "set select: first_n or first_n: null")
        for select, name in (("ids", "ids_file"), ("clip_best", "clip_model")):  # each option to its select
            value = getattr(self, name)
            if self.select == select and not value:
                raise ConfigError(f"captions.{name} is required with select '{select}'")
            if self.select != select and value is not None:
                raise ConfigError(f"captions.{name} is set but select is {self.select!r}; "
                                  f"set select: {select} or {name}: null")
        if not self.images_dir or not self.out_dir:
            raise ConfigError("captions.images_dir and captions.out_dir must be non-empty")


@dataclass
class Row:
    """One input caption while it moves through the checks."""

    pos: int                       # position in the input (annotation index or line number)
    caption_id: int | None
    image_id: int | None
    file: str | None
    caption: str
    json_size: tuple[int, int] | None = None
    official_nouns: str | None = None
    reason: str | None = None
    detail: str = ""

    @property
    def key(self) -> str:
        return str(self.caption_id) if self.caption_id is not None else f"line:{self.pos}"

    def reject(self, reason: str, detail: str) -> None:
        if self.reason is None:
            self.reason, self.detail = reason, detail


@dataclass
class CaptionsResult:
    table: pa.Table
    rejects: pa.Table
    summary: dict[str, Any]
    rows: list[Row] = field(default_factory=list, repr=False)


def normalize_caption(text: str | None) -> str:
    """NFC-normalise, collapse every run of (Unicode) whitespace to one space, strip."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"caption must be a string, got {text!r}")
    return " ".join(unicodedata.normalize("NFC", text).split())


_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_path_reason(file_name: Any) -> str | None:
    """Why ``file_name`` may not be joined to images_dir, or None when it is a safe relative path."""
    if not isinstance(file_name, str) or not file_name.strip():
        return "empty file name"
    if "\x00" in file_name:
        return "NUL in file name"
    if "\\" in file_name:
        return "backslash in file name"
    if file_name.startswith("/") or _DRIVE.match(file_name):
        return "absolute path"
    parts = PurePosixPath(file_name).parts
    if ".." in parts:
        return "'..' in path"
    if not parts or file_name.endswith("/"):
        return "not a file path"
    return None


def _int_field(obj: dict, key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _load_json(path: str | Path) -> dict:
    """A COCO captions json; a file of another kind (instances, TokenCompose jsonl) is a StageInputError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions json not found: {path}")
    with path.open(encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        first = text.lstrip().split("\n", 1)[0]
        try:
            rec = json.loads(first)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "file_name" in rec and "text" in rec:
            raise StageInputError(
                f"{path} is a TokenCompose metadata.jsonl (one JSON object a line), not a COCO captions json: "
                "set dataset.format: tokencompose") from None
        raise ValueError(f"{path}: not a JSON file: {e}") from e
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise StageInputError(f"{path}: not a COCO captions file (needs lists 'images' and 'annotations')")
    anns = data["annotations"]
    if anns and not any(isinstance(a, dict) and "caption" in a for a in anns):
        kind = ("a COCO instances file (annotations with category_id and segmentation)"
                if any(isinstance(a, dict) and "category_id" in a for a in anns) else "not a COCO captions file")
        raise StageInputError(
            f"{path} is {kind}: none of its {len(anns)} annotations has a 'caption'. "
            "dataset.captions must be a COCO captions json such as captions_train2017.json")
    return data


def _image_index(data: dict, where: str) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise ValueError(f"{where}: images[{i}] is not an object")
        image_id = _int_field(img, "id", f"{where}: images[{i}]")
        if image_id in images:
            if images[image_id].get("file_name") != img.get("file_name"):
                raise ValueError(f"{where}: image id {image_id} listed twice with different file names")
            continue
        images[image_id] = img
    return images


def _json_size(img: dict) -> tuple[int, int] | None:
    w, h = img.get("width"), img.get("height")
    if isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and not isinstance(h, bool):
        return (w, h)
    return None


def read_coco(path: str | Path) -> list[Row]:
    """Rows of a COCO captions json, with parse-time rejects (unknown_image, unsafe_path) marked."""
    data = _load_json(path)
    images = _image_index(data, str(path))
    rows = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotations[{i}] is not an object")
        where = f"{path}: annotations[{i}]"
        row = Row(
            pos=i,
            caption_id=_int_field(ann, "id", where),
            image_id=_int_field(ann, "image_id", where),
            file=None,
            caption=normalize_caption(ann.get("caption")),
        )
        img = images.get(row.image_id)
        if img is None:
            row.reject("unknown_image", f"image_id {row.image_id} is not in 'images'")
        else:
            row.file = img.get("file_name")
            row.json_size = _json_size(img)
            why = unsafe_path_reason(row.file)
            if why:
                row.reject("unsafe_path", f"{row.file!r}: {why}")
        rows.append(row)
    return rows


_DIGITS = re.compile(r"\d+")


def read_tokencompose(path: str | Path, coco_captions: str | Path | None = None) -> list[Row]:
    """Rows of TokenCompose's ``metadata.jsonl`` (see the module docstring for the ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata jsonl not found: {path}")
    by_file: dict[str, dict] | None = None
    caption_ids: dict[tuple[int, str], int] = {}
    if coco_captions is not None:
        data = _load_json(coco_captions)
        images = _image_index(data, str(coco_captions))
        by_file = {img.get("file_name"): img for img in images.values()}
        for ann in data["annotations"]:
            k = (ann.get("image_id"), normalize_caption(ann.get("caption")))
            if ann.get("id") is not None and (k not in caption_ids or ann["id"] < caption_ids[k]):
                caption_ids[k] = ann["id"]
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n + 1}: invalid JSON: {e}") from e
            if isinstance(rec, dict) and isinstance(rec.get("images"), list) and "annotations" in rec:
                raise StageInputError(
                    f"{path} is a COCO json (keys 'images', 'annotations'), not a TokenCompose metadata.jsonl: "
                    "set dataset.format: coco")
            if not isinstance(rec, dict) or "file_name" not in rec or "text" not in rec:
                raise ValueError(f"{path}:{n + 1}: expected an object with 'file_name' and 'text'")
            attn = rec.get("attn_list")
            nouns = None
            if attn is not None:
                if not isinstance(attn, list) or not all(
                        isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
                        and (a[1] is None or isinstance(a[1], str)) for a in attn):
                    raise ValueError(f"{path}:{n + 1}: 'attn_list' must be a list of [noun, mask path or null] pairs")
                nouns = json.dumps([[a[0], a[1]] for a in attn], ensure_ascii=False)
            file_name = rec["file_name"]
            row = Row(pos=n, caption_id=n, image_id=None, file=file_name,
                      caption=normalize_caption(rec["text"]), official_nouns=nouns)
            why = unsafe_path_reason(file_name)
            if by_file is not None:
                row.caption_id = None
                img = by_file.get(file_name)
                if img is None:
                    row.reject("unknown_image", f"{file_name!r} is not in {coco_captions}")
                else:
                    row.image_id = img["id"]
                    row.json_size = _json_size(img)
                    row.caption_id = caption_ids.get((row.image_id, row.caption))
                    if why:
                        row.reject("unsafe_path", f"{file_name!r}: {why}")
                    elif row.caption_id is None:
                        row.reject("unmatched_caption",
                                   f"no caption of image {row.image_id} reads {row.caption!r}")
            elif why:
                row.reject("unsafe_path", f"{file_name!r}: {why}")
            else:
                digits = _DIGITS.findall(PurePosixPath(file_name).stem)
                if digits:
                    row.image_id = int(digits[-1])
                else:
                    row.reject("bad_file_name", f"no digits in {file_name!r} to make an image_id")
            rows.append(row)
    if by_file is not None and rows and all(r.reason in ("unmatched_caption", "unknown_image") for r in rows):
        raise ValueError(
            f"no line of {path} matches a caption in {coco_captions}; "
            "set dataset.coco_captions: null to number captions by line instead"
        )
    return rows


def check_rows(rows: list[Row]) -> None:
    """Mark duplicate_caption_id (first in input order wins) and empty_caption rejects in place."""
    seen: set[int] = set()
    for row in rows:
        if row.caption_id is None:
            continue
        if row.caption_id in seen:
            row.reason = "duplicate_caption_id"
            row.detail = f"caption id {row.caption_id} already used earlier in the input (row {row.pos})"
        seen.add(row.caption_id)
    for row in rows:
        if not row.caption:
            row.reject("empty_caption", "caption is empty or whitespace only")


def read_ids_file(path: str | Path) -> list[int]:
    """Caption ids, one integer a line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ids file not found: {path}")
    ids = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(int(text))
        except ValueError:
            raise ValueError(f"{path}:{n}: not an integer caption id: {text!r}") from None
    return ids


def select_rows(rows: list[Row], select: str, first_n: int | None = None,
                ids: Iterable[int] | None = None) -> tuple[list[Row], int]:
    """Choose among rows without a reject; returns (chosen rows by caption_id, not_selected count)."""
    valid = sorted((r for r in rows if r.reason is None), key=lambda r: r.caption_id)
    if select == "all":
        chosen = valid
    elif select == "one_per_image":
        per_image: dict[int, Row] = {}
        for r in valid:
            per_image.setdefault(r.image_id, r)
        chosen = sorted(per_image.values(), key=lambda r: r.caption_id)
    elif select == "first_n":
        if first_n is None or first_n < 1:
            raise ValueError(f"first_n must be >= 1, got {first_n!r}")
        chosen = valid[:first_n]
    elif select == "ids":
        wanted = set(ids or ())
        known = {r.caption_id for r in rows if r.caption_id is not None}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"{len(unknown)} caption id(s) from the ids file are not in the input, "
                             f"e.g. {unknown[:10]}")
        chosen = [r for r in valid if r.caption_id in wanted]
    else:
        raise ValueError(f"unknown select mode {select!r}")
    return chosen, len(valid) - len(chosen)


def _probe_one(path: Path) -> ImageInfo | tuple[str, str]:
    if not path.is_file():
        return ("missing_image", f"no file {path}")
    try:
        info = probe(path)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return ("corrupt_image", f"{path}: {type(e).__name__}: {e}")
    if info.mode not in RGB_CONVERTIBLE:
        return ("unsupported_mode", f"{path}: mode {info.mode!r}")
    return info


def probe_images(files: Iterable[str], images_dir: str | Path,
                 workers: int | None = None) -> dict[str, ImageInfo | tuple[str, str]]:
    """Decode each distinct file once: file -> ImageInfo, or (reason, detail) when it is unusable."""
    unique = sorted(set(files))
    workers = workers or min(8, os.cpu_count() or 1)
    root = Path(images_dir)
    out: dict[str, ImageInfo | tuple[str, str]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(unique), desc="decode images", unit="img", dynamic_ncols=True) as bar:
        for f, res in zip(unique, pool.map(lambda f: _probe_one(root / f), unique)):
            out[f] = res
            bar.update(1)
    return out


def build_captions(cfg: CaptionsConfig, workers: int | None = None, scorer: Scorer | None = None) -> CaptionsResult:
    """Run every check and the selection; nothing is written. ``scorer``: select clip_best's
    (default: ``clip_scorer(cfg.clip_model, cfg.device)``, loaded before anything is read)."""
    if cfg.select == "clip_best" and scorer is None:
        scorer = clip_scorer(cfg.clip_model, resolve_device(cfg.device))
    if cfg.format == "coco":
        rows = read_coco(cfg.source)
    else:
        rows = read_tokencompose(cfg.source, cfg.coco_captions)
    log.info("%s: %d caption rows", cfg.source, len(rows))
    check_rows(rows)

    ids = read_ids_file(cfg.ids_file) if cfg.select == "ids" else None
    chosen, not_selected = select_rows(rows, "all" if cfg.select == "clip_best" else cfg.select, cfg.first_n, ids)
    log.info("select %s: %d rows chosen, %d not selected", cfg.select, len(chosen), not_selected)

    infos = probe_images((r.file for r in chosen), cfg.images_dir, workers)
    kept: list[dict[str, Any]] = []
    mismatched: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    for r in chosen:
        info = infos[r.file]
        if isinstance(info, tuple):
            r.reject(*info)
            continue
        if r.json_size is not None and r.json_size != (info.width, info.height):
            mismatched[r.file] = (r.json_size, (info.width, info.height))
        kept.append({
            "image_id": r.image_id,
            "caption_id": r.caption_id,
            "file": r.file,
            "path": Path(cfg.images_dir, r.file).as_posix(),
            "width": info.width,
            "height": info.height,
            "mode": info.mode,
            "caption": r.caption,
            "official_nouns": r.official_nouns,
        })
    if cfg.select == "clip_best":
        kept, not_selected = _clip_choice(kept, chosen, scorer)
    if mismatched:
        examples = ", ".join(f"{f} json {a[0]}x{a[1]} real {b[0]}x{b[1]}"
                             for f, (a, b) in list(mismatched.items())[:5])
        log.warning("%d image(s) differ in size from the json; their real size is used: %s",
                    len(mismatched), examples)

    rejected = sorted((r for r in rows if r.reason is not None), key=lambda r: r.pos)
    summary = _summary(cfg, rows, kept, rejected, not_selected, len(infos), len(mismatched))
    table = pa.Table.from_pylist(kept, schema=CAPTIONS_SCHEMA)
    rejects = rejects_table(STAGE, ((r.key, r.reason, r.detail) for r in rejected))
    return CaptionsResult(table=table, rejects=rejects, summary=summary, rows=rows)


def _summary(cfg: CaptionsConfig, rows: list[Row], kept: list[dict[str, Any]], rejected: list[Row],
             not_selected: int, decoded: int, mismatched: int) -> dict[str, Any]:
    """The stage's summary (see the module docstring); rows that do not add up are a RuntimeError."""
    kept_images = {row["file"]: row["mode"] for row in kept}
    summary = {
        "format": cfg.format,
        "select": cfg.select,
        "input_rows": len(rows),
        "kept": len(kept),
        "rejected": len(rejected),
        "not_selected": not_selected,
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejected).items())),
        "images": len(kept_images),
        "images_decoded": decoded,
        "size_mismatch": mismatched,
        "modes": dict(sorted(Counter(kept_images.values()).items())),
    }
    if cfg.select == "clip_best":
        summary["clip_model"] = cfg.clip_model
    if cfg.format == "tokencompose":
        summary.update(beside_official(captions=len(kept)))
    if summary["input_rows"] != summary["kept"] + summary["rejected"] + summary["not_selected"]:
        raise RuntimeError(f"captions: rows do not add up: {summary}")
    return summary


def _clip_choice(kept: list[dict[str, Any]], chosen: list[Row], scorer: Scorer) -> tuple[list[dict[str, Any]], int]:
    """select clip_best on the rows that passed the image checks: the kept rows and the not-selected count;
    the captions of an image CLIP could not score are marked ``clip_failed`` in ``chosen``."""
    best, failed, not_selected = choose_by_clip(kept, scorer)
    for r in chosen:
        if r.caption_id in failed:
            r.reject(CLIP_FAILED, failed[r.caption_id])
    return best, not_selected


def reject_hints(cfg: CaptionsConfig) -> dict[str, str]:
    """What to check when a reason dominates the rejects (params named as the user sets them)."""
    return {
        "missing_image": f"is dataset.images_dir ({cfg.images_dir}) the folder holding the images "
                         f"that {cfg.source} names?",
        "corrupt_image": f"does dataset.images_dir ({cfg.images_dir}) hold image files?",
        "unknown_image": "is dataset.captions a complete COCO captions file (and dataset.coco_captions "
                         "the json of the same split)?",
        "unmatched_caption": "is dataset.coco_captions the COCO captions json of dataset.captions' images?",
        "empty_caption": f"is {cfg.source} a captions file?",
        "duplicate_caption_id": f"is {cfg.source} two files concatenated?",
        "unsafe_path": "file names must be relative paths under dataset.images_dir",
        "bad_file_name": "tokencompose file names need the COCO image id's digits; or set dataset.coco_captions",
        CLIP_FAILED: f"can captions.clip_model ({cfg.clip_model}) read these images?",
    }


def check_captions(result: CaptionsResult, cfg: CaptionsConfig) -> None:
    """Fail on nonsense input: no row kept, or more than ``max_reject_share`` of the rows checked
    rejected (StageInputError naming the top reasons, an example and what to check)."""
    s = result.summary
    examples = {}
    for r in result.rows:
        if r.reason is not None and r.reason not in examples:
            examples[r.reason] = r.detail
    check_rejects(STAGE, s["kept"] + s["rejected"], s["kept"], s["rejected_by_reason"],
                  cfg.max_reject_share, unit="captions", hints=reject_hints(cfg), examples=examples)


def run_captions(cfg: CaptionsConfig, workers: int | None = None) -> dict[str, Any]:
    """Build, check (``check_captions``; the images against ``cfg.instances`` when set) and write
    ``captions.parquet``, ``rejects.parquet`` and ``summary.json`` to out_dir. Nothing is written
    when a check fails."""
    result = build_captions(cfg, workers)
    check_captions(result, cfg)
    if cfg.instances is not None:
        check_instances_match(result.table, cfg.instances)
    out = Path(cfg.out_dir)
    write_table(result.table, out / "captions.parquet")
    write_table(result.rejects, out / "rejects.parquet")
    write_json(result.summary, out / "summary.json")
    s = result.summary
    log.info("captions: %d kept, %d rejected %s, %d not selected, %d images -> %s",
             s["kept"], s["rejected"], s["rejected_by_reason"], s["not_selected"], s["images"], out)
    return s


def read_captions(path: str | Path) -> pa.Table:
    """Read a captions table and check it has ``CAPTIONS_SCHEMA``'s columns and types."""
    table = read_table(path)
    missing = [f.name for f in CAPTIONS_SCHEMA if f.name not in table.schema.names]
    if missing:
        raise ValueError(f"{path}: not a captions table, missing columns {missing}")
    return table.select(CAPTIONS_SCHEMA.names).cast(CAPTIONS_SCHEMA)
