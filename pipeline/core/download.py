"""Resumable downloads and safe zip extraction (COCO 2017 and the MultiGen prompt files).

``download`` streams to ``<dest>.part``; when a ``.part`` exists it asks for the rest with an
HTTP ``Range`` header and appends if the server answers 206 (a 200 restarts from zero). The
size (from ``Content-Length``/``Content-Range``, or ``size=``) and the optional sha256 are
checked before the ``.part`` is renamed onto ``dest``. Connection failures are retried,
each retry resuming where the last one stopped. Proxies come from the usual environment
variables (``http_proxy``, ``no_proxy``).

``extract_zip`` checks every member first and refuses the whole archive if one is unsafe
(absolute path, drive letter, ``..`` part); it extracts into a temporary folder inside
``dest_dir``, moves the top-level entries into place (merging into existing folders), and
then writes the completion marker ``dest_dir/.extracted-<zip name>.json``::

    {"zip": name, "bytes": zip size, "sha256": hex or null, "members": count, "top_level": [names]}

With the marker present (and recording the same zip size, when the zip still exists) it
does nothing, so reruns are cheap.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from pipeline.core.tables import write_json

log = logging.getLogger(__name__)

COCO_2017_URLS = (
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
    "http://images.cocodataset.org/zips/train2017.zip",
    "http://images.cocodataset.org/zips/val2017.zip",
)


class DownloadError(IOError):
    """A download failed, came back with the wrong size, or failed its checksum."""


class UnsafeArchiveError(ValueError):
    """A zip member would be written outside the extraction folder."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _hash_file(path: str | Path, chunk: int) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    return _hash_file(path, chunk).hexdigest()


def _fetch(url: str, part: Path, chunk: int, timeout: float, size: int | None) -> tuple[int | None, Any]:
    """One attempt: append the rest of ``url`` to ``part``; returns (expected total or None, sha256 so far)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "tokencompose-pipeline"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and size is not None and have == size:
            log.info("%s: .part already complete (%d bytes)", part, have)
            return size, _hash_file(part, chunk)
        if e.code == 416:
            log.warning("%s: server refused to resume (416); restarting", url)
            part.unlink()
        raise
    with resp:
        status = resp.status
        total: int | None = None
        if have and status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DownloadError(f"{url}: bad Content-Range {resp.headers.get('Content-Range')!r} "
                                    f"for offset {have}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            log.info("%s: resuming at %d bytes", url, have)
            mode = "ab"
        else:
            if have:
                log.info("%s: server does not support ranges (status %d); restarting", url, status)
            have = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        if total is not None and size is not None and total != size:
            raise DownloadError(f"{url}: server reports {total} bytes, expected {size}")
        h = _hash_file(part, chunk) if mode == "ab" else hashlib.sha256()
        with open(part, mode) as out, tqdm(total=total or size, initial=have, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name.removesuffix(".part"),
                                           dynamic_ncols=True) as bar:
            while block := resp.read(chunk):
                out.write(block)
                h.update(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    expected = total if total is not None else size
    got = part.stat().st_size
    if expected is not None and got < expected:
        raise http.client.IncompleteRead(b"", expected - got)
    return expected, h


def download(url: str, dest: str | Path, sha256: str | None = None, chunk: int = 1 << 20,
             size: int | None = None, retries: int = 3, timeout: float = 60.0,
             backoff: float = 2.0) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomic rename); returns ``dest``.

    An existing ``dest`` is kept when it passes the given checks (size, sha256); if it
    fails them, DownloadError tells the user to delete it.
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        if size is not None and dest.stat().st_size != size:
            raise DownloadError(f"{dest} exists with {dest.stat().st_size} bytes, expected {size}; "
                                "delete it to download again")
        if sha256 is not None and sha256_file(dest, chunk) != sha256:
            raise DownloadError(f"{dest} exists but its sha256 is not {sha256}; delete it to download again")
        log.info("%s: already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            total, h = _fetch(url, part, chunk, timeout, size)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code not in (408, 416, 429) or attempt == retries:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            err: Exception = e
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, DownloadError) or attempt == retries:
                raise DownloadError(f"{url}: {type(e).__name__}: {e} "
                                    "(the .part file is kept; rerun to resume)") from e
            err = e
        wait = backoff * (2 ** attempt)
        log.warning("%s: attempt %d/%d failed (%s); retrying in %.0f s", url, attempt + 1, retries + 1, err, wait)
        time.sleep(wait)
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(f"{url}: got {got} bytes, expected {total} (the .part file is kept; rerun to resume)")
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256}; "
                            "the download was deleted")
    os.replace(part, dest)
    log.info("%s -> %s (%d bytes, sha256 %s)", url, dest, got, digest)
    return dest


def _unsafe_member(name: str) -> str | None:
    if not name or "\x00" in name:
        return "empty name or NUL"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in PurePosixPath(norm).parts:
        return "'..' in path"
    return None


def marker_path(zip_name: str, dest_dir: str | Path) -> Path:
    return Path(dest_dir) / f".extracted-{zip_name}.json"


def read_marker(zip_name: str, dest_dir: str | Path) -> dict[str, Any] | None:
    """The completion marker of ``zip_name`` in ``dest_dir``, or None when it was not extracted."""
    path = marker_path(zip_name, dest_dir)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _merge_move(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; folders are merged (following symlinks), files replaced."""
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
        src.rmdir()
    elif dst.exists() and src.is_dir() != dst.is_dir():
        raise FileExistsError(f"cannot extract {src.name}: {dst} exists and is not the same kind (file vs folder)")
    else:
        shutil.move(str(src), str(dst))


def extract_zip(path: str | Path, dest_dir: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """Extract ``path`` into ``dest_dir`` safely and idempotently; returns the completion marker."""
    path, dest_dir = Path(path), Path(dest_dir)
    marker = read_marker(path.name, dest_dir)
    zip_bytes = path.stat().st_size
    if marker is not None and marker.get("bytes") == zip_bytes:
        log.info("%s: already extracted into %s", path.name, dest_dir)
        return marker
    with zipfile.ZipFile(path) as zf:
        members = zf.infolist()
        bad = [(m.filename, why) for m in members if (why := _unsafe_member(m.filename))]
        if bad:
            raise UnsafeArchiveError(f"{path}: {len(bad)} unsafe member(s), nothing extracted: {bad[:5]}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = dest_dir / f".tmp-extract-{path.name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            for m in tqdm(members, desc=f"extract {path.name}", unit="file", dynamic_ncols=True):
                zf.extract(m, tmp)
            top = sorted(p.name for p in tmp.iterdir())
            for name in top:
                _merge_move(tmp / name, dest_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    marker = {"zip": path.name, "bytes": zip_bytes, "sha256": sha256, "members": len(members), "top_level": top}
    write_json(marker, marker_path(path.name, dest_dir))
    log.info("%s: %d members extracted into %s (%s)", path.name, len(members), dest_dir, ", ".join(top))
    return marker
