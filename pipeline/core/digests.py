"""Content digests of input files, cached by their stat signature.

Resume keys (ground/segment shards, training checkpoints) cover the bytes of every input:
at COCO scale that is 118,287 images plus model weights of several GB. Reading them all at
every start is what made start-up slow, so each file's digest is kept in one small JSON file
(``data/.cache/digests.json`` under the working directory, the repository root when DVC runs
a stage; ``$TOKENCOMPOSE_DIGEST_CACHE`` names another file, ``off`` turns the cache off),
keyed by the file's absolute path and *stat signature*:

    (size, mtime_ns, ctime_ns, inode)

A file whose signature is unchanged is not read again; any other file is re-read. This is
the rule of ``make``, git's index and DVC's state database, with their trade-off: an edit
that keeps the size, and restores mtime *and* ctime (only possible by changing the system
clock or by editing the block device) and the inode, goes unseen. ``ctime`` cannot be set by
``touch`` or ``os.utime``, so restoring an mtime after an edit is still seen. Timestamps are
coarse on many file systems (a few ms), so a file changed within ``RACY_SECONDS`` of being
hashed could change again with the same signature; such "racily clean" entries (git's term)
are not stored, and the file is re-read at the next start.

The cache is an optimisation only: a missing, unreadable or corrupt cache file is ignored
(and rebuilt), writes are atomic (temporary file + ``os.replace``) and merge with what another
process wrote meanwhile; entries unused for ``PRUNE_DAYS`` days are dropped.

Besides the digest an entry can hold other facts derived from the same bytes (``fact``):
``build_examples`` keeps each image's header size there, so a second start opens no image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

CACHE_ENV = "TOKENCOMPOSE_DIGEST_CACHE"
DEFAULT_CACHE = Path("data/.cache/digests.json")
FORMAT = 1
RACY_SECONDS = 2.0
PRUNE_DAYS = 30
_BLOCK = 1 << 20


def cache_path() -> Path | None:
    """The cache file: ``$TOKENCOMPOSE_DIGEST_CACHE`` (``off``/empty: no cache) or ``DEFAULT_CACHE``."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return DEFAULT_CACHE
    return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)


def signature(st: os.stat_result) -> list[int]:
    """The stat signature a cache entry is valid for: ``[size, mtime_ns, ctime_ns, inode]``."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the uncached digest)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class DigestCache:
    """``{absolute path: entry}`` loaded from ``path`` (None: an in-memory cache that is never saved).

    An entry is ``{"sig": signature, "used": day, "sha256": hex, <fact name>: value, ...}``.
    ``hashed`` counts files read for their digest by this object (tests and benchmarks).
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._loaded_sig = _file_sig(self.path)
        self.entries: dict[str, dict] = _load(self.path) if self.path is not None else {}
        self.dirty = False
        self.hashed = 0
        self._today = int(time.time() // 86400)

    def _entry(self, file: str | Path, st: os.stat_result | None = None) -> tuple[str, dict, bool]:
        """``(key, entry, racy)`` for ``file`` (whose ``os.stat`` is ``st`` when given) at its current
        signature; a fresh entry if the signature changed."""
        key = os.path.abspath(file)
        st = os.stat(key) if st is None else st
        sig = signature(st)
        racy = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1e9
        entry = self.entries.get(key)
        if entry is None or entry.get("sig") != sig:
            entry = {"sig": sig}
        return key, entry, racy

    def fact(self, file: str | Path, name: str, compute: Callable[[Path], Any],
             st: os.stat_result | None = None) -> Any:
        """``compute(file)``, or its cached value while the file's signature is unchanged.

        The value must be JSON-able; ``compute`` raising is not cached (the error propagates).
        ``st``: the file's ``os.stat`` if the caller has it (saves a system call).
        """
        key, entry, racy = self._entry(file, st)
        if name in entry and not racy:
            if entry.get("used") != self._today:
                entry["used"], self.dirty = self._today, True
            return entry[name]
        value = compute(Path(file))
        if not racy:
            entry[name], entry["used"] = value, self._today
            self.entries[key] = entry
            self.dirty = True
        return value

    def digest(self, file: str | Path, st: os.stat_result | None = None) -> str:
        """Hex sha256 of ``file``'s bytes, read only when its signature changed."""
        return self.fact(file, "sha256", self._hash, st)

    def _hash(self, path: Path) -> str:
        self.hashed += 1
        return sha256_file(path)

    def save(self) -> None:
        """Write the entries atomically, merged with entries another process saved meanwhile.

        Failing to write (read-only folder, full disk) is logged, not raised: the cache is an
        optimisation.
        """
        if self.path is None or not self.dirty:
            return
        try:
            # another process saved since this one loaded: keep its entries too
            theirs = _load(self.path) if _file_sig(self.path) != self._loaded_sig else self.entries
            merged = {k: v for k, v in theirs.items() if self._today - v.get("used", 0) <= PRUNE_DAYS}
            merged.update(self.entries)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"format": FORMAT, "entries": merged}, separators=(",", ":")))
            os.replace(tmp, self.path)
            self.entries, self.dirty, self._loaded_sig = merged, False, _file_sig(self.path)
        except OSError as e:
            log.warning("digest cache %s not written (%s); the next start rehashes its inputs", self.path, e)


