"""The ONLY module that touches private torch DataLoader internals.

Everything here was checked against torch 2.14.1 (``torch/utils/data/dataloader.py`` and
``_utils/worker.py``). ``tests/test_torch_compat.py`` asserts each assumption, so a torch
upgrade that renames or reshapes one fails loudly there instead of misbehaving at run time.

What we rely on:

* ``_utils.worker._worker_loop``'s parameter names (bound by name, never by position);
* the worker loop calls ``torch.utils.data._DatasetKind.create_fetcher(kind, dataset,
  auto_collation, collate_fn, drop_last)`` after ``worker_init_fn`` and on every
  ``_ResumeIteration``, and uses the fetcher's ``fetch(index)``;
* the worker loop reads its index queue with ``get(timeout=...)`` and handles ``None`` and
  ``_ResumeIteration`` control messages;
* ``_MultiProcessingDataLoaderIter.__init__(loader)`` reads ``loader.prefetch_factor``,
  ``loader.worker_init_fn`` and ``loader.multiprocessing_context`` (whose ``Process`` it calls
  with ``target=_utils.worker._worker_loop``);
* ``_SingleProcessDataLoaderIter`` exposes ``_next_index``, ``_collate_fn``,
  ``_auto_collation``, ``_pin_memory`` and ``_pin_memory_device``.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import signal
import time
import traceback
from typing import Any, Callable, Iterator

import torch
import torch.utils.data as tud
from torch.utils.data import _utils as _tud_utils
from torch.utils.data import dataloader as _tud_dataloader
from torch.utils.data._utils import worker as _tud_worker

from ..errors import WorkersStoppedError
from ..telemetry import EpochTimer, StatsBlock
from .config import FetchConfig, InitFnWithConfig
from .fetchers import SampleFetcher
from .pipeline import PipelineFetcher, ReadAhead, ReadAheadIndexQueue

__all__ = [
    "TORCH_WORKER_LOOP",
    "WORKER_LOOP_PARAMS",
    "bind_worker_args",
    "is_map_style",
    "is_control_message",
    "override_map_fetcher",
    "ConcurrentSingleProcessIter",
    "ConcurrentMultiProcessingIter",
]

# Captured at import, before anybody can monkeypatch it with ours.
TORCH_WORKER_LOOP: Callable[..., None] = _tud_worker._worker_loop
if getattr(TORCH_WORKER_LOOP, "__module__", "").startswith("concurrent_dataloader"):
    raise ImportError("torch's _worker_loop was replaced before concurrent_dataloader was imported")

WORKER_LOOP_PARAMS: tuple[str, ...] = tuple(inspect.signature(TORCH_WORKER_LOOP).parameters)
# The parameters our worker loop reads; test_torch_compat checks they still exist.
REQUIRED_WORKER_PARAMS = ("dataset_kind", "dataset_holder", "index_queue", "auto_collation",
                          "collate_fn", "init_fn", "worker_id")

_DatasetKind = _tud_dataloader._DatasetKind
_ResumeIteration = _tud_worker._ResumeIteration


def bind_worker_args(args: tuple, kwargs: dict) -> inspect.BoundArguments:
    return inspect.signature(TORCH_WORKER_LOOP).bind(*args, **kwargs)


def is_map_style(loader: tud.DataLoader) -> bool:
    return loader._dataset_kind == _DatasetKind.Map


def is_map_kind(dataset_kind: Any) -> bool:
    return dataset_kind == _DatasetKind.Map


def is_control_message(item: Any) -> bool:
    return item is None or isinstance(item, _ResumeIteration)


@contextlib.contextmanager
def override_map_fetcher(dataset: Any, make: Callable[[], PipelineFetcher]) -> Iterator[None]:
    """Inside a worker process: make torch's loop use our fetcher for ``dataset``.

    NOTE: patches a class attribute of this (worker) process only, and restores it on exit.
    Any other dataset (e.g. a nested DataLoader) still gets torch's own fetcher.
    """
    original = _DatasetKind.create_fetcher

    def create_fetcher(kind, ds, auto_collation, collate_fn, drop_last):
        if ds is dataset and kind == _DatasetKind.Map:
            return make()
        return original(kind, ds, auto_collation, collate_fn, drop_last)

    _DatasetKind.create_fetcher = staticmethod(create_fetcher)
    try:
        yield
    finally:
        _DatasetKind.create_fetcher = staticmethod(original)


def num_yielded(iterator: Any) -> int:
    """Batches this iterator has returned to the caller in the current epoch."""
    return iterator._num_yielded


def index_sampler(loader: tud.DataLoader) -> Any:
    return loader._index_sampler


class _TimedNext:
    """Splits the training loop's time into waiting for data and the rest (see EpochTimer)."""

    _timer: EpochTimer | None = None

    def __next__(self) -> Any:
        timer = self._timer
        if timer is None:
            return super().__next__()
        began = timer.before_next()
        try:
            data = super().__next__()
        except StopIteration:
            timer.after_next(began, False)
            raise
        timer.after_next(began, True)
        return data


