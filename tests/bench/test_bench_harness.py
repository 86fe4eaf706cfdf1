"""The synthetic dataset generator and the benchmark harness (a micro config end to end)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from benchmarking import run as bench_run
from benchmarking.harness import RunSpec, close_calls, expand_grid, load_config, ratios_and_checks, spec_of
from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
from benchmarking.make_synthetic import main as synth_main
from concurrent_dataloader.datasets import get_dataset


def test_synthetic_dataset_matches_the_seed_formats(tmp_path):
    spec = SyntheticSpec(train=30, val=10, classes=4, width=80, height=60, target_kb=4, seed=1)
    manifest = make_synthetic(tmp_path, spec, progress=False)
    assert manifest["images"] == 40
    index = json.loads((tmp_path / "index-scratch-train.json").read_text())
    assert len(index) == 30 and index[0] == "train/n00000000/n00000000_0.JPEG"
    classes = json.loads((tmp_path / "imagenet-train-classes.json").read_text())
    assert classes["n00000003"] == {"id": 3, "name": "synthetic_class_3"}
    val_classes = json.loads((tmp_path / "imagenet-val-classes.json").read_text())
    assert sorted(val_classes, key=int) == [str(i) for i in range(10)] and set(val_classes.values()) <= set(range(4))
    with Image.open(tmp_path / index[-1]) as img:
        assert img.size == (80, 60) and img.format == "JPEG"
    # the project's own dataset reads it, labels from the wnid prefix
    ds = get_dataset("scratch", index_file=tmp_path / "index-scratch-train.json",
                     classes_file=tmp_path / "imagenet-train-classes.json", root=tmp_path)
    assert len(ds) == 30 and ds.labels[0] == 0 and ds.labels[-1] == 3
    image, label = ds[29]
    assert image.size == (80, 60) and label == 3
    val = get_dataset("scratch", "val", index_file=tmp_path / "index-scratch-val.json",
                      classes_file=tmp_path / "imagenet-val-classes.json", root=tmp_path)
    assert val.labels == [val_classes[str(i)] for i in range(10)]
    # deterministic and reused: a second call with the same spec rewrites nothing
    before = (tmp_path / index[3]).stat().st_mtime_ns
    assert make_synthetic(tmp_path, spec, progress=False)["images"] == 40
    assert (tmp_path / index[3]).stat().st_mtime_ns == before


def test_imagenet_like_size_is_calibrated(tmp_path):
    spec = SyntheticSpec(train=12, val=0, classes=12, seed=2)  # default 500x375, ~100 KB
    manifest = make_synthetic(tmp_path, spec, progress=False)
    assert 75 <= manifest["mean_kb"] <= 125, manifest
    data = (tmp_path / "train/n00000005/n00000005_0.JPEG").read_bytes()
    assert Image.open(io.BytesIO(data)).size == (500, 375)


def test_bad_specs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        make_synthetic(tmp_path, SyntheticSpec(classes=0), progress=False)
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path), "--train", "0", "--val", "0"])


def test_cli_uploads_to_a_bucket_with_a_usable_credential_file(tmp_path, fast_server, capsys):
    synth_main(["--out", str(tmp_path), "--train", "8", "--val", "4", "--classes", "2", "--width", "40",
                "--height", "30", "--target-kb", "2", "--endpoint-url", fast_server.endpoint_url,
                "--bucket", "synth-upload", "--access-key", "bench-key-AKIA1234", "--secret", "s3cr3t"])
    creds = json.loads((tmp_path / "s3_credentials.json").read_text())
    assert creds["bucket_name"] == "synth-upload" and creds["endpoint_url"] == fast_server.endpoint_url
    ds = get_dataset("s3", index_file=tmp_path / "index-s3-train.json",
                     classes_file=tmp_path / "imagenet-train-classes.json",
                     s3_credential_file=tmp_path / "s3_credentials.json")
    image, label = ds[7]
    assert image.size == (40, 30) and label == 1
    assert "s3://synth-upload" in capsys.readouterr().out


def test_expand_grid_products_and_deduplication():
    runs = expand_grid({"num_fetch_workers": 16}, [
        {"storage": "scratch", "latency_ms": [0, 50], "loader": ["torch", "ours-asyncio"]},
        {"storage": "s3", "latency_ms": 50, "loader": ["torch"], "num_fetch_workers": [4, 8]},
    ])
    # scratch ignores latency, torch ignores num_fetch_workers: 2 + 1 distinct runs
    assert len(runs) == 3
    assert runs[0] == RunSpec(storage="scratch", latency_ms=0, loader="torch", s3_client="-", num_fetch_workers=0,
                              batch_pool=0, prefetch_shards=0)
    with pytest.raises(ValueError, match="unknown run settings"):
        expand_grid({}, [{"loader": "torch", "bogus": 1}])
    with pytest.raises(ValueError, match="loader must be one of"):
        expand_grid({}, [{"loader": "nope"}])
    with pytest.raises(ValueError, match="s3torchconnector only reads from s3"):
        expand_grid({}, [{"storage": "scratch", "loader": "s3torchconnector"}])


def test_load_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [{loader: torch}]\nsurprise: 1\n")
    with pytest.raises(ValueError, match="surprise"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(ValueError, match="grid"):
        load_config(empty)


def _row(storage, lat, loader, ips, nfw=32, bs=32):
    return {**RunSpec(storage=storage, latency_ms=lat, loader=loader, num_fetch_workers=nfw,
                      batch_size=bs).normalized().__dict__,
            "status": "ok", "img_per_s": ips}


def test_ratios_and_target_checks():
    rows = [_row("scratch", 0, "torch", 400), _row("scratch", 0, "ours-asyncio", 390),
            _row("s3", 0, "torch", 300), _row("s3", 0, "ours-asyncio", 420),
            _row("s3", 50, "torch", 36), _row("s3", 50, "ours-asyncio", 380), _row("s3", 50, "ours-asyncio", 100, 4),
            _row("s3", 50, "s3torchconnector", 35),
            _row("s3", 50, "ours-asyncio", 900, bs=128)]  # a batch-size sweep point: never the main result
    checks = ratios_and_checks(rows, {"vs_torch_at_latency": 10, "vs_s3torchconnector_at_latency": 3,
                                      "latency_hiding": 0.95, "scratch_vs_torch": 0.95,
                                      "client_cpu_ms_per_get": 0.5}, {"lean-async": 0.07, "botocore": 1.0})
    assert rows[1]["ratio_vs_torch"] == pytest.approx(390 / 400)
    assert rows[5]["ratio_vs_torch"] == pytest.approx(380 / 36)
    by = {c["check"]: c for c in checks}
    assert by["ours-asyncio / torch, s3 50 ms, 2 workers"]["value"] == pytest.approx(380 / 36)  # not the nfw=4 run
    assert by["ours-asyncio / torch, s3 50 ms, 2 workers"]["pass"] is True
    assert by["ours-asyncio at 50 ms / at 0 ms (latency hiding)"]["pass"] is False  # 0.905 < 0.95
    assert by["ours-asyncio / torch, scratch 0 ms"]["pass"] is True
    assert by["lean-async client CPU ms per GET"]["pass"] is True
    # each loader check names the grid points it compared, so a close call can be re-measured
    hiding = by["ours-asyncio at 50 ms / at 0 ms (latency hiding)"]
    assert hiding["runs"] == [spec_of(rows[5]), spec_of(rows[3])]
    assert spec_of(rows[5]) == RunSpec(storage="s3", latency_ms=50, loader="ours-asyncio").normalized()
    assert [c["check"] for c in close_calls(checks, 0.1)] == [  # 10.6 vs 10, 0.905 vs 0.95, 0.975 vs 0.95
        "ours-asyncio / torch, s3 50 ms, 2 workers", "ours-asyncio at 50 ms / at 0 ms (latency hiding)",
        "ours-asyncio / torch, scratch 0 ms"]
    assert [c["check"] for c in close_calls(checks, 0.03)] == ["ours-asyncio / torch, scratch 0 ms"]
    assert close_calls(checks, 0.01) == []


MICRO = """
name: micro
seed: 0
dataset: {train: 96, val: 0, classes: 4, width: 64, height: 48, target_kb: 3}
server: {jitter_ms: 2, ceiling_seconds: 0.5}
client_cpu: {gets: 100, clients: [botocore, lean-async]}
measure: {warmup_batches: 1, min_batches: 2, max_batches: 8, max_seconds: 0.3, repeats: 1,
          confirm_rounds: 1, confirm_margin: 100}   # every target is a "close call": both of its runs get a round more
