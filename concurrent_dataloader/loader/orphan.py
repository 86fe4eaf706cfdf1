"""Worker processes exit when the process that started them dies, even in the middle of a batch.

torch's worker loop checks its parent between tasks (``ManagerWatchdog``, every 5 s while idle).
Ours can be busy for a long time inside one batch: fetch threads waiting on a slow store, the
event loop awaiting thousands of requests, or the worker's main thread loading a batch inline.
Nothing in those paths looks at the parent, so a killed training process left orphans burning a
core for many minutes.

:func:`watch_parent` starts one daemon thread per worker process that polls ``os.getppid()``
(a worker is re-parented when its parent dies; under forkserver the forkserver itself exits
with the main process). When the parent is gone it ends the process with ``os._exit`` at once:
nobody is left to receive batches, and a graceful exit could wait forever joining a fetch thread
stuck in a read. The kernel closes its sockets and files.
"""

from __future__ import annotations

import os
import threading

__all__ = ["watch_parent", "POLL_S", "EXIT_CODE"]

POLL_S = 0.25
EXIT_CODE = 1

_started_in: int | None = None  # pid of the process whose watchdog runs (a fork has none yet)


def _watch(parent: int, poll_s: float) -> None:
    stop = threading.Event()  # never set: a daemon thread dies with its process
    while not stop.wait(poll_s):
        if os.getppid() != parent:
            os._exit(EXIT_CODE)


def watch_parent(poll_s: float = POLL_S) -> None:
    """In a worker process: exit within ``poll_s`` of the parent's death. Idempotent per process."""
    global _started_in
    if _started_in == os.getpid():
        return
    _started_in = os.getpid()
    # NOTE: the parent as it is now, as torch's ManagerWatchdog takes it. Not "ppid == 1 means
    # orphaned": in a container the training process itself may be PID 1.
    parent = os.getppid()
    threading.Thread(target=_watch, args=(parent, poll_s), name="cdl-parent-watchdog", daemon=True).start()
