"""Input digests cached by stat signature; model folders hashed by the files their loaders read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.core import digests
from pipeline.core.digests import DigestCache, file_digest, inputs_digest, on_main_process
from pipeline.models.weight_files import SD_TRAIN_COMPONENTS, loaded_files, model_inputs


@pytest.fixture()
def settled(monkeypatch):
    """Files count as settled at once (no racy window), as files written long before a start do."""
    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)


def _bump_mtime(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _write_same_size(path: Path, data: bytes) -> None:
    assert len(data) == path.stat().st_size
    path.write_bytes(data)


def test_an_unchanged_file_is_not_read_again(tmp_path, settled, monkeypatch):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc" * 100)
    cache_file = tmp_path / "cache" / "digests.json"
    first = DigestCache(cache_file)
    d1 = file_digest(f, cache=first)
    first.save()
    assert first.hashed == 1 and cache_file.is_file()

    reads = []
    monkeypatch.setattr(digests, "sha256_file", lambda p: reads.append(p) or "x")
    second = DigestCache(cache_file)  # a new start: the cache comes from the file
    assert file_digest(f, cache=second) == d1 and reads == [] and second.hashed == 0


def test_a_changed_file_is_read_again(tmp_path, settled):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc" * 100)
    cache = DigestCache(tmp_path / "digests.json")
    before = file_digest(f, cache=cache)
    _write_same_size(f, b"abd" * 100)
    _bump_mtime(f)
    assert file_digest(f, cache=cache) != before and cache.hashed == 2


def test_a_file_changed_within_the_racy_window_is_never_trusted(tmp_path):
    """An edit that keeps size and mtime right after hashing (coarse timestamps) is still seen."""
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc" * 100)
    cache = DigestCache(tmp_path / "digests.json")
    before = file_digest(f, cache=cache)
    st = f.stat()
    _write_same_size(f, b"abd" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and mtime as when hashed
    assert file_digest(f, cache=cache) != before
    assert os.path.abspath(f) not in cache.entries  # racily clean: not stored


def _malformed(f: Path) -> bytes:
    """Valid JSON whose entry for ``f`` has the right signature but a broken digest and day."""
    entry = {"sig": digests.signature(f.stat()), "used": "today", "sha256": 7}
    return json.dumps({"format": 1, "entries": {os.path.abspath(f): entry}}).encode()


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", json.dumps({"format": 1, "entries": [1]}).encode(),
                                     json.dumps({"format": 99, "entries": {}}).encode(), b"\xff\xfe", _malformed])
def test_a_corrupt_cache_is_ignored_and_rebuilt(tmp_path, settled, garbage):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc")
    expected = file_digest(f, cache=DigestCache(None))
    cache_file = tmp_path / "digests.json"
    cache_file.write_bytes(garbage(f) if callable(garbage) else garbage)
    cache = DigestCache(cache_file)
    assert cache.entries == {}
    assert file_digest(f, cache=cache) == expected
    cache.save()
    assert os.path.abspath(f) in json.loads(cache_file.read_text())["entries"]


def test_the_default_cache_file_is_used_and_switched_off(tmp_path, settled, monkeypatch):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc")
    monkeypatch.setattr(digests, "_DEFAULT", {})
    monkeypatch.setenv(digests.CACHE_ENV, str(tmp_path / "c" / "d.json"))
    key = inputs_digest(f, "CompVis/stable-diffusion-v1-4")
    assert (tmp_path / "c" / "d.json").is_file()
    monkeypatch.setenv(digests.CACHE_ENV, "off")
    assert inputs_digest(f, "CompVis/stable-diffusion-v1-4") == key
    assert digests.cache_path() is None


def test_save_merges_with_another_process_entries(tmp_path, settled):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    cache_file = tmp_path / "digests.json"
    one, two = DigestCache(cache_file), DigestCache(cache_file)
    one.digest(a)
    two.digest(b)
    one.save()
    two.save()
    assert {os.path.abspath(a), os.path.abspath(b)} <= set(json.loads(cache_file.read_text())["entries"])


def test_on_main_process_alone_is_a_call():
    assert on_main_process(lambda: 7, True, 1) == 7
    with pytest.raises(ZeroDivisionError):
        on_main_process(lambda: 1 / 0, True, 1)


# --- which files of a model folder are hashed ----------------------------------------------------


def _sd_snapshot(root: Path) -> Path:
    """An SD folder as a hub snapshot holds it: variants beside the loaded weights."""
    sd = root / "sd"
    for part in ("tokenizer", "scheduler"):
        (sd / part).mkdir(parents=True)
    (sd / "tokenizer" / "vocab.json").write_text("{}")
    (sd / "scheduler" / "scheduler_config.json").write_text("{}")
    (sd / "model_index.json").write_text("{}")
    (sd / "sd-v1-4.ckpt").write_bytes(b"ckpt")
    (sd / ".cache" / "huggingface").mkdir(parents=True)
    (sd / ".cache" / "huggingface" / "x.metadata").write_text("t")
    for part, stem, other in (("unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
                              ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
                              ("text_encoder", "model", "pytorch_model.bin"),
                              ("safety_checker", "model", "pytorch_model.bin")):
        (sd / part).mkdir()
        (sd / part / "config.json").write_text("{}")
        for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", other):
            (sd / part / name).write_bytes(name.encode())
    return sd


def test_only_the_loaded_weights_of_an_sd_folder_are_listed(tmp_path):
    sd = _sd_snapshot(tmp_path)
    files = {str(p.relative_to(sd)) for p in loaded_files(sd, components=SD_TRAIN_COMPONENTS)}
    assert files == {"model_index.json", "sd-v1-4.ckpt", "tokenizer/vocab.json", "scheduler/scheduler_config.json",
                     "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                     "text_encoder/config.json", "text_encoder/model.safetensors"} - {"sd-v1-4.ckpt"}
    fp16 = {str(p.relative_to(sd)) for p in loaded_files(sd, variant="fp16", components=SD_TRAIN_COMPONENTS)}
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fp16
    assert "unet/diffusion_pytorch_model.safetensors" not in fp16


def test_bin_sharded_and_unknown_weights(tmp_path):
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    (bin_only / "pytorch_model.bin").write_bytes(b"w")
    (bin_only / "tf_model.h5").write_bytes(b"w")
    assert [p.name for p in loaded_files(bin_only)] == ["pytorch_model.bin"]
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in index["weight_map"].values():
        (sharded / name).write_bytes(b"w")
    (sharded / "pytorch_model.bin").write_bytes(b"w")
    assert [p.name for p in loaded_files(sharded)] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "weights.pth").write_bytes(b"w")
    (odd / "other.ckpt").write_bytes(b"w")
    assert [p.name for p in loaded_files(odd)] == ["other.ckpt", "weights.pth"]  # no rule matches: all


def test_a_loaded_weight_byte_changes_the_key_an_unread_variant_does_not(tmp_path):
    sd = _sd_snapshot(tmp_path)

    def key() -> str:
        return inputs_digest(*model_inputs(sd, components=SD_TRAIN_COMPONENTS), cache=DigestCache(None))

    before = key()
    (sd / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"changed variant")
    (sd / "sd-v1-4.ckpt").write_bytes(b"changed ckpt")
    (sd / "safety_checker" / "model.safetensors").write_bytes(b"changed checker")
    assert key() == before
    (sd / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"changed unet")
    assert key() != before
    assert model_inputs("CompVis/stable-diffusion-v1-4") == ["CompVis/stable-diffusion-v1-4"]
