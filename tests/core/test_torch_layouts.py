"""The next torch: the loader against simulated DataLoader layouts (see torch_layouts.py).

Each test runs in a subprocess whose torch is patched before anything else runs (a
``sitecustomize`` on PYTHONPATH, so spawned workers get the same torch): the old ``_worker_loop``
removed, and the new functions present. The package must import, and every batch must arrive,
in order, with fork and spawn and both fetch_impls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

SCRIPT = r"""
import json, sys, warnings
layout, start, impls, workers = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
from torch.utils.data._utils import worker as tworker
assert not hasattr(tworker, "_worker_loop"), "the simulation did not remove the old name"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import concurrent_dataloader
    from concurrent_dataloader import DataLoader
    from concurrent_dataloader.loader import _torch_compat
    from tests.core.datasets import SleepyDataset
    out = {"layout": _torch_compat.WORKER_LAYOUT, "runs": {}}
    for impl in impls:
        if start == "none":
            kwargs = dict(num_workers=0)
        elif start == "thread":
            kwargs = dict(num_workers=workers, worker_method="thread", persistent_workers=True)
        else:
            kwargs = dict(num_workers=workers, multiprocessing_context=start, persistent_workers=True)
        dl = DataLoader(SleepyDataset(n=24, batch_size=4, delay=0.05), batch_size=4, fetch_impl=impl,
                        num_fetch_workers=8, batch_pool=3, **kwargs)
        for epoch in range(2):
            x = torch.cat(list(dl))
            assert x[:, 0].tolist() == list(range(24)), (impl, epoch, x[:, 0].tolist())
        out["runs"][impl] = {"peak": int(x[:, 1].max()), "peak_batches": int(x[:, 2].max()),
                             "samples": dl.stats()["samples"]}
        if start != "none":
            # close() mid-epoch, then again after the sampler ran out but before every batch arrived:
            # the iterator raises, it never ends quietly or hangs
            for name, taken in (("after_close", 1), ("after_late_close", 3)):
                it = iter(dl)
                for _ in range(taken):
                    next(it)
                dl.close()
                try:
                    next(it)
                    out["runs"][impl][name] = "batch"
                except StopIteration:
                    out["runs"][impl][name] = "StopIteration"
                except Exception as exc:
                    out["runs"][impl][name] = type(exc).__name__
        dl.close()
out["warnings"] = [str(w.message) for w in caught
                   if issubclass(w.category, RuntimeWarning) and "concurrent_dataloader" in str(w.message)]
print("RESULT " + json.dumps(out))
"""


# A spawned worker imports torch afresh (2 s, more on a loaded machine): one spawn test per layout,
# with one worker and the other fetch_impl each; fork runs both fetch_impls with two workers.


def run(layout: str, start: str, impls: str = "threaded,asyncio", workers: int = 2) -> dict:
    env = dict(os.environ, CDL_TORCH_LAYOUT=layout,
               PYTHONPATH=os.pathsep.join([str(HERE / "torch_layout_site"), str(HERE), str(ROOT),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, layout, start, impls, str(workers)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("start,impls,workers", [("fork", "threaded,asyncio", 2), ("spawn", "threaded", 1)])
def test_new_layout_is_bound_and_keeps_read_ahead_across_batches(start, impls, workers):
    out = run("process", start, impls, workers)
    assert out["layout"] == "process_worker_loop"
    assert out["warnings"] == []
    for impl, r in out["runs"].items():
        assert r["samples"] == 24, impl
        assert r["peak"] >= 4, impl  # a batch's samples load together ...
        assert r["peak_batches"] >= 2, impl  # ... and the next batch starts before the head is done
        assert r["after_close"] == r["after_late_close"] == "WorkersStoppedError", impl


@pytest.mark.parametrize("start,impls,workers", [("fork", "threaded,asyncio", 2), ("spawn", "asyncio", 1)])
def test_unknown_layout_imports_and_falls_back_to_getitems_with_one_warning(start, impls, workers):
    out = run("unknown", start, impls, workers)
    assert out["layout"] is None
    assert len(out["warnings"]) == 1, out["warnings"]
    assert "read-ahead across batches" in out["warnings"][0] and "__getitems__" in out["warnings"][0]
    for impl, r in out["runs"].items():
        assert r["samples"] == 24, impl  # the loader's stats still count every worker
        assert r["peak"] >= 4, impl  # concurrency inside each batch
        assert r["peak_batches"] == 1, impl  # what the warning says is lost
        assert r["after_close"] == r["after_late_close"] == "WorkersStoppedError", impl


def test_thread_workers_keep_their_semantics():
    out = run("thread", "thread")
    assert out["layout"] == "process_worker_loop"
    assert len(out["warnings"]) == 1 and "worker_method='thread'" in out["warnings"][0]
    for impl, r in out["runs"].items():
        assert r["samples"] == 24, impl
        assert r["peak"] >= 4, impl
        assert r["after_close"] == r["after_late_close"] == "WorkersStoppedError", impl


def test_import_never_fails_without_a_worker_loop():
    out = run("bare", "none")  # num_workers=0 keeps the batch pool: it needs no worker loop
    assert out["layout"] is None
    assert out["warnings"] == []
    for impl, r in out["runs"].items():
        assert r["samples"] == 24 and r["peak_batches"] >= 2, impl
