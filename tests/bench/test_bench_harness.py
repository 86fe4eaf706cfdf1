"""The synthetic dataset generator and the benchmark harness (a micro config end to end)."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
from PIL import Image

from benchmarking import run as bench_run
from benchmarking.harness import (BenchConfig, RunSpec, aggregate, close_calls, cpu_between, exit_code, expand_grid,
                                  load_config, ratios_and_checks, run_measured, spec_of, verdict)
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
        {"storage": "s3", "latency_ms": 50, "loader": ["webdataset", "s3torchconnector"], "num_fetch_workers": [4, 8]},
    ])
    # scratch ignores latency, torch and peers ignore num_fetch_workers; s3torchconnector is the s3torch_map peer
    assert len(runs) == 5
    assert runs[0] == RunSpec(storage="scratch", latency_ms=0, loader="torch", s3_client="-", num_fetch_workers=0,
                              batch_pool=0, prefetch_shards=0)
    assert [r.loader for r in runs[3:]] == ["webdataset", "s3torch_map"]
    assert runs[3].format == "peer" and runs[3].is_peer and runs[3].num_fetch_workers == 0
    with pytest.raises(ValueError, match="unknown run settings"):
        expand_grid({}, [{"loader": "torch", "bogus": 1}])
    with pytest.raises(ValueError, match="loader must be one of"):
        expand_grid({}, [{"loader": "nope"}])
    with pytest.raises(ValueError, match="reads from s3"):
        expand_grid({}, [{"storage": "scratch", "loader": "litdata"}])
    with pytest.raises(ValueError, match="decoder must be one of"):
        expand_grid({}, [{"decoder": "cv2"}])
    with pytest.raises(ValueError, match="decoder torchvision applies"):
        expand_grid({}, [{"decoder": "torchvision", "format": "memmap"}])


def test_load_config_defaults_are_the_dataclass_defaults_and_unknown_keys_fail(tmp_path):
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("grid: [{loader: torch}]\n")
    cfg = load_config(minimal)
    default = BenchConfig()
    for name in ("seed", "jitter_ms", "ceiling_seconds", "client_cpu_gets", "client_cpu_clients", "repeats", "images",
                 "poll_s", "confirm_rounds", "confirm_margin", "loader_timeout_s", "run_timeout_s", "formats"):
        assert getattr(cfg, name) == getattr(default, name), name
    assert cfg.name == "minimal"
    full = tmp_path / "full.yaml"
    full.write_text("name: x\nseed: 3\nserver: {jitter_ms: 1}\nclient_cpu: {gets: 7, clients: [lean-sync]}\n"
                    "measure: {repeats: 0, images: 64, poll_s: 0.1}\ngrid: [{loader: torch}]\n")
    cfg = load_config(full)
    assert (cfg.name, cfg.seed, cfg.jitter_ms, cfg.client_cpu_gets, cfg.client_cpu_clients) == \
        ("x", 3, 1.0, 7, ("lean-sync",))
    assert (cfg.repeats, cfg.images, cfg.poll_s) == (1, 64, 0.1)  # repeats: at least one round
    for text, match in [("name: x\ngrid: [{loader: torch}]\nsurprise: 1\n", "surprise"),
                        ("name: x\n", "grid"),
                        ("measure: {max_seconds: 2}\ngrid: [{loader: torch}]\n", "unknown measure settings")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_config(bad)


def _rounds(*values, metric="img_per_s", **extra):
    return [{"round": i, "status": "ok", metric: v, **extra} for i, v in enumerate(values)]


def _prow(loader, ips_rounds, lat=50, nw=2, status=None, pss=None, **spec):
    s = RunSpec(storage="s3", latency_ms=lat, loader=loader, num_workers=nw, **spec).validate().normalized()
    rounds = [{"round": i, "status": "ok", "img_per_s": v, "peak_pss_mb": None,
               "loader_cpu_ms_per_img": 4.0} for i, v in enumerate(ips_rounds)]
    # peak PSS comes from memory rounds of its own (the img/s rounds read none)
    memory = [{"round": i, "status": "ok", "peak_pss_mb": (pss or [100] * 9)[i]} for i in range(len(ips_rounds))]
    if status:
        rounds[-1] = {"round": len(rounds) - 1, "status": status}
    return aggregate(s, rounds, memory)


def test_verdicts_pair_rounds_and_report_inconclusive():
    assert verdict(1.2, 1.05, 1.3, 1.0, ">=") == "PASS"
    assert verdict(1.02, 0.95, 1.1, 1.0, ">=") == "inconclusive"  # the margin is inside the spread
    assert verdict(0.8, 0.7, 0.95, 1.0, ">=") == "FAIL"
    assert verdict(0.4, 0.35, 0.45, 0.5, "<=") == "PASS" and verdict(0.5, 0.45, 0.55, 0.5, "<=") == "inconclusive"
    rows = [_prow("ours-asyncio", [400, 420, 380], pss=[300, 310, 290]),
            _prow("torch", [40, 41, 39], images=256),
            _prow("torch", [390, 430, 370], nw=16, pss=[900, 1000, 950]),   # the best torch setting
            _prow("torch", [300, 310, 290], nw=8),
            _prow("webdataset", [300, 300, 300]),
            _prow("litdata", [500, 300, 350]),
            _prow("mosaic", [10, 10, 10], status="error: boom")]
    assert rows[0]["img_per_s"] == 400 and (rows[0]["img_per_s_min"], rows[0]["img_per_s_max"]) == (380, 420)
    assert rows[-1]["status"] == "error: boom" and rows[-1]["rounds_ok"] == 2
    checks = {c["target_key"]: c for c in ratios_and_checks(rows, {
        "vs_best_torch": 1.0, "pss_vs_best_torch": 0.5, "vs_best_streaming_peer": 0.9, "shards_vs_webdataset": 1.0})}
    vs_torch = checks["vs_best_torch"]
    assert vs_torch["value"] == pytest.approx(400 / 390)
    # per-round pairs: 400/390, 420/430, 380/370 -> the spread straddles 1.0
    assert (vs_torch["lo"], vs_torch["hi"]) == (pytest.approx(420 / 430), pytest.approx(380 / 370))
    assert vs_torch["status"] == "inconclusive" and vs_torch["pass"] is None
    assert [r.num_workers for r in vs_torch["runs"]] == [2, 16]
    assert checks["pss_vs_best_torch"]["status"] == "PASS"  # 300/900 .. 290/950, all <= 0.5
    # mosaic errored in a round: the streaming-peer target cannot be judged
    assert checks["vs_best_streaming_peer"]["status"] == "error"
    assert checks["shards_vs_webdataset"]["status"] == "missing"  # no ours-on-shards row
    assert exit_code(list(checks.values())) == 1
    assert exit_code([checks["vs_best_torch"]]) == 3
    assert exit_code([checks["pss_vs_best_torch"]]) == 0
    assert [c["target_key"] for c in close_calls(list(checks.values()), 0.01)] == ["vs_best_torch"]
    rows[-1] = _prow("mosaic", [10, 10, 10])
    c = {c["target_key"]: c for c in ratios_and_checks(rows, {"vs_best_streaming_peer": 0.9})}
    # the best streaming peer by median: litdata (350) over webdataset (300) and mosaic (10)
    assert c["vs_best_streaming_peer"]["runs"][1].loader == "litdata"
    # per round 400/500, 420/300, 380/350: 0.8 .. 1.4 straddles 0.9
    assert c["vs_best_streaming_peer"]["status"] == "inconclusive"


def test_run_measured_sums_the_process_tree(tmp_path):
    """A parent that forks a child holding ~64 MB: the tree's peak PSS sees it; CPU is attributed."""
    script = tmp_path / "tree.py"
    script.write_text(
        "import json, os, time\n"
        "t0 = time.time()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    block = bytearray(os.urandom(1 << 20) * 64)\n"
        "    for _ in range(40): sum(block[::64])\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print('log line')\n"
        "print(json.dumps({'images': 10, 't_start': t0, 't_end': time.time()}))\n")
    res = run_measured([sys.executable, str(script)], poll_s=0.02, pss_poll_s=0.02, timeout=60)
    assert res["rc"] == 0 and res["result"]["images"] == 10 and not res["timed_out"]
    assert res["peak_pss_mb"] > 60
    assert res["cpu_total_s"] > 0.1  # a fixed amount of work (~0.5 s of CPU here), not a duration
    window = cpu_between(res["samples"], res["result"]["t_start"], res["result"]["t_end"])
    assert 0.05 < window <= res["cpu_total_s"] + 0.05
    times = [s[0] for s in res["samples"]]
    assert cpu_between(res["samples"], times[0], times[0]) is None


