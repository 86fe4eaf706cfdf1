"""Worker pools that build mini-batches in the background (batchup 0.2.3 compatible).

``pool.parallel_data_source(ds, batch_buffer_size)`` wraps a random-access data source; its
``batch_iterator`` starts filling a buffer of ``batch_buffer_size`` batches as soon as it is
called and yields them in order. Differences from batchup, all on purpose:

* Closing the iterator (``it.close()``, leaving a ``with`` block, or dropping it) cancels the
  work it queued; ``pool.close()`` (or ``with pool:``) stops the workers and waits for them.
* An exception in a worker reaches the consumer (for processes with the worker's traceback
  as ``__cause__``), and the pool is then shut down rather than left half-alive.
* A worker process that dies (killed, out of memory) raises ``BrokenProcessPool`` instead of
  hanging the consumer.
* Each worker process reseeds numpy's and Python's global RNGs, so random augmentation in a
  ``map`` function differs between workers instead of repeating.
* Process pools send a shared constant (the data source) to each worker once, through a
  temporary file the pool deletes on close; the source is still pickled, so keep it
  lightweight (paths and keys, not decoded images).
"""

from __future__ import annotations

import collections
import contextlib
import concurrent.futures as cf
import multiprocessing
import os
import pickle
import random
import shutil
import sys
import tempfile
import threading
import uuid
import weakref
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .._atomic import atomic_open
from .._closing import Closing
from . import data_source

__all__ = [
    "AbstractWorkerPool",
    "WorkerThreadPool",
    "WorkerProcessPool",
    "ParallelDataSource",
    "WorkStream",
    "BatchStreamIterator",
]

_NOTE_PREFIX = "[concurrent_dataloader.batchup]"


# ---------------------------------------------------------------------------------------------
# Worker-process side
# ---------------------------------------------------------------------------------------------

class _SharedConstant:
    """A value a process pool stores once in a file; workers load it once and cache it."""

    __slots__ = ("key", "path")

    def __init__(self, key: str, path: str) -> None:
        self.key = key
        self.path = path

    def __reduce__(self):
        return (_SharedConstant, (self.key, self.path))


_worker_cache: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
_WORKER_CACHE_SIZE = 8


def _load_shared(const: _SharedConstant) -> Any:
    try:
        value = _worker_cache.pop(const.key)
    except KeyError:
        # Written by our own pool (shared_constant) in the parent: trusted pickle.
        with open(const.path, "rb") as f:
            value = pickle.load(f)
    _worker_cache[const.key] = value
    while len(_worker_cache) > _WORKER_CACHE_SIZE:
        _worker_cache.popitem(last=False)
    return value


def _run_task(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    args = tuple(_load_shared(a) if isinstance(a, _SharedConstant) else a for a in args)
    return fn(*args, **kwargs)


def _process_worker_init() -> None:
    # A forked worker would otherwise repeat the parent's random numbers in every worker.
    seed = int.from_bytes(os.urandom(8), "little")
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        # NOTE: as in torch's DataLoader workers: one intra-op thread per worker, so N workers
        # do not oversubscribe the cores (and forked OpenMP pools are not reused).
        torch.set_num_threads(1)


def _noop() -> None:
    return None


def _pds_extract_helper(ds: Any, batch_indices: Any) -> Any:
    return ds.samples_by_indices_nomapping(batch_indices)


# ---------------------------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------------------------

def _check_processes(processes: Any) -> int:
    if processes is None:
        return os.cpu_count() or 1
    if isinstance(processes, bool) or not isinstance(processes, (int, np.integer)) or processes < 1:
        raise ValueError(f"processes should be an int >= 1 (or None for one per CPU), not {processes!r}")
    return int(processes)


def _shutdown_executor(executor: cf.Executor, tmpdir: str | None) -> None:
    executor.shutdown(wait=False, cancel_futures=True)
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)