class ConcurrentSingleProcessIter(_TimedNext, _tud_dataloader._SingleProcessDataLoaderIter):
    """num_workers=0: the fetchers run in the main process with the same read-ahead."""

    def __init__(self, loader: tud.DataLoader, fetcher: SampleFetcher, batch_pool: int,
                 sampler: Any = None, timer: EpochTimer | None = None) -> None:
        super().__init__(_LoaderView(loader, {"_index_sampler": sampler}) if sampler is not None else loader)
        self._timer = timer
        self._batch_pool = batch_pool
        self._read_ahead = ReadAhead(fetcher, self._auto_collation, self._collate_fn)
        self._exhausted = False

    def _reset(self, loader, first_iter=False) -> None:
        super()._reset(loader, first_iter)
        if hasattr(self, "_read_ahead"):
            self._read_ahead.clear()
        self._exhausted = False

    def _next_data(self) -> Any:
        if self._read_ahead.fetcher.closed and (not self._exhausted or len(self._read_ahead)):
            raise WorkersStoppedError("DataLoader.close() stopped the fetch threads while this iterator still owed "
                                      "batches of its epoch; start a new epoch with iter(loader)")
        while not self._exhausted and len(self._read_ahead) < self._batch_pool:
            try:
                self._read_ahead.submit(self._next_index())
            except StopIteration:
                self._exhausted = True
        if not len(self._read_ahead):
            raise StopIteration
        data = self._read_ahead.take()
        if self._pin_memory:
            data = _tud_utils.pin_memory.pin_memory(data, self._pin_memory_device)
        return data

    def __del__(self) -> None:
        read_ahead = getattr(self, "_read_ahead", None)
        if read_ahead is not None:
            read_ahead.clear()


class _ContextProxy:
    """A multiprocessing context whose ``Process`` runs our worker loop instead of torch's."""

    def __init__(self, context: Any, worker_loop: Callable[..., None]) -> None:
        self._context = context
        self._worker_loop = worker_loop

    def Process(self, *args: Any, target: Any = None, **kwargs: Any) -> multiprocessing.process.BaseProcess:
        if target is _tud_worker._worker_loop or target is TORCH_WORKER_LOOP:
            target = self._worker_loop
        return self._context.Process(*args, target=target, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _LoaderView:
    """The loader as ``_MultiProcessingDataLoaderIter.__init__`` should see it: same object,
    except a larger ``prefetch_factor``, our config riding in ``worker_init_fn``, and the
    context proxy. Nothing on the real loader is mutated."""

    def __init__(self, loader: tud.DataLoader, overrides: dict[str, Any]) -> None:
        object.__setattr__(self, "_loader", loader)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name: str) -> Any:
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_loader"), name)