defaults: {num_workers: 1, num_fetch_workers: 8, batch_pool: 2, batch_size: 8, transform: realistic}
grid:
  - {storage: scratch, loader: [torch, ours-asyncio]}
  - {storage: s3, latency_ms: [0, 20], loader: [torch, ours-threaded, torch+getitems, s3torchconnector]}
targets: {workers: 1, latency_ms: 20, vs_torch_at_latency: 1.5}
"""


def test_harness_micro_config_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(MICRO)
    out = tmp_path / "out"
    rc = bench_run.main(["--config", str(cfg), "--out", str(out), "--data-root", str(tmp_path / "data"),
                         "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 + 2 * 4
    for r in rows:
        if r["loader"] == "s3torchconnector" and r["status"].startswith("n/a"):
            continue  # only when the package is not installed
        assert r["status"] == "ok", r
        assert float(r["img_per_s"]) > 0 and float(r["loader_cpu_ms_per_img"]) > 0
    torch_rows = [r for r in rows if r["loader"] == "torch"]
    assert all(float(r["ratio_vs_torch"]) == 1.0 for r in torch_rows)
    s3_rows = [r for r in rows if r["storage"] == "s3" and r["status"] == "ok"]
    assert all(int(r["server_gets"]) > 0 and float(r["ceiling_gets_per_s"]) > 0 for r in s3_rows)
    # latency hiding is the point: at 20 ms, 8 concurrent fetches beat one-at-a-time torch
    ours = next(r for r in rows if r["storage"] == "s3" and float(r["latency_ms"]) == 20
                and r["loader"] == "ours-threaded")
    assert float(ours["ratio_vs_torch"]) > 1.5, ours
    assert int(ours["server_peak_in_flight"]) >= 4
    result = json.loads((out / "results.json").read_text())
    assert result["client_cpu"]["lean-async"] < result["client_cpu"]["botocore"]
    assert (out / "throughput_vs_latency.png").stat().st_size > 1000
    assert "x torch" in text and "server ceiling" in text and "[PASS]" in text
    # the confirmation round re-measured exactly the two runs the target compares
    assert result["confirmed"] == ["ours-threaded / torch, s3 20 ms, 1 workers"]
    repeats = {(r["loader"], float(r["latency_ms"]), r["storage"]): len(json.loads(r["img_per_s_repeats"]))
               for r in rows if r["status"] == "ok"}
    assert repeats.pop(("ours-threaded", 20.0, "s3")) == 2 and repeats.pop(("torch", 20.0, "s3")) == 2
    assert set(repeats.values()) == {1}
    check = result["checks"][0]
    assert {r["loader"] for r in check["runs"]} == {"ours-threaded", "torch"}
