"""Soak (slow): many epochs with persistent workers and 5% transient faults. Every epoch is checked
sample by sample; memory (RSS of the main process plus workers) stays flat, throughput steady,
fds and threads do not creep. Prints its figures."""

from __future__ import annotations

import statistics
import time

import psutil
import pytest

from concurrent_dataloader import DataLoader
from tests.reliability.helpers import FIGURES, checksum_dataset, put_images, record

N = 240
EPOCHS = 100
MIX = {"slowdown": 1, "internal_error": 1, "reset": 1, "truncate": 1}


def _tree() -> tuple[float, int, int]:
    """(RSS MiB, open fds, threads) of this process and its DataLoader workers."""
    me = psutil.Process()
    procs = [me] + [c for c in me.children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
    rss = fds = threads = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
            threads += p.num_threads()
        except psutil.NoSuchProcess:
            pass
    return rss / 2**20, fds, threads


@pytest.mark.slow
@pytest.mark.parametrize("fetch_impl,store", [("threaded", "s3lean"), ("asyncio", "s3")])
def test_soak_persistent_workers_with_faults(fault_srv, injector, fetch_impl, store):
    objs = put_images(fault_srv, "bkt", N)
    injector.set_rate(0.05, MIX, seed=99)
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs)
    expected = [objs.checksums[k] for k in objs.keys]
    rows = []
    with DataLoader(ds, batch_size=16, shuffle=False, num_workers=2, persistent_workers=True, fetch_impl=fetch_impl,
                    num_fetch_workers=8, batch_pool=3) as loader:
        for epoch in range(EPOCHS):
            before = injector.counts()["injected"]
            start = time.perf_counter()
            indices, sums = [], []
            for idx, digests, _labels in loader:
                indices += [int(i) for i in idx]
                sums += list(digests)
            seconds = time.perf_counter() - start
            stats = loader.stats()
            faults = injector.counts()["injected"] - before
            assert indices == list(range(N)) and sums == expected, f"epoch {epoch}: samples lost or damaged"
            assert stats["retries"] == faults and stats["gave_up"] == 0
            rss, fds, threads = _tree()
            rows.append({"epoch": epoch, "seconds": seconds, "img_per_s": N / seconds, "rss_mib": rss, "fds": fds,
                         "threads": threads, "faults": faults, "retries": stats["retries"]})
            record(faults=faults, retries=stats["retries"], samples=N, epochs=1)

    print(f"\nsoak {fetch_impl}/{store}: {EPOCHS} epochs x {N} images, 5% transient faults, persistent workers")
    print(f"{'epoch':>5} {'img/s':>8} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'faults':>6} {'retries':>7}")
    for r in rows:
        if r["epoch"] < 3 or r["epoch"] % 5 == 4 or r["epoch"] == EPOCHS - 1:
            print(f"{r['epoch']:>5} {r['img_per_s']:>8.0f} {r['rss_mib']:>8.1f} {r['fds']:>5} {r['threads']:>7} "
                  f"{r['faults']:>6} {r['retries']:>7}")
    warm = rows[3:8]  # after start-up (imports, first connections, allocator warm-up)
    last = rows[-5:]
    rss_start = statistics.median(r["rss_mib"] for r in warm)
    rss_end = statistics.median(r["rss_mib"] for r in last)
    speed_start = statistics.median(r["img_per_s"] for r in warm)
    speed_end = statistics.median(r["img_per_s"] for r in last)
    total_faults = sum(r["faults"] for r in rows)
    print(f"RSS (main + workers) {rss_start:.1f} -> {rss_end:.1f} MiB; throughput {speed_start:.0f} -> "
          f"{speed_end:.0f} img/s; faults injected {total_faults}, all retried; "
          f"{EPOCHS * N} samples checked")
    FIGURES[f"soak_rss_start_{fetch_impl}"] = rss_start
    FIGURES[f"soak_rss_end_{fetch_impl}"] = rss_end
    assert total_faults > EPOCHS * N * 0.02  # the faults really were on
    assert rss_end - rss_start < max(24.0, 0.08 * rss_start), "memory grows epoch after epoch"
    assert speed_end > 0.5 * speed_start, "throughput degrades epoch after epoch"
    assert max(r["fds"] for r in last) <= max(r["fds"] for r in warm) + 4, "fds creep"
    assert max(r["threads"] for r in last) <= max(r["threads"] for r in warm) + 2, "threads creep"
