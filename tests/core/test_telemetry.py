"""Loader telemetry: per-epoch counts from every worker, latency percentiles, wait vs compute."""

from __future__ import annotations

import time

import pytest

from concurrent_dataloader import DataLoader, telemetry
from tests.core.datasets import FailingDataset, SleepyFetchDecode


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, False), (2, True)])
def test_epoch_stats_cover_every_worker(fetch_impl, num_workers, persistent):
    dl = DataLoader(SleepyFetchDecode(n=48, batch_size=6, delay=0.03), batch_size=6, num_workers=num_workers,
                    persistent_workers=persistent, fetch_impl=fetch_impl, num_fetch_workers=6)
    for epoch in range(2):
        for _ in dl:
            time.sleep(0.02)  # "compute"
        s = dl.stats()
        assert s["samples"] == 48, f"epoch {epoch}: {s}"  # per epoch, not cumulative
        assert s["batches"] == 8
        assert 25 <= s["fetch_latency_p50_ms"] <= 60
        assert s["fetch_latency_p50_ms"] <= s["fetch_latency_p95_ms"] <= s["fetch_latency_p99_ms"]
        assert s["compute_s"] >= 8 * 0.02 * 0.9
        assert s["data_wait_s"] > 0 and 0 < s["data_wait_fraction"] < 1
        assert s["samples_per_s"] > 0
    dl.close()


def test_errors_are_counted():
    dl = DataLoader(FailingDataset(n=8, bad=5), batch_size=4, num_workers=0)
    with pytest.raises(FileNotFoundError):
        list(dl)
    assert dl.stats()["fetch_errors"] == 1


def test_bytes_and_process_sink():
    class Bytes(SleepyFetchDecode):
        def fetch_raw(self, i):
            telemetry.count("requests")  # what a store does in its process
            return b"x" * 100

        def decode(self, i, raw):
            return len(raw)

    dl = DataLoader(Bytes(n=10, batch_size=5, delay=0), batch_size=5, num_workers=2)
    list(dl)
    s = dl.stats()
    assert (s["bytes"], s["requests"], s["samples"]) == (1000, 10, 10)


def test_percentiles_from_histogram():
    block = telemetry.StatsBlock(2)
    a, b = block.row(0), block.row(1)
    start = block.totals()
    for _ in range(90):
        a.observe(0.010)
    for _ in range(9):
        b.observe(0.100)
    b.observe(2.0)
    s = telemetry.summarize(start, block.totals(), 1.0)
    assert 10 <= s["fetch_latency_p50_ms"] <= 11.3
    assert 100 <= s["fetch_latency_p95_ms"] <= 113
    assert 2000 <= s["fetch_latency_p99_ms"] <= 2260 or 100 <= s["fetch_latency_p99_ms"] <= 113
    with pytest.raises(IndexError):
        block.row(2)


def test_tensorboard_writer_gets_numeric_stats():
    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (value, step)

    w = Writer()
    telemetry.write_to_tensorboard(w, {"samples": 3, "fetch_latency_p50_ms": None, "note": "x"}, step=7)
    assert w.scalars == {"loader/samples": (3, 7)}