def _file_sig(path: Path | None) -> list[int] | None:
    try:
        return signature(os.stat(path)) if path is not None else None
    except OSError:
        return None


def _load(path: Path) -> dict[str, dict]:
    """The entries of a cache file; ``{}`` (and a log line) for a missing or unusable one."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("digest cache %s is unreadable (%s): ignored, it will be rebuilt", path, e)
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(entries, dict):
        log.warning("digest cache %s has an unknown layout: ignored, it will be rebuilt", path)
        return {}
    good = {k: v for k, v in entries.items() if _well_formed(v)}
    if len(good) < len(entries):
        log.warning("digest cache %s: %d malformed entries ignored", path, len(entries) - len(good))
    return good


def _well_formed(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sig"), list) and isinstance(entry.get("used", 0), int)
            and isinstance(entry.get("sha256", ""), str))


_DEFAULT: dict[Path | None, DigestCache] = {}


def default_cache() -> DigestCache:
    """The process's cache for ``cache_path()`` (loaded once per process and path)."""
    path = cache_path()
    key = path.resolve() if path is not None else None
    if key not in _DEFAULT:
        _DEFAULT[key] = DigestCache(path)
    return _DEFAULT[key]


def _named(name: str, digest: str) -> bytes:
    return name.encode() + b"\0" + digest.encode()


def file_digest(*paths: str | Path, cache: DigestCache | None = None) -> str:
    """A 16-hex digest of files' bytes; a folder counts as its files in sorted order with their
    relative paths (a file: its name). Each file's sha256 comes from ``cache`` (default: the
    process's ``default_cache()``, saved on return)."""
    own = cache is None
    cache = default_cache() if own else cache
    h = hashlib.sha256()
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if f.is_file()):
                h.update(_named(str(f.relative_to(p)), cache.digest(f)))
        else:
            h.update(_named(p.name, cache.digest(p)))
    if own:
        cache.save()
    return h.hexdigest()[:16]


def inputs_digest(*inputs: str | Path, cache: DigestCache | None = None) -> str:
    """A 16-hex digest of a stage's inputs: local files and folders by their bytes
    (``file_digest``), anything else (a hub id, a file that is missing and will be reported when
    read) by its text. Every item is also keyed by its text, as given. One ``stat`` per file."""
    own = cache is None
    cache = default_cache() if own else cache
    h = hashlib.sha256()
    for item in inputs:
        text = os.fspath(item) if isinstance(item, os.PathLike) else str(item)
        h.update(text.encode() + b"\0")
        try:
            st = os.stat(text)
        except (FileNotFoundError, NotADirectoryError, ValueError):  # a hub id, a missing file
            h.update(b"<not a local path>")
            continue
        if stat.S_ISDIR(st.st_mode):
            h.update(file_digest(text, cache=cache).encode())
        else:
            single = hashlib.sha256(_named(os.path.basename(text), cache.digest(text, st)))
            h.update(single.hexdigest()[:16].encode())
    if own:
        cache.save()
    return h.hexdigest()[:16]


def on_main_process(fn: Callable[[], Any], is_main: bool, num_processes: int) -> Any:
    """``fn()`` computed once, on the main process, its (picklable) result returned on every process.

    With several processes the result travels by accelerate's ``broadcast_object_list``; every
    process must call this at the same point. An exception on the main process is re-raised
    there and, as RuntimeError naming it, on every other process, so none waits forever.
    """
    if num_processes <= 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    payload: list[Any] = [None, None]  # [result, error message]
    error: Exception | None = None
    if is_main:
        try:
            payload[0] = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, once the others are told
            error, payload[1] = e, f"{type(e).__name__}: {e}"
    result, message = broadcast_object_list(payload, from_process=0)
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"the main process failed: {message}")
    return result
