"""The benchmark grid's storage-format dimension: a micro formats config end to end, and the
formats the harness prepares hold the same images and labels as the JPEG folder."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from benchmarking import run as bench_run
from benchmarking.harness import (FORMATS, FormatSettings, RunSpec, build_dataset, expand_grid, load_config,
                                  prepare_formats, ratios_and_checks)
from benchmarking.make_synthetic import SyntheticSpec, make_synthetic

SETTINGS = FormatSettings(fixed_shape=(24, 32), images_per_file=24, shards=4, shuffle_buffer=8, convert_workers=0)

# One small grid point per format family; workers=1 keeps it to a few seconds.
MICRO_FORMATS = """
name: micro-formats
seed: 0
dataset: {train: 96, val: 0, classes: 4, width: 64, height: 48, target_kb: 3}
server: {jitter_ms: 2, ceiling_seconds: 0.3}
client_cpu: {gets: 50, clients: [lean-sync, lean-async]}
measure: {repeats: 1, images: 48}
formats: {fixed_shape: [24, 32], images_per_file: 24, shards: 4, shuffle_buffer: 8, convert_workers: 0}
defaults: {num_workers: 1, num_fetch_workers: 8, batch_pool: 2, batch_size: 8, transform: realistic}
grid:
  - {storage: s3, format: archive, latency_ms: 20, loader: [torch, ours-threaded]}
  - {storage: scratch, format: archive-mmap, loader: ours-asyncio}
  - {storage: s3, format: shards, loader: ours-asyncio, prefetch_shards: 2}
  - {storage: s3, format: memmap, loader: ours-asyncio}
  - {storage: s3, format: parquet, loader: ours-threaded, s3_client: botocore}
  - {storage: scratch, format: [hdf5, ipc, tar], loader: torch+getitems}
