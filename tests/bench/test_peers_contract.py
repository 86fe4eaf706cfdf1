"""The peer runners' contract with the harness (benchmarking/peers/README.md).

No fakes: the runners run as real subprocesses against our benchmark S3 server. The end-to-end
case uses the s3torchconnector peers, whose package is in our lock; the others are checked for
their "not installed" answer where their package is absent from this interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarking import peers
from benchmarking.peers import NOT_INSTALLED, PEERS, parse_result, peer_python, run_peer
from benchmarking.s3_server import S3Server

from tests.bench.helpers import BENCH_CREDS

ROOT = Path(__file__).resolve().parents[2]
# the import each peer needs, to find one that this interpreter lacks
PEER_MODULES = {"webdataset": "webdataset", "litdata": "litdata", "mosaic": "streaming"}
RUN_KEYS = {"peer", "version", "images", "distinct", "batches", "wall_s", "first_batch_s", "t_first_batch", "t_end",
            "sampling", "settings"}


def _runner(peer: str, *args: str, python: str = sys.executable) -> tuple[int, dict, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([python, "-m", f"benchmarking.peers.{peer}", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=300)
    return proc.returncode, parse_result(proc.stdout) or {}, proc.stdout + proc.stderr


def _absent_peer() -> str:
    for peer, module in PEER_MODULES.items():
        if importlib.util.find_spec(module) is None:
            return peer
    pytest.skip("every peer package is importable here: no 'not installed' case to check")


def test_runner_without_its_package_says_not_installed(tmp_path):
    peer = _absent_peer()
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    for action in ("run", "prepare", "version"):
        rc, result, _ = _runner(peer, action, "--spec", str(spec))
        assert rc == NOT_INSTALLED
        assert result == {"error": "not installed", "peer": peer}


def test_run_peer_without_venv_does_not_start_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "VENVS", tmp_path / "no-venvs")
    for peer in PEERS:
        if peer in peers.LOCKED:
            assert peer_python(peer) == sys.executable  # s3torchconnector is in our lock
        else:
            assert peer_python(peer) is None
            assert run_peer(peer, "run", {}) == (NOT_INSTALLED, {"error": "not installed", "peer": peer})
    with pytest.raises(ValueError, match="unknown peer"):
        peer_python("tensorflow")


def test_bad_spec_is_a_usage_error_with_json(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"endpoint": "http://127.0.0.1:1", "bucket": "b"}))
    rc, result, _ = _runner("s3torch_map", "run", "--spec", str(spec))
    assert rc == 2
    assert "lacks" in result["error"] and "index" in result["error"]


def test_parse_result_takes_the_last_json_object():
    assert parse_result('noise\n{"a": 1}\nmore noise\n{"b": 2}\n') == {"b": 2}
    assert parse_result("no json here\n[1, 2]\n") is None


@pytest.fixture
def dataset(tmp_path):
    """16 synthetic JPEGs in a bucket of an in-process benchmark server; yields a base spec."""
    from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
    from concurrent_dataloader.storage.s3_http import LeanS3Store

    with S3Server() as server:
        server.create_bucket("peers")
        store = LeanS3Store("peers", endpoint_url=server.endpoint_url, **BENCH_CREDS)
        try:
            make_synthetic(tmp_path / "data", SyntheticSpec(train=16, val=0, classes=4, width=64, height=48,
                                                            target_kb=4), store=store, progress=False)
        finally:
            store.close()
        keys = json.loads((tmp_path / "data" / "index-s3-train.json").read_text())
        (tmp_path / "index.json").write_text(json.dumps([{"key": k, "label": n % 4} for n, k in enumerate(keys)]))
        yield server, {"endpoint": server.endpoint_url, "bucket": "peers", "region": BENCH_CREDS["region_name"],
                       "access_key": BENCH_CREDS["aws_access_key_id"],
                       "secret_key": BENCH_CREDS["aws_secret_access_key"], "images_prefix": "",
                       "index": str(tmp_path / "index.json"), "workdir": str(tmp_path / "work"),
                       "peer_prefix": "peers/test/", "shard_size": 4, "num_workers": 0, "batch_size": 4,
                       "num_images": 0, "shuffle_buffer": 8, "seed": 0, "decoder": "pil", "image_size": 32}


def _check_run(result: dict, images: int, batch_size: int) -> None:
    assert RUN_KEYS <= set(result), result
    assert result["images"] == images and result["distinct"] == images  # every image, once
    assert result["batches"] >= -(-images // batch_size)  # iterable peers batch per worker: maybe more
    assert 0 < result["first_batch_s"] <= result["wall_s"]
    assert result["t_first_batch"] <= result["t_end"]
    assert BENCH_CREDS["aws_secret_access_key"] not in json.dumps(result)


def test_s3torch_map_end_to_end(dataset):
    server, spec = dataset
    rc, prep = run_peer("s3torch_map", "prepare", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 0 and prep["skipped"] is True, prep
    server.reset_stats()
    rc, result = run_peer("s3torch_map", "run", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 0, result
    _check_run(result, 16, 4)
    assert result["batches"] == 4
    assert result["sampling"] == "exact global shuffle"
    assert server.stats()["gets"] == 16  # one GetObject per image


@pytest.mark.slow
def test_s3torch_map_decoder_torchvision_and_num_images(dataset):
    _, spec = dataset
    spec = dict(spec, decoder="torchvision", num_images=10, batch_size=3)
    rc, result = run_peer("s3torch_map", "run", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 0, result
    _check_run(result, 10, 3)
    assert result["settings"]["decoder"] == "torchvision"


@pytest.mark.slow
def test_s3torch_iterable_prepare_is_idempotent_and_streams_shards(dataset):
    server, spec = dataset
    spec = dict(spec, num_workers=2)
    rc, prep = run_peer("s3torch_iterable", "prepare", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 0 and prep["skipped"] is False and prep["objects"] == 4, prep
    rc, again = run_peer("s3torch_iterable", "prepare", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 0 and again["skipped"] is True, again
    server.reset_stats()
    rc, result = run_peer("s3torch_iterable", "run", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 0, result
    _check_run(result, 16, 4)
    assert result["sampling"].startswith("shuffle buffer 8")
    assert server.stats()["gets"] == 4  # one streamed GET per shard


@pytest.mark.slow
def test_failed_run_reports_error_json_without_credentials(dataset):
    _, spec = dataset
    spec = dict(spec, peer_prefix="peers/never-prepared/")
    rc, result = run_peer("s3torch_iterable", "run", spec, python=sys.executable, stderr=subprocess.DEVNULL)
    assert rc == 1
    assert result["error"] and BENCH_CREDS["aws_secret_access_key"] not in result["error"]


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["webdataset", "litdata", "mosaic"])
def test_streaming_peer_in_its_venv_end_to_end(dataset, peer):
    """Each installed streaming peer (benchmarking/peers/setup.sh): its own writer, then one epoch."""
    if not (peers.VENVS / peer / "bin" / "python").exists():
        pytest.skip(f"{peer} is not installed (bash benchmarking/peers/setup.sh {peer})")
    server, spec = dataset
    spec = dict(spec, num_workers=2, peer_prefix=f"peers/{peer}/")
    rc, prep = run_peer(peer, "prepare", spec, stderr=subprocess.DEVNULL)
    assert rc == 0 and prep["skipped"] is False, prep
    rc, result = run_peer(peer, "run", spec, stderr=subprocess.DEVNULL)
    assert rc == 0, result
    _check_run(result, 16, 4)
    assert result["peer"] == peer and result["sampling"]
