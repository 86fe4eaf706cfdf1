"""Workers exit when the training process is killed in the middle of a batch (issue 14, item 7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The "training process": starts a loader whose samples stall, waits until every worker is inside
# a sample (fetch thread, event loop, or its own main thread), prints the worker pids, and waits.
MAIN = textwrap.dedent("""
    import json, os, sys, time
    sys.path[:0] = [{here!r}, {root!r}]
    from concurrent_dataloader import DataLoader
    from tests.core.datasets import MarkedStall, PlainMarkedStall

    if __name__ == "__main__":
        marker_dir, kind, fetch_impl, context, workers = sys.argv[1:6]
        ds = (PlainMarkedStall if kind == "plain" else MarkedStall)(marker_dir)
        dl = DataLoader(ds, batch_size=4, num_workers=int(workers), fetch_impl=fetch_impl,
                        multiprocessing_context=context, num_fetch_workers=4)
        it = iter(dl)
        deadline = time.monotonic() + 60
        while len(os.listdir(marker_dir)) < int(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(json.dumps(sorted(int(m.split("-")[1]) for m in os.listdir(marker_dir))), flush=True)
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("fetch_impl,kind", [("threaded", "plain"), ("threaded", "fetch_decode"),
                                             ("asyncio", "plain"), ("asyncio", "fetch_decode")])
def test_sigkill_of_the_main_process_mid_batch_leaves_no_worker(tmp_path, fetch_impl, kind, context):
    if context == "spawn" and kind == "plain":
        pytest.skip("spawn: one dataset kind per fetch_impl keeps the test short")
    workers = 2 if context == "fork" else 1
    script = tmp_path / "main.py"
    script.write_text(MAIN.format(here=str(HERE), root=str(ROOT)))
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(markers), kind, fetch_impl, context, str(workers)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()
        pids = json.loads(line)
        assert len(pids) == workers, line
        assert all(_alive(p) for p in pids)  # mid-batch: every worker is stuck in a 60 s sample
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [p for p in pids if _alive(p)]
        assert not survivors, f"workers outlived their killed parent: {survivors}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in [int(m.name.split("-")[1]) for m in markers.iterdir()]:
            if _alive(pid):  # never leave an orphan behind, even when the test fails
                os.kill(pid, signal.SIGKILL)