targets: {workers: 1, latency_ms: 20, archive_vs_torch_at_latency: 0.01}
"""


def test_format_dimension_of_the_grid():
    runs = expand_grid({"format": "archive"}, [
        {"storage": ["scratch", "s3"], "loader": ["torch", "ours-asyncio"]},
        {"storage": "s3", "format": "shards", "loader": ["torch", "ours-threaded"], "num_fetch_workers": [4, 8]},
        {"storage": "scratch", "format": "jpeg", "loader": "torch", "prefetch_shards": [1, 2]},
    ])
    assert [r.format for r in runs] == ["archive"] * 4 + ["shards"] * 2 + ["jpeg"]
    # shards take no fetch settings (our loader passes an IterableDataset through), others no prefetch_shards
    assert all(r.num_fetch_workers == 0 and r.batch_pool == 0 and r.prefetch_shards == 4 for r in runs[4:6])
    assert runs[1].prefetch_shards == 0 and runs[1].num_fetch_workers == 32
    for bad, match in [({"storage": "s3", "format": "archive-mmap"}, "archive-mmap maps a local file"),
                       ({"format": "shards", "loader": "torch+getitems"}, "map-style"),
                       ({"format": "zip"}, "format must be one of")]:
        with pytest.raises(ValueError, match=match):
            expand_grid({}, [bad])


def test_archive_target_compares_like_with_like():
    def row(fmt, loader, ips, lat=50):
        return {**RunSpec(storage="s3", format=fmt, latency_ms=lat, loader=loader).normalized().__dict__,
                "status": "ok", "img_per_s": ips, "rounds": [{"round": 0, "status": "ok", "img_per_s": ips}]}

    rows = [row("jpeg", "torch", 36), row("jpeg", "ours-asyncio", 300), row("archive", "torch", 30),
            row("archive", "ours-asyncio", 420), row("archive", "ours-threaded", 250), row("memmap", "torch", 50)]
    checks = {c["check"]: c for c in ratios_and_checks(rows, {"vs_torch_at_latency": 10,
                                                               "archive_vs_torch_at_latency": 10})}
    # each row's reference is torch over the same format
    assert rows[3]["ratio_vs_torch"] == pytest.approx(14.0) and rows[5]["ratio_vs_torch"] == pytest.approx(1.0)
    arch = checks["ours-asyncio / torch, one S3 archive (ranged GETs) 50 ms, 2 workers"]
    assert arch["value"] == pytest.approx(14.0) and arch["pass"] is True
    assert checks["ours-threaded / torch, one S3 archive (ranged GETs) 50 ms, 2 workers"]["pass"] is False
    # the JPEG target still compares JPEG rows only (300 / 36, not 420 / 36)
    assert checks["ours-asyncio / torch, s3 50 ms, 2 workers (same workers)"]["value"] == pytest.approx(300 / 36)


def test_prepared_formats_hold_the_same_images_and_labels(tmp_path):
    data = tmp_path / "data"
    make_synthetic(data, SyntheticSpec(train=48, val=0, classes=3, width=40, height=30, target_kb=2), progress=False)
    formats = prepare_formats(data, set(FORMATS), SETTINGS, progress=False, log=lambda _: None)
    assert set(formats) == set(FORMATS) - {"jpeg"}
    jpeg = build_dataset(RunSpec(storage="scratch", format="jpeg", transform="none"), data, None)
    want = Counter(jpeg.labels)
    first = {}
    for fmt in sorted(formats):
        ds = build_dataset(RunSpec(storage="scratch", format=fmt, transform="none"), data, None, formats=formats,
                           settings=SETTINGS)
        try:
            samples = list(ds) if fmt == "shards" else [ds[i] for i in range(len(ds))]
        finally:
            ds.close()
        assert Counter(int(label) for _, label in samples) == want, fmt
        sizes = {img.size for img, _ in samples}
        assert sizes == ({(32, 24)} if fmt in ("memmap", "hdf5") else {(40, 30)}), (fmt, sizes)
        first[fmt] = formats[fmt].root.stat().st_mtime_ns
    assert formats["archive"].archive.with_suffix(".idx.npy").is_file()  # the local index, built once
    # made once: a second preparation reuses every folder
    again = prepare_formats(data, set(FORMATS), SETTINGS, progress=False, log=lambda _: None)
    assert not any(fd.made_now for fd in again.values())
    assert {f: again[f].root.stat().st_mtime_ns for f in first} == first


@pytest.mark.slow
def test_formats_micro_config_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "micro-formats.yaml"
    cfg.write_text(MICRO_FORMATS)
    assert load_config(cfg).formats == SETTINGS
    out = tmp_path / "out"
    rc = bench_run.main(["--config", str(cfg), "--out", str(out), "--data-root", str(tmp_path / "data"),
                         "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted({r["format"] for r in rows}) == sorted(set(FORMATS) - {"jpeg"})
    assert len(rows) == 2 + 1 + 1 + 1 + 1 + 3
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["img_per_s"]) > 0 and float(r["loader_cpu_ms_per_img"]) > 0
        if r["storage"] == "s3":
            assert float(r["server_gets"]) > 0, r  # it really read from the server
    by = {(r["format"], r["loader"]): r for r in rows}
    assert by[("shards", "ours-asyncio")]["prefetch_shards"] == "2"
    assert by[("parquet", "ours-threaded")]["s3_client"] == "botocore"
    # ranged GETs into one archive: several in flight at once, about one per image read
    ours = by[("archive", "ours-threaded")]
    assert float(ours["server_peak_in_flight"]) >= 4
    assert float(ours["server_gets"]) >= float(ours["images_read"])
    # at most one GET per shard for shards (4 shards)
    shards = by[("shards", "ours-asyncio")]
    assert float(shards["server_gets"]) <= 4 < float(shards["images_read"])
    result = json.loads((out / "results.json").read_text())
    assert set(result["decode_ms"]) == {"realistic", "realistic+pixels"}
    assert result["formats"]["memmap"]["files"] == 4 + 4 + 3  # 96 / 24 image files + label files + metadata
    assert "ours-threaded / torch, one S3 archive (ranged GETs) 20 ms, 1 workers" in text
    assert "format archive:" in text
    assert any(line.startswith("s3") and "[shards]" in line and " 2sh " in line for line in text.splitlines()), text
    assert (out / "throughput_by_format.png").stat().st_size > 1000