MICRO = """
name: micro
seed: 0
dataset: {train: 64, val: 0, classes: 4, width: 64, height: 48, target_kb: 3}
server: {jitter_ms: 2, ceiling_seconds: 0.3}
client_cpu: {gets: 50, clients: [lean-async]}
formats: {shards: 4, shuffle_buffer: 8, convert_workers: 0}
measure: {repeats: 2, images: 48}
defaults: {num_workers: 1, num_fetch_workers: 8, batch_pool: 2, batch_size: 8}
grid:
  - {storage: s3, latency_ms: 10, loader: [torch, ours-asyncio]}
  - {storage: s3, latency_ms: 10, loader: ours-threaded, decoder: torchvision}
  - {storage: s3, latency_ms: 10, loader: litdata}
targets: {workers: 1, latency_ms: 10, vs_best_torch: 0.01, vs_best_streaming_peer: 0.9}
"""


@pytest.mark.slow
def test_harness_micro_config_end_to_end(tmp_path, capsys, monkeypatch):
    """Every loader in a measured subprocess, two interleaved rounds; a peer without its venv says
    "not installed" and --check reports the target that needs it as missing (exit 1)."""
    import benchmarking.peers as peers

    monkeypatch.setattr(peers, "VENVS", tmp_path / "no-venvs")
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(MICRO)
    out = tmp_path / "out"
    rc = bench_run.main(["--config", str(cfg), "--out", str(out), "--data-root", str(tmp_path / "data"),
                         "--no-progress", "--check"])
    text = capsys.readouterr().out
    assert rc == 1, text
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["loader"] for r in rows] == ["torch", "ours-asyncio", "ours-threaded", "litdata"]
    for r in rows[:3]:
        assert r["status"] == "ok", r
        assert r["rounds_ok"] == "2" and len(json.loads(r["img_per_s_rounds"])) == 2
        assert float(r["img_per_s_min"]) <= float(r["img_per_s"]) <= float(r["img_per_s_max"])
        assert float(r["peak_pss_mb"]) > 50 and float(r["loader_cpu_ms_per_img"]) > 0
        assert float(r["first_batch_s"]) > 0 and float(r["server_gets"]) >= 40  # ~one GET per image read
        assert r["sampling"] == "exact global shuffle"
    assert rows[2]["decoder"] == "torchvision"
    assert rows[3]["status"].startswith("n/a:"), rows[3]
    result = json.loads((out / "results.json").read_text())
    for row in result["rows"][:3]:  # img/s rounds read no PSS; one memory round per point does
        assert all(r["peak_pss_mb"] is None for r in row["rounds"])
        assert [r["peak_pss_mb"] > 50 for r in row["memory_rounds"]] == [True]
    assert result["rows"][3]["memory_rounds"] == []  # not installed: nothing to measure
    by = {c["target_key"]: c for c in result["checks"]}
    assert by["vs_best_torch"]["status"] == "PASS"
    assert by["vs_best_streaming_peer"]["status"] == "missing"
    assert "[missing]" in text and "--check: a target failed or a row it needs is missing/errored" in text
    assert (out / "frontier.png").stat().st_size > 1000


