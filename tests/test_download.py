"""Downloads and zip extraction against a local HTTP server (127.0.0.1, random port, in a thread)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image
from stagerun import HANG_TIMEOUT_S

from pipeline.core.config import ConfigError, from_dict
from pipeline.core.download import (
    COCO_2017_URLS,
    DownloadError,
    UnsafeArchiveError,
    download,
    extract_zip,
    read_marker,
)
from pipeline.data.coco_download import CocoDownloadConfig

REPO = Path(__file__).resolve().parents[1]
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files with ``Range: bytes=N-`` support (if ``server.ranges``), logs every request,
    and can cut the next response short after ``server.cut_next`` body bytes."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.seen.append((self.path, rng))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng and srv.ranges:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/zip")
        self.end_headers()
        if srv.cut_next:
            self.wfile.write(body[: srv.cut_next])
            srv.cut_next = 0
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    httpd.daemon_threads = True
    httpd.seen, httpd.ranges, httpd.cut_next, httpd.root = [], True, 0, root
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def tiny_jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="JPEG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.read_bytes()


def coco_members() -> dict[str, bytes]:
    captions = {"images": [{"id": 1, "file_name": "000000000001.jpg", "width": 16, "height": 12},
                           {"id": 2, "file_name": "000000000002.jpg", "width": 16, "height": 12}],
                "annotations": [{"id": 10, "image_id": 1, "caption": "a red box"},
                                {"id": 20, "image_id": 2, "caption": "a blue box"}]}
    return {
        "annotations/captions_train2017.json": json.dumps(captions).encode(),
        "train2017/000000000001.jpg": tiny_jpeg((255, 0, 0)),
        "train2017/000000000002.jpg": tiny_jpeg((0, 0, 255)),
        # stored uncompressed and large enough that a resume really starts mid-file
        "train2017/padding.bin": os.urandom(200_000),
    }


@pytest.fixture
def coco_zip(server) -> tuple[str, bytes]:
    data = make_zip(server.root / "coco-fake.zip", coco_members())
    return f"{server.url}/coco-fake.zip", data


def test_download_and_extract(coco_zip, tmp_path: Path) -> None:
    url, data = coco_zip
    dest = download(url, tmp_path / "dl" / "coco-fake.zip", sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert not (tmp_path / "dl" / "coco-fake.zip.part").exists()

    out = tmp_path / "coco"
    marker = extract_zip(dest, out)
    assert marker["members"] == 4 and marker["top_level"] == ["annotations", "train2017"]
    captions = json.loads((out / "annotations" / "captions_train2017.json").read_text())
    assert len(captions["annotations"]) == 2
    assert Image.open(out / "train2017" / "000000000001.jpg").size == (16, 12)
    assert read_marker("coco-fake.zip", out) == marker
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-extract")]

    (out / "train2017" / "000000000002.jpg").unlink()
    assert extract_zip(dest, out) == marker  # the marker says done: nothing is extracted again
    assert not (out / "train2017" / "000000000002.jpg").exists()


def test_download_existing_dest_is_kept(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    dest = tmp_path / "x.zip"
    download(url, dest)
    n = len(server.seen)
    download(url, dest, sha256=hashlib.sha256(data).hexdigest())
    assert len(server.seen) == n
    with pytest.raises(DownloadError, match="delete it"):
        download(url, dest, sha256="0" * 64)


def test_resume_partial(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    dest = tmp_path / "coco-fake.zip"
    (tmp_path / "coco-fake.zip.part").write_bytes(data[:1000])
    download(url, dest, sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data
    assert server.seen == [("/coco-fake.zip", "bytes=1000-")]


def test_resume_when_server_ignores_range(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    server.ranges = False
    dest = tmp_path / "coco-fake.zip"
    (tmp_path / "coco-fake.zip.part").write_bytes(b"garbage that must not survive")
    download(url, dest, sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data


def test_complete_part_with_416(coco_zip, tmp_path: Path) -> None:
    url, data = coco_zip
    dest = tmp_path / "coco-fake.zip"
    (tmp_path / "coco-fake.zip.part").write_bytes(data)
    download(url, dest, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data


def test_interrupted_transfer_is_retried_and_resumed(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    server.cut_next = 50_000
    dest = download(url, tmp_path / "coco-fake.zip", retries=2, backoff=0.0, timeout=120)
    assert dest.read_bytes() == data
    assert server.seen == [("/coco-fake.zip", None), ("/coco-fake.zip", "bytes=50000-")]


def test_interrupted_without_retries_keeps_part(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    dest = tmp_path / "coco-fake.zip"
    part = tmp_path / "coco-fake.zip.part"
    server.cut_next = 1234
    with pytest.raises(DownloadError, match="rerun to resume"):
        download(url, dest, retries=0, timeout=120)
    assert part.stat().st_size == 1234 and not dest.exists()
    download(url, dest, retries=0, timeout=120)
    assert dest.read_bytes() == data
    assert server.seen[-1] == ("/coco-fake.zip", "bytes=1234-")


def test_sha256_mismatch(coco_zip, tmp_path: Path) -> None:
    url, _ = coco_zip
    dest = tmp_path / "coco-fake.zip"
    with pytest.raises(DownloadError, match="sha256"):
        download(url, dest, sha256="ab" * 32)
    assert not dest.exists() and not (tmp_path / "coco-fake.zip.part").exists()


def test_size_mismatch_and_404(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    with pytest.raises(DownloadError, match="expected"):
        download(url, tmp_path / "a.zip", size=len(data) + 1)
    n = len(server.seen)
    with pytest.raises(DownloadError, match="404"):
        download(f"{server.url}/nope.zip", tmp_path / "b.zip", retries=3, backoff=0.0)
    assert len(server.seen) == n + 1  # a 404 is not retried


@pytest.mark.parametrize("bad", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt", "C:/evil.txt",
                                 "..\\evil.txt"])
def test_zip_slip_rejected(tmp_path: Path, bad: str) -> None:
    zpath = tmp_path / "slip.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("good/a.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(bad), b"evil")
    out = tmp_path / "out" / "inner"
    with pytest.raises(UnsafeArchiveError):
        extract_zip(zpath, out)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not out.exists() or not any(out.iterdir())


def test_extract_merges_folders(tmp_path: Path) -> None:
    a = tmp_path / "a.zip"
    b = tmp_path / "b.zip"
    make_zip(a, {"annotations/captions.json": b"{}", "train/1.jpg": b"1"})
    make_zip(b, {"annotations/instances.json": b"{}", "val/2.jpg": b"2"})
    out = tmp_path / "out"
    extract_zip(a, out)
    extract_zip(b, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and not p.name.startswith("."))
    assert files == ["annotations/captions.json", "annotations/instances.json", "train/1.jpg", "val/2.jpg"]


def test_config_validation() -> None:
    def load(urls):
        return from_dict(CocoDownloadConfig, {"urls": urls, "out_dir": "data/coco", "keep_zips": False}, "c")

    assert load(list(COCO_2017_URLS)).urls == COCO_2017_URLS
    assert load([]).urls == ()
    with pytest.raises(ConfigError, match="zip"):
        load(["http://x/y.tar"])
    with pytest.raises(ConfigError, match="share"):
        load(["http://x/y.zip", "http://z/y.zip"])
    with pytest.raises(ConfigError, match="http"):
        load(["ftp://x/y.zip"])


PROFILES = [p for p in [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
            if "coco_download" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_profiles_load(path: Path) -> None:
    from pipeline.core.config import load_section

    cfg = load_section("coco_download", CocoDownloadConfig, path)
    assert set(cfg.urls) <= set(COCO_2017_URLS)


def _run_stage(params: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["no_proxy"] = "127.0.0.1,localhost"
    return subprocess.run([sys.executable, "-m", "stages.coco_download", "--params", str(params)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)


def test_stage_script(coco_zip, tmp_path: Path, server) -> None:
    url, data = coco_zip
    out = tmp_path / "coco"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"coco_download": {"urls": [url], "out_dir": str(out), "keep_zips": False}}))
    proc = _run_stage(params)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    (arch,) = manifest["archives"]
    assert arch["url"] == url and arch["zip"] == "coco-fake.zip" and arch["bytes"] == len(data)
    assert arch["sha256"] == hashlib.sha256(data).hexdigest() and arch["members"] == 4
    assert (out / "annotations" / "captions_train2017.json").exists()
    assert (out / "train2017" / "000000000002.jpg").exists()
    assert not (out / "zips").exists()  # keep_zips: false

    n = len(server.seen)
    proc = _run_stage(params)
    assert proc.returncode == 0, proc.stderr
    assert len(server.seen) == n  # extracted already: no request at all
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest


def test_stage_script_no_urls(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    out = tmp_path / "coco"
    params.write_text(yaml.safe_dump({"coco_download": {"urls": [], "out_dir": str(out), "keep_zips": False}}))
    proc = _run_stage(params)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "MANIFEST.json").read_text()) == {"out_dir": str(out), "archives": []}
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json"]