class AbstractWorkerPool(Closing):
    """A pool of workers; use :meth:`parallel_data_source` or :meth:`work_stream`.

    Several streams may share one pool (their tasks share its workers). Use it as a context
    manager or call :meth:`close` to stop the workers.
    """

    _executor: cf.Executor

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._close_reason: str | None = None
        self._streams: "weakref.WeakSet[WorkStream]" = weakref.WeakSet()

    # -- batchup API -------------------------------------------------------------------------
    def shared_constant(self, x: Any) -> Any:
        """Wrap a value passed with every task so workers receive it once (processes only)."""
        raise NotImplementedError(f"Abstract for type {type(self)}")

    def work_stream(self, task_generator: Iterable[tuple], task_buffer_size: int = 20) -> "WorkStream":
        """Run tasks ``(fn,)``, ``(fn, args)`` or ``(fn, args, kwargs)`` from ``task_generator``,
        keeping ``task_buffer_size`` of them queued; results come back in order.
        """
        return WorkStream(self, task_generator, task_buffer_size=task_buffer_size)

    def parallel_data_source(self, ds: data_source.AbstractDataSource,
                             batch_buffer_size: int = 20) -> "ParallelDataSource":
        """A data source whose batches are built by this pool's workers, ``batch_buffer_size`` ahead."""
        return ParallelDataSource(ds, batch_buffer_size, self)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> cf.Future:
        with self._lock:
            if self._closed:
                reason = f" ({self._close_reason})" if self._close_reason else ""
                raise RuntimeError(f"{type(self).__name__} is closed{reason}")
            return self._executor.submit(_run_task, fn, args, kwargs)

    def _register_stream(self, stream: "WorkStream") -> None:
        with self._lock:
            self._streams.add(stream)

    def close(self, _reason: str | None = None) -> None:
        """Cancel queued tasks of every stream, stop the workers and wait for them to exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_reason = _reason
            streams = list(self._streams)
        for stream in streams:
            stream.close(_abort_reason=_reason or f"{type(self).__name__}.close() was called")
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._finalizer()


class WorkerThreadPool(AbstractWorkerPool):
    """A pool of ``processes`` worker threads.

    Right for I/O-bound sources such as :class:`~concurrent_dataloader.batchup.accessors.DatasetAccessor`
    and PIL decoding (both release the GIL).
    """

    def __init__(self, processes: int | None = 1) -> None:
        super().__init__()
        self.processes = _check_processes(processes)
        self._executor = cf.ThreadPoolExecutor(self.processes, thread_name_prefix="batchup-worker")
        # NOTE: the finalizer stops the threads if the pool is dropped without close(); it must not
        # reference self.
        self._finalizer = weakref.finalize(self, _shutdown_executor, self._executor, None)

    def shared_constant(self, x: Any) -> Any:
        """Threads share memory: returns ``x`` itself."""
        return x


class WorkerProcessPool(AbstractWorkerPool):
    """A pool of ``processes`` worker processes.

    ``start_method`` is a multiprocessing start method (``"fork"``, ``"spawn"``,
    ``"forkserver"``); ``None`` uses the platform default, as batchup did. With spawn or
    forkserver, functions and classes used by the tasks (accessors, map functions) must be
    importable: defined at the top level of a module, not in ``__main__`` of a notebook.

    The workers are started here, before the first batch, so they fork before the consumer
    starts fetch threads; accessors create their clients lazily in each worker (NOTE [ Fork
    safety ] in ``concurrent_dataloader/__init__.py``).
    """

    def __init__(self, processes: int | None = 1, start_method: str | None = None) -> None:
        super().__init__()
        self.processes = _check_processes(processes)
        ctx = multiprocessing.get_context(start_method)
        self.start_method = ctx.get_start_method()
        self._tmpdir = tempfile.mkdtemp(prefix="cdl-batchup-pool-")
        self._executor = cf.ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_process_worker_init)
        self._finalizer = weakref.finalize(self, _shutdown_executor, self._executor, self._tmpdir)
        for _ in range(self.processes):  # start the workers now, not at the first batch
            self._executor.submit(_noop)

    def shared_constant(self, x: Any) -> _SharedConstant:
        """Pickle ``x`` once into the pool's temporary folder; each worker loads it on first use."""
        if self._closed:
            raise RuntimeError("WorkerProcessPool is closed")
        key = uuid.uuid4().hex
        path = os.path.join(self._tmpdir, f"{key}.pkl")
        with atomic_open(path, "wb") as f:
            pickle.dump(x, f, protocol=pickle.HIGHEST_PROTOCOL)
        return _SharedConstant(key, path)


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------

def _unpack_task(task: Any) -> tuple[Callable[..., Any], tuple, dict]:
    if not isinstance(task, (tuple, list)) or not 1 <= len(task) <= 3 or not callable(task[0]):
        raise TypeError(f"a task should be (fn,), (fn, args) or (fn, args, kwargs), not {task!r:.200}")
    fn = task[0]
    args = tuple(task[1]) if len(task) > 1 else ()
    kwargs = dict(task[2]) if len(task) > 2 else {}
    return fn, args, kwargs


