"""The start-up benchmark runs end to end at a small scale and its warm starts read no input file."""

from __future__ import annotations

from bench import bench_startup


def _hashed(row: dict) -> int:
    """The number of files a start read, from the row's note ("1,234 files hashed; ...")."""
    return int(row["note"].split(" files hashed")[0].replace(",", ""))


def test_startup_benchmark_small(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_startup.digests, "RACY_SECONDS", 0.0)
    rows = bench_startup.run(n_images=12, n_captions=40, keep=str(tmp_path / "data"))
    starts = {(r["group"], r["metric"].split(" ")[0]): r for r in rows if r["group"].startswith("startup: ")}
    assert len(starts) == 6
    for stage in ("train", "ground", "segment"):
        assert _hashed(starts[(f"startup: {stage}", "cold")]) > 12  # every image, the tables, the model files
        assert _hashed(starts[(f"startup: {stage}", "warm")]) == 0
