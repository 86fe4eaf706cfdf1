"""When loader resources stop: the shutdown rules, and the policy for dead workers and stopped ones.

NOTE [ Shutdown ]
    What owns what:

    * a worker process owns its fetcher (threads or an event-loop thread, and the dataset's
      clients) and its batch pool; torch's worker loop owns the process;
    * a multi-process iterator owns its workers (persistent ones included), their queues and
      torch's pin-memory thread; torch's own protocol (NOTE [ Data Loader Multiprocessing
      Shutdown Logic ] in torch's dataloader.py: done event, ``None`` sentinel, joins with a
      timeout, ``cancel_join_thread``) stops them, and our worker loop honours it;
    * a loader owns the main-process fetcher that its ``num_workers=0`` iterators share, and
      holds its persistent iterator, but never the reverse.

    What closes, in which order:

    * **Exhaustion.** A non-persistent iterator stops its workers (torch). Each worker's loop
      returns; then, still inside the worker, its batch pool is cleared (in-flight fetches
      cancelled) and its fetcher closed, so the process does not wait on fetch threads at exit.
      A persistent iterator keeps its workers for the next epoch. A ``num_workers=0`` iterator
      only clears its batch pool: the fetcher is the loader's.
    * **A sample's error.** torch delivers it from the worker; the workers are fine, the epoch
      may go on, nothing closes.
    * **A dead worker or a timeout.** The epoch is over: the iterator stops its other workers at
      once (:func:`after_failed_next`) instead of at garbage collection, which the raised
      exception's traceback would delay. A persistent iterator in that state is replaced by the
      next ``iter(loader)`` (:func:`replace_broken_persistent_iterator`).
    * **del / garbage collection.** An iterator stops its workers when it is collected (torch's
      ``__del__``); the loader's main-process fetcher stops its threads through a finalizer once
      the loader and its iterators are gone. Persistent workers therefore stop when both the
      loader and every reference to the iterator are gone: stopping them with the loader alone
      would end ``iter(DataLoader(...))`` at once.
    * **close().** The loader stops every live iterator's workers, forgets its persistent
      iterator and closes its main-process fetcher. An iterator that still owed batches then
      raises :class:`~concurrent_dataloader.errors.WorkersStoppedError` instead of ending the
      epoch quietly (:func:`check_workers_not_stopped`).
    * **Fetcher close.** Pools are shut down without waiting (queued fetches cancelled), the
      event loop's tasks are cancelled and the loop stopped on its own thread, then the dataset
      releases its clients (``close_fetch_resources``); a batch being drained starts no new
      sample and fails with ``CancelledError``. The same finalizer runs if ``close()`` is never
      called; it must not reference the fetcher.
    * **Parent death.** A worker whose parent is gone stops: torch's watchdog between batches,
      and ours (``orphan.py``) within a fraction of a second, even in the middle of a batch.
"""

from __future__ import annotations

import signal
import time
import traceback
from typing import Any, Callable

from ..errors import WorkersStoppedError
from . import _torch_compat

__all__ = ["after_failed_next", "check_workers_not_stopped", "replace_broken_persistent_iterator"]


def _dead_workers(workers: list, wait: float) -> list:
    """Workers that exited with an error. A pipe error from the data queue usually means a worker
    is dying (its half-sent batch broke off); give the kernel up to ``wait`` s to report the exit."""
    deadline = time.monotonic() + wait
    while True:
        dead = [w for w in workers if w.exitcode is not None and w.exitcode != 0]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.02)


def _describe_exit(workers: list) -> str:
    parts = []
    for w in workers:
        code = w.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        parts.append(f"pid {w.pid}, {how}")
    return "; ".join(parts)


def after_failed_next(exc: Exception, workers: list, stop_workers: Callable[[], None]) -> Exception | None:
    """What a multi-process iterator's failed ``next()`` means (see NOTE [ Shutdown ]).

    Returns None to re-raise ``exc`` unchanged, or the error to raise instead (from ``exc``).
    A dead worker or a timeout ends the epoch: the other workers are stopped now. A sample's
    own error comes back wrapped by torch ("Caught X in DataLoader worker process N"): the
    worker is alive, so do not wait for it to die.
    """
    from_worker = "in DataLoader worker process" in str(exc)
    pipe_error = isinstance(exc, (OSError, EOFError)) and not from_worker
    dead = _dead_workers(workers, wait=5.0 if pipe_error else 0.0)
    timed_out = isinstance(exc, RuntimeError) and "DataLoader timed out" in str(exc)
    if exc.__traceback__ is not None:
        # torch re-raises a worker's error from a frame that holds it (ExceptionWrapper.reraise),
        # a reference cycle through the iterator. Left alone, the iterator waits for the cyclic
        # GC, which may finalize its queues first and then spend 5 s per worker in join timeouts.
        # The frames below the iterator's are torch internals (the worker's traceback is in the
        # message): drop their locals.
        traceback.clear_frames(exc.__traceback__.tb_next)
    if not (dead or timed_out):
        return None  # a sample's own error: the workers are fine and the epoch may go on
    stop_workers()
    if dead and not isinstance(exc, RuntimeError):
        # The dead worker's half-sent batch can surface as a pipe error; say what happened.
        return RuntimeError(f"DataLoader worker ({_describe_exit(dead)}) exited unexpectedly while its "
                            f"batch was being received ({type(exc).__name__}: {exc})")
    return None


def check_workers_not_stopped(stopped: bool, batches_owed: bool, yielded: int) -> None:
    """torch's loop skips the batches of stopped workers and then ends the epoch with
    StopIteration. Workers are stopped mid-epoch only by close(), by the loader starting over
    after a dead worker or a timeout, or by our error path: never end quietly."""
    if stopped and batches_owed:
        raise WorkersStoppedError(
            f"the DataLoader's worker processes were stopped (close(), or the loader restarted them) while "
            f"this iterator still owed batches of its epoch ({yielded} yielded so far); "
            f"start a new epoch with iter(loader)")


def _has_exited(worker: Any) -> bool:
    """A worker process that exited, or a started thread worker (torch's thread workers) that ended."""
    if hasattr(worker, "exitcode"):
        return worker.exitcode is not None
    return worker.ident is not None and not worker.is_alive()


def replace_broken_persistent_iterator(loader: Any) -> None:
    """Forget the loader's persistent iterator when it cannot go on: it stopped its workers (a
    worker died, a timeout) or one of them has exited (torch's SIGCHLD handler may have raised
    the error outside ``next()``). Resuming it would wait for an answer from a dead worker, so
    the next ``iter(loader)`` starts fresh workers. Such an iterator is stopped here."""
    iterator = _torch_compat.persistent_iterator(loader)
    if iterator is None:
        return
    if not _torch_compat.is_shut_down(iterator):
        if not any(_has_exited(w) for w in _torch_compat.workers(iterator)):
            return
        _torch_compat.shutdown_iterator(iterator)
    _torch_compat.forget_persistent_iterator(loader)