class WorkStream:
    """Tasks from a generator, run by a pool with up to ``task_buffer_size`` queued; results in order.

    Work starts in the constructor. Normally made by :meth:`AbstractWorkerPool.work_stream`.

    NOTE: a stream has a single consumer (tasks are drawn from the generator in the consumer's
    thread, which keeps their order deterministic); a pool may serve several streams.
    """

    def __init__(self, worker_pool: AbstractWorkerPool, task_generator: Iterable[tuple],
                 task_buffer_size: int = 20) -> None:
        if not isinstance(worker_pool, AbstractWorkerPool):
            raise TypeError(f"worker_pool should be a worker pool, not {type(worker_pool)}")
        if isinstance(task_buffer_size, bool) or not isinstance(task_buffer_size, (int, np.integer)) \
                or task_buffer_size < 1:
            raise ValueError(f"the buffer size should be an int >= 1, not {task_buffer_size!r}")
        self._pool = worker_pool
        self._tasks: Iterator[tuple] | None = iter(task_generator)
        self._buffer_size = int(task_buffer_size)
        self._pending: collections.deque[cf.Future] = collections.deque()
        self._n_retrieved = 0
        self._closed = False
        self._abort_reason: str | None = None
        worker_pool._register_stream(self)
        self._populate()

    def _populate(self) -> None:
        while not self._closed and self._tasks is not None and len(self._pending) < self._buffer_size:
            try:
                task = next(self._tasks)
            except StopIteration:
                self._tasks = None
                return
            except BaseException:
                self.close()
                raise
            try:
                self._pending.append(self._pool._submit(*_unpack_task(task)))
            except BaseException:
                self.close()
                raise

    @property
    def closed(self) -> bool:
        return self._closed

    def retrieve(self) -> Any:
        """The next result (waiting for it if needed), or ``None`` when every task has been retrieved."""
        self._raise_if_aborted()
        if not self._pending:
            return None
        future = self._pending.popleft()
        try:
            value = future.result()
        except cf.CancelledError:
            self.close(_abort_reason=self._pool._close_reason or "the worker pool was closed")
            self._raise_if_aborted()
            raise
        except Exception as exc:
            self._fail(exc)
            raise
        self._n_retrieved += 1
        self._populate()
        return value

    def _fail(self, exc: BaseException) -> None:
        pool_name = type(self._pool).__name__
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"{_NOTE_PREFIX} raised by a {pool_name} worker in task {self._n_retrieved} of the "
                         "stream; the pool has been shut down")
        self.close()
        self._pool.close(_reason=f"a worker raised {type(exc).__name__}: {exc}")

    def _raise_if_aborted(self) -> None:
        # A stream cut short by the pool must not look like a stream that simply ended.
        if self._abort_reason is not None:
            raise RuntimeError(f"this stream was stopped before it finished: {self._abort_reason}")

    def retrieve_iter(self) -> "BatchStreamIterator":
        """An iterator over the remaining results; closing it closes this stream."""
        return BatchStreamIterator(self)

    def close(self, _abort_reason: str | None = None) -> None:
        """Cancel queued tasks and stop drawing new ones (tasks already running finish and are discarded)."""
        if self._closed:
            return
        self._closed = True
        self._abort_reason = _abort_reason
        while self._pending:
            self._pending.popleft().cancel()
        tasks, self._tasks = self._tasks, None
        close = getattr(tasks, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class BatchStreamIterator(Closing):
    """Iterator over a :class:`WorkStream`'s results; ``close()`` or ``with`` cancels the remaining work."""

    def __init__(self, stream: WorkStream) -> None:
        self._stream = stream

    def __iter__(self) -> "BatchStreamIterator":
        return self

    def __next__(self) -> Any:
        stream = self._stream
        stream._raise_if_aborted()
        if not stream._pending:
            stream.close()
            raise StopIteration
        return stream.retrieve()

    def close(self) -> None:
        self._stream.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()


class ParallelDataSource(data_source.AbstractDataSource):
    """A random-access data source whose batches are gathered by a worker pool, in order."""

    def __init__(self, ds: data_source.AbstractDataSource, batch_buffer_size: int, pool: AbstractWorkerPool) -> None:
        if not isinstance(ds, data_source.AbstractDataSource):
            raise TypeError(f"ds must implement `data_source.AbstractDataSource`, not {type(ds)}")
        if not ds.is_random_access:
            raise TypeError(f"ds must be random access; it is of type {type(ds)}")
        self._ds = ds
        self._pool = pool
        self._batch_buffer_size = batch_buffer_size
        self._shared_ds = pool.shared_constant(ds)

    def num_samples(self, **kwargs: Any) -> int | float | None:
        return self._ds.num_samples(**kwargs)

    def batch_iterator(self, batch_size: int, **kwargs: Any) -> BatchStreamIterator:
        """Starts the workers on the first ``batch_buffer_size`` batches right away; yields batches in order."""
        index_batches = self._ds.batch_indices_iterator(batch_size, **kwargs)
        tasks = ((_pds_extract_helper, (self._shared_ds, ndx)) for ndx in index_batches)
        return WorkStream(self._pool, tasks, task_buffer_size=self._batch_buffer_size).retrieve_iter()
