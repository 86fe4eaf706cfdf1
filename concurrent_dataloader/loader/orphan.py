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

from .._process_local import ProcessLocalValue

__all__ = ["watch_parent", "POLL_S", "EXIT_CODE"]

POLL_S = 0.25
EXIT_CODE = 1


def _watch(parent: int, poll_s: float) -> None:
    # NOTE: os.getppid() here is not per-process state (NOTE [ Per-process state ] in
    # _process_local.py answers "was this made by this process?"); it is the parent's liveness:
    # a worker is re-parented when its parent dies, so its parent id changes.
    stop = threading.Event()  # never set: a daemon thread dies with its process
    while not stop.wait(poll_s):
        if os.getppid() != parent:
            os._exit(EXIT_CODE)


class _Watchdog:
    """This process's watchdog thread, started by the first :func:`watch_parent` call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self, poll_s: float) -> None:
        with self._lock:
            if self.thread is not None:
                return
            # NOTE: the parent as it is now, as torch's ManagerWatchdog takes it. Not "ppid == 1
            # means orphaned": in a container the training process itself may be PID 1.
            parent = os.getppid()
            self.thread = threading.Thread(target=_watch, args=(parent, poll_s), name="cdl-parent-watchdog",
                                           daemon=True)
            self.thread.start()


# A worker forked from a process whose watchdog runs inherits the started _Watchdog, but not its
# thread: per-process state (NOTE [ Per-process state ]) gives each process its own.
_this_process: ProcessLocalValue[_Watchdog] = ProcessLocalValue(_Watchdog)


def watch_parent(poll_s: float = POLL_S) -> None:
    """In a worker process: exit within ``poll_s`` of the parent's death. Idempotent per process."""
    _this_process.get().start(poll_s)
