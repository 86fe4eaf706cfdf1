"""Simulated torch DataLoader layouts for test_torch_layouts.py. A simulation built on the installed
torch (2.14/2.15), not torch's code: the loop itself stays torch's, only its name, signature and the
way the iterator starts it change, as on torch's development branch.

* ``"process"``: ``_utils.worker._worker_loop`` is gone; ``_process_worker_loop(dataset_kind,
  dataset, ...)`` takes the dataset itself; ``_MultiProcessingDataLoaderIter`` starts processes
  with the new name.
* ``"unknown"``: a layout no version of concurrent_dataloader knows: the loop has another name
  and other parameter names, and the iterator starts processes with it.
* ``"thread"``: ``"process"`` plus thread workers: ``DataLoader(worker_method="thread")`` runs
  its workers as threads of the main process.
* ``"bare"``: ``_worker_loop`` removed and nothing else (torch itself could not start workers).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import inspect
import queue
import re
import textwrap
import threading

from torch.utils.data import dataloader as tdl
from torch.utils.data._utils import worker as tworker

_original_loop = tworker._worker_loop


def _process_worker_loop(dataset_kind, dataset, index_queue, data_queue, done_event, auto_collation, collate_fn,
                         drop_last, base_seed, init_fn, worker_id, num_workers, persistent_workers, shared_seed):
    return _original_loop(dataset_kind, [dataset], index_queue, data_queue, done_event, auto_collation, collate_fn,
                          drop_last, base_seed, init_fn, worker_id, num_workers, persistent_workers, shared_seed)


def _future_worker_loop(kind, data_source, task_queue, result_queue, stop_event, auto_collation, collate_fn,
                        drop_last, base_seed, init_fn, wid, num_workers, persistent_workers, shared_seed):
    return _original_loop(kind, [data_source], task_queue, result_queue, stop_event, auto_collation, collate_fn,
                          drop_last, base_seed, init_fn, wid, num_workers, persistent_workers, shared_seed)


def _start_workers_with(name: str) -> None:
    """Recompile the iterator's ``__init__`` so that it starts processes with ``_utils.worker.<name>``."""
    src = textwrap.dedent(inspect.getsource(tdl._MultiProcessingDataLoaderIter.__init__))
    assert src.count("target=_utils.worker._worker_loop") == 1 and src.count("super().__init__(loader)") == 1
    src = src.replace("target=_utils.worker._worker_loop", f"target=_utils.worker.{name}")
    # The development branch passes the dataset itself, not a one-element holder list.
    src, n = re.subn(r"^(\s+)dataset_holder,$", r"\1self._dataset,", src, flags=re.M)
    assert n == 1
    src = src.replace("super().__init__(loader)", "super(_MultiProcessingDataLoaderIter, self).__init__(loader)")
    namespace: dict = {}
    exec(compile(src, tdl.__file__, "exec"), tdl.__dict__, namespace)
    tdl._MultiProcessingDataLoaderIter.__init__ = namespace["__init__"]


def _install(name: str, fn) -> None:
    fn.__module__ = tworker.__name__
    fn.__qualname__ = fn.__name__ = name
    setattr(tworker, name, fn)
    del tworker._worker_loop
    _start_workers_with(name)


class _ThreadingDataLoaderIter(tdl._BaseDataLoaderIter):
    """Thread workers: ``num_workers`` threads of this process each fetch whole index batches with
    torch's own fetcher; ``prefetch_factor`` batches per worker ahead, returned in order."""

    def __init__(self, loader) -> None:
        super().__init__(loader)
        self._shutdown = False
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, daemon=True, name=f"fake-torch-thread-worker-{i}")
                         for i in range(self._num_workers)]
        for w in self._workers:
            w.start()
        self._ahead = (loader.prefetch_factor or 2) * self._num_workers
        self._futures: collections.deque = collections.deque()
        self._reset(loader, first_iter=True)

    def _work(self) -> None:
        fetcher = tdl._DatasetKind.create_fetcher(self._dataset_kind, self._dataset, self._auto_collation,
                                                  self._collate_fn, self._drop_last)
        while True:
            task = self._tasks.get()
            if task is None:
                return
            future, index = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fetcher.fetch(index))
                except BaseException as exc:
                    future.set_exception(exc)

    def _reset(self, loader, first_iter=False) -> None:
        super()._reset(loader, first_iter)
        self._send_idx = self._rcvd_idx = 0  # index batches sent to / received from the workers
        while getattr(self, "_futures", None):
            self._futures.popleft().cancel()

    def _next_data(self):
        while not self._shutdown and len(self._futures) < self._ahead:
            try:
                index = self._next_index()
            except StopIteration:
                break
            future: cf.Future = cf.Future()
            self._tasks.put((future, index))
            self._futures.append(future)
            self._send_idx += 1
        if not self._futures:
            raise StopIteration
        data = self._futures.popleft().result()
        self._rcvd_idx += 1
        return data

    def _shutdown_workers(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            for f in getattr(self, "_futures", ()):
                f.cancel()
            for _ in self._workers:
                self._tasks.put(None)
            # Join them, as a real thread-worker iterator must: a daemon thread still inside torch
            # when the interpreter exits aborts the process ("terminate called without an active
            # exception").
            for w in self._workers:
                if w is not threading.current_thread():
                    w.join(timeout=10)

    def __del__(self) -> None:
        self._shutdown_workers()


def _add_thread_workers() -> None:
    original_init, original_get_iterator = tdl.DataLoader.__init__, tdl.DataLoader._get_iterator

    @functools.wraps(original_init)
    def __init__(self, *args, worker_method="multiprocessing", **kwargs):
        if worker_method not in ("multiprocessing", "thread"):
            raise ValueError("worker_method should be either 'multiprocessing' or 'thread'")
        original_init(self, *args, **kwargs)
        self.worker_method = worker_method

    def _get_iterator(self):
        if self.num_workers > 0 and self.worker_method == "thread":
            return _ThreadingDataLoaderIter(self)
        return original_get_iterator(self)

    tdl.DataLoader.__init__ = __init__
    tdl.DataLoader._get_iterator = _get_iterator
    tdl._ThreadingDataLoaderIter = _ThreadingDataLoaderIter


def apply(layout: str) -> None:
    if layout == "process":
        _install("_process_worker_loop", _process_worker_loop)
    elif layout == "unknown":
        _install("_future_worker_loop", _future_worker_loop)
    elif layout == "thread":
        _install("_process_worker_loop", _process_worker_loop)
        _add_thread_workers()
    elif layout == "bare":
        del tworker._worker_loop
    else:
        raise ValueError(f"unknown simulated layout {layout!r}")