class ConcurrentMultiProcessingIter(_TimedNext, _tud_dataloader._MultiProcessingDataLoaderIter):
    def __init__(self, loader: tud.DataLoader, config: FetchConfig, worker_loop: Callable[..., None],
                 sampler: Any = None, timer: EpochTimer | None = None, stats_block: StatsBlock | None = None,
                 budget: Any = None) -> None:
        self._timer = timer
        context = loader.multiprocessing_context or torch.multiprocessing
        overrides = {"_index_sampler": sampler} if sampler is not None else {}
        view = _LoaderView(loader, {
            **overrides,
            # Stock torch sends each worker only prefetch_factor batches; our workers need
            # batch_pool of them to keep that many in flight.
            "prefetch_factor": max(loader.prefetch_factor or 2, config.batch_pool),
            "worker_init_fn": InitFnWithConfig(loader.worker_init_fn, config, stats_block, budget),
            "multiprocessing_context": _ContextProxy(context, worker_loop),
        })
        super().__init__(view)

    _sampler_exhausted = False

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        self._sampler_exhausted = False
        super()._reset(loader, first_iter)

    def _next_index(self) -> Any:
        try:
            return super()._next_index()
        except StopIteration:
            self._sampler_exhausted = True
            raise

    def _batches_owed(self) -> bool:
        return not self._sampler_exhausted or self._rcvd_idx < self._send_idx

    def _next_data(self) -> Any:
        # NOTE (shutdown): torch's loop skips the batches of stopped workers and then ends the
        # epoch with StopIteration. Workers are stopped mid-epoch only by close(), by the loader
        # starting over after a dead worker or a timeout, or by our error path: never end quietly.
        if self._shutdown and self._batches_owed():
            raise WorkersStoppedError(
                f"the DataLoader's worker processes were stopped (close(), or the loader restarted them) while "
                f"this iterator still owed batches of its epoch ({self._num_yielded} yielded so far); "
                f"start a new epoch with iter(loader)")
        return super()._next_data()

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except Exception as exc:
            # NOTE (shutdown): a dead worker or a timeout ends the epoch. Stop the other workers
            # now rather than when this iterator is garbage-collected: the raised exception keeps
            # it alive, and until then its children, sockets and shared memory stay, and torch's
            # SIGCHLD handler can raise "worker killed" again anywhere in the main thread.
            # A sample's own error comes back wrapped by torch ("Caught X in DataLoader worker
            # process N"): the worker is alive, so do not wait for it to die.
            from_worker = "in DataLoader worker process" in str(exc)
            pipe_error = isinstance(exc, (OSError, EOFError)) and not from_worker
            dead = _dead_workers(self._workers, wait=5.0 if pipe_error else 0.0)
            timed_out = isinstance(exc, RuntimeError) and "DataLoader timed out" in str(exc)
            if exc.__traceback__ is not None:
                # NOTE (shutdown): torch re-raises a worker's error from a frame that holds it
                # (ExceptionWrapper.reraise), a reference cycle through this iterator. Left alone,
                # the iterator waits for the cyclic GC, which may finalize its queues first and
                # then spend 5 s per worker in join timeouts. The frames below this one are
                # torch internals (the worker's traceback is in the message): drop their locals.
                traceback.clear_frames(exc.__traceback__.tb_next)
            if not (dead or timed_out):
                raise  # a sample's own error: the workers are fine and the epoch may go on
            shutdown_iterator(self)
            if dead and not isinstance(exc, RuntimeError):
                # The dead worker's half-sent batch can surface as a pipe error; say what happened.
                raise RuntimeError(f"DataLoader worker ({_describe_exit(dead)}) exited unexpectedly while its "
                                   f"batch was being received ({type(exc).__name__}: {exc})") from exc
            raise


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


def iterator_is_shut_down(loader: tud.DataLoader) -> bool:
    """True when the loader's persistent iterator cannot go on: it stopped its workers (a worker
    died, a timeout) or one of them has exited (torch's SIGCHLD handler may have raised the
    error outside ``next()``). Then the next ``iter(loader)`` must start fresh workers: resuming
    would wait for an answer from a dead worker. Such an iterator is stopped here."""
    iterator = loader.__dict__.get("_iterator")
    if iterator is None:
        return False
    if getattr(iterator, "_shutdown", False):
        return True
    if any(w.exitcode is not None for w in getattr(iterator, "_workers", ())):
        iterator._shutdown_workers()
        return True
    return False


def is_persistent(iterator: Any) -> bool:
    return bool(getattr(iterator, "_persistent_workers", False))


def shutdown_iterator(iterator: Any) -> None:
    """Stop a multi-process iterator's workers now (idempotent)."""
    iterator._shutdown_workers()


def forget_persistent_iterator(loader: tud.DataLoader) -> None:
    """Make the next ``iter(loader)`` start fresh workers (persistent_workers keeps one iterator)."""
    loader._iterator = None


def make_worker_index_queue(index_queue: Any, batch_pool: int) -> ReadAheadIndexQueue:
    return ReadAheadIndexQueue(index_queue, batch_pool, is_control_message)