def test_tail_throttle_targets_get_verdicts_over_rounds():
    from benchmarking.bench_tail_throttle import evaluate

    checks = {c["check"]: c for c in evaluate({
        "hedging": [{"p99_improvement": 12.0, "extra_requests": 0.014}, {"p99_improvement": 2.5, "extra_requests": 0.02},
                    {"p99_improvement": 9.0, "extra_requests": 0.01}],
        "adaptive": [{"auto_vs_best_fixed": 0.7, "503_reduction_vs_largest": 50}]})}
    assert checks["hedging: p99 time between batches, plain / hedged"]["status"] == "inconclusive"  # 2.5 .. 12
    assert checks["hedging: p99 time between batches, plain / hedged"]["value"] == 9.0
    assert checks["hedging: extra GETs at the server"]["status"] == "PASS"
    assert checks["adaptive: auto img/s / best fixed setting"]["status"] == "FAIL"
    assert checks["adaptive: 503s of the largest fixed setting / auto's"]["status"] == "PASS"


def test_steady_window_starts_after_the_first_round_of_workers():
    """k workers deliver their first batches in a burst: the window starts at the k-th batch."""
    from benchmarking.harness.grid import _steady

    spec = RunSpec(num_workers=4, batch_size=10)
    # 4 batches at t=10 (a burst), then one batch every 0.5 s
    arrivals = [(10.0 + 0.001 * i, 10 * (i + 1)) for i in range(4)] + [(10.003 + 0.5 * j, 40 + 10 * j)
                                                                        for j in range(1, 9)]
    out = {"images": 120, "wall_s": 15.0, "first_batch_s": 4.0, "t_batches": arrivals}
    samples = [(0.0, 0.0, 0.0), (20.0, 20.0, 0.0)]  # 1 CPU second per second
    ips, cpu_ms, window = _steady(spec, out, samples)
    assert ips == pytest.approx(80 / 4.0) and window == "batches 4-12"
    assert cpu_ms == pytest.approx(4.0 / 80 * 1e3)
    # no per-batch times: from the first batch (contract fields), else the whole epoch
    ips, _, window = _steady(spec, {"images": 120, "wall_s": 15.0, "first_batch_s": 5.0}, samples)
    assert (ips, window) == (pytest.approx(110 / 10.0), "whole epoch")


