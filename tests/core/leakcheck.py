"""Counts of what a process owns: threads, child processes, open fds. Used before/after scenarios."""

from __future__ import annotations

import gc
import threading
import time

import psutil


def snapshot() -> dict:
    # The resource tracker is a per-interpreter helper process started by the first spawn; start it
    # before the baseline so it is not mistaken for a leaked worker.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    p = psutil.Process()
    return {"threads": threading.active_count(),
            "children": len(p.children(recursive=True)),
            "fds": p.num_fds()}


def wait_for_baseline(before: dict, timeout: float = 15.0, fd_slack: int = 0) -> dict:
    """Collect garbage until every count is back to ``before`` (or the timeout); return the last counts."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = snapshot()
        ok = (now["threads"] <= before["threads"] and now["children"] <= before["children"]
              and now["fds"] <= before["fds"] + fd_slack)
        if ok or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def assert_no_leaks(before: dict, **kwargs) -> None:
    after = wait_for_baseline(before, **kwargs)
    leaked = {k: (before[k], after[k]) for k in before if after[k] > before[k] + kwargs.get("fd_slack", 0) * (k == "fds")}
    assert not leaked, f"leaked (before, after): {leaked}; threads now: {[t.name for t in threading.enumerate()]}"