def test_report_prints_the_published_tables(tmp_path, capsys):
    from benchmarking import report

    rows = [_prow("ours-asyncio", [400, 420, 380], pss=[300, 310, 290]), _prow("webdataset", [300, 300, 300]),
            _prow("mosaic", [10, 10, 10], status="error: boom")]
    for r in rows[:2]:
        r["sampling"], r["server_gets_per_s"] = "exact global shuffle", 400.0
    result = {"command": "python -m benchmarking.run --config x.yaml", "rows": rows, "repeats": 3,
              "checks": ratios_and_checks(rows, {"vs_best_streaming_peer": 0.9})}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result, default=str))
    assert report.main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "| ours (asyncio) | 2 | 50 ms | 400 (380-420) | 300 |" in text
    assert "| `mosaic` | 2 | 50 ms | error: boom |" in text
    assert "**error**" in text  # the streaming-peer target: mosaic errored in a round


def test_aggregate_keeps_the_grid_point():
    """A row's spec fields stay the grid point's (a round's measured image count must not overwrite
    ``images``), so checks can name the points to re-measure."""
    spec = RunSpec(loader="torch", num_workers=8, images=0).validate().normalized()
    row = aggregate(spec, [{"round": 0, "status": "ok", "img_per_s": 10.0, "images_read": 2000}])
    assert spec_of(row) == spec and row["images_read"] == 2000


def test_pss_is_polled_less_often_than_cpu(tmp_path):
    """Reading PSS stalls the polled process (NOTE [ Outside measurement ]): it has its own, slower interval."""
    script = tmp_path / "sleeper.py"
    script.write_text("import json, time\nt0 = time.time()\ntime.sleep(1.0)\n"
                      "print(json.dumps({'images': 1, 't_start': t0, 't_end': time.time()}))\n")
    res = run_measured([sys.executable, str(script)], poll_s=0.02, pss_poll_s=0.3, timeout=60)
    with_pss = [s for s in res["samples"] if s[2] > 0]
    assert len(res["samples"]) > 20  # CPU: every 20 ms
    assert 2 <= len(with_pss) <= 6, len(with_pss)  # PSS: every 0.3 s, the first poll included
    assert res["peak_pss_mb"] > 1
    res = run_measured([sys.executable, str(script)], poll_s=0.02, pss_poll_s=None, timeout=60)
    assert res["peak_pss_mb"] == 0 and all(s[2] == 0 for s in res["samples"])
