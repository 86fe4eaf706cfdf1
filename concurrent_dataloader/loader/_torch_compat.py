"""The ONLY module that touches private torch DataLoader internals: accessors and patches, no policy.

Every private name used here is listed in :data:`PRIVATE_SYMBOLS` with the torch versions where
we saw it; ``tests/core/test_torch_compat.py`` checks each one against the installed torch, and
``tests/core/test_torch_layouts.py`` runs the loader against simulated future layouts.

Worker layouts (:data:`WORKER_LAYOUT`), found by introspection at import, never assumed:

* ``"worker_loop"`` (torch 2.14.1, 2.15.0): ``_utils.worker._worker_loop(dataset_kind,
  dataset_holder, index_queue, ...)``, where ``dataset_holder`` is a one-element list;
* ``"process_worker_loop"`` (torch's development branch): ``_process_worker_loop(dataset_kind,
  dataset, index_queue, ...)``; torch may also offer thread workers (``worker_method="thread"``);
* ``None``: neither can be bound. The package still imports, and the loader falls back to
  concurrency inside each batch through torch's public ``__getitems__`` hook (see
  ``dataloader.py``), losing read-ahead across batches.

What a bound layout relies on: the loop's parameters (bound by name, never by position); the loop
calls ``_DatasetKind.create_fetcher(kind, dataset, auto_collation, collate_fn, drop_last)`` after
``worker_init_fn`` and on every ``_ResumeIteration`` and uses the fetcher's ``fetch(index)``; it
reads its index queue with ``get(timeout=...)`` and handles ``None`` and ``_ResumeIteration``;
``_MultiProcessingDataLoaderIter.__init__(loader)`` reads ``loader.prefetch_factor``,
``loader.worker_init_fn`` and ``loader.multiprocessing_context``, whose ``Process`` it calls with
the loop as ``target``. If the loop ever stops calling ``create_fetcher``, torch's own fetcher
loads the data: correct, only without our concurrency.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
from typing import Any, Callable, Iterator

import torch
import torch.utils.data as tud
from torch.utils.data import _utils as _tud_utils
from torch.utils.data import dataloader as _tud_dataloader
from torch.utils.data._utils import worker as _tud_worker

from ..telemetry import EpochTimer
from . import lifecycle
from .batch_pool import SamplerBatches

__all__ = ["PRIVATE_SYMBOLS", "WORKER_LAYOUT", "TORCH_WORKER_LOOP", "SINGLE_PROCESS_OK", "bind_worker_args",
           "is_map_style", "is_control_message", "override_map_fetcher", "LoaderView", "stock_iterator",
           "ConcurrentSingleProcessIter", "ConcurrentMultiProcessingIter"]

# Every private torch name used by this package -> the torch versions where we saw it.
PRIVATE_SYMBOLS: dict[str, str] = {
    "torch.utils.data._utils.worker._worker_loop": "2.14.1, 2.15.0; gone on the development branch",
    "torch.utils.data._utils.worker._process_worker_loop": "development branch (after 2.15.0)",
    "torch.utils.data._utils.worker._ResumeIteration": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.dataloader._DatasetKind.Map": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.dataloader._DatasetKind.create_fetcher": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.dataloader._SingleProcessDataLoaderIter": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.dataloader._MultiProcessingDataLoaderIter": "2.14.1, 2.15.0, development branch",
    "torch.utils.data._utils.pin_memory.pin_memory": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.DataLoader._get_iterator": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.DataLoader._index_sampler": "2.14.1, 2.15.0, development branch",
    "torch.utils.data.DataLoader._dataset_kind": "2.14.1, 2.15.0, development branch (instance)",
    "torch.utils.data.DataLoader._iterator": "2.14.1, 2.15.0, development branch (instance)",
    "_BaseDataLoaderIter._next_index/_next_data/_reset": "2.14.1, 2.15.0, development branch",
    "_BaseDataLoaderIter._num_yielded/_collate_fn/_auto_collation/_pin_memory/_pin_memory_device":
        "2.14.1, 2.15.0, development branch (instance)",
    "_MultiProcessingDataLoaderIter._shutdown_workers/_workers/_shutdown/_persistent_workers/_send_idx/_rcvd_idx":
        "2.14.1, 2.15.0, development branch (instance)",
}

_DatasetKind = getattr(_tud_dataloader, "_DatasetKind", None)
_ResumeIteration = getattr(_tud_worker, "_ResumeIteration", None)
_SingleIter = getattr(_tud_dataloader, "_SingleProcessDataLoaderIter", None)
_MultiIter = getattr(_tud_dataloader, "_MultiProcessingDataLoaderIter", None)

# (layout, function name, name of its dataset parameter), newest first.
_LAYOUTS = (("process_worker_loop", "_process_worker_loop", "dataset"),
            ("worker_loop", "_worker_loop", "dataset_holder"))
# The parameters our worker loop reads, besides the dataset.
REQUIRED_WORKER_PARAMS = ("dataset_kind", "index_queue", "auto_collation", "collate_fn", "init_fn", "worker_id")


def _find_worker_loop() -> tuple[str | None, Callable[..., None] | None, str | None, str]:
    """(layout, torch's loop, its dataset parameter, why none) for the installed torch."""
    if _DatasetKind is None or not callable(getattr(_DatasetKind, "create_fetcher", None)) or _MultiIter is None:
        return None, None, None, "no _DatasetKind.create_fetcher or _MultiProcessingDataLoaderIter"
    if _ResumeIteration is None:
        return None, None, None, "no _ResumeIteration"
    why = "neither _worker_loop nor _process_worker_loop"
    for layout, name, dataset_param in _LAYOUTS:
        fn = getattr(_tud_worker, name, None)
        if not callable(fn):
            continue
        if getattr(fn, "__module__", "").startswith("concurrent_dataloader"):
            why = f"{name} was replaced before concurrent_dataloader was imported"
            continue
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            why = f"{name} has no signature"
            continue
        missing = [p for p in (dataset_param, *REQUIRED_WORKER_PARAMS) if p not in params]
        if missing:
            why = f"{name} lacks the parameters {missing}"
            continue
        return layout, fn, dataset_param, ""
    return None, None, None, why


# Captured at import, before anybody can monkeypatch torch's module with ours.
WORKER_LAYOUT, TORCH_WORKER_LOOP, _DATASET_PARAM, UNKNOWN_LAYOUT_REASON = _find_worker_loop()
# num_workers=0 subclasses torch's single-process iterator (and its _next_index/_next_data).
SINGLE_PROCESS_OK = _SingleIter is not None and all(
    callable(getattr(_SingleIter, m, None)) for m in ("_next_index", "_next_data", "_reset"))


def bind_worker_args(args: tuple, kwargs: dict) -> tuple[inspect.BoundArguments, Any]:
    """torch's worker-loop arguments by name, and the dataset they carry (a bound layout only)."""
    if TORCH_WORKER_LOOP is None:
        raise RuntimeError(f"concurrent_dataloader cannot run torch {torch.__version__}'s worker loop: "
                           f"{UNKNOWN_LAYOUT_REASON}")
    bound = inspect.signature(TORCH_WORKER_LOOP).bind(*args, **kwargs)
    dataset = bound.arguments[_DATASET_PARAM]
    if _DATASET_PARAM == "dataset_holder":
        dataset = dataset[0]  # torch's loop pops it; we only peek
    return bound, dataset


def run_torch_worker_loop(bound: inspect.BoundArguments) -> None:
    assert TORCH_WORKER_LOOP is not None
    TORCH_WORKER_LOOP(*bound.args, **bound.kwargs)


def is_map_style(loader: tud.DataLoader) -> bool:
    kind = getattr(loader, "_dataset_kind", None)
    if _DatasetKind is None or kind is None:
        return not isinstance(loader.dataset, tud.IterableDataset)
    return kind == _DatasetKind.Map


def is_map_kind(dataset_kind: Any) -> bool:
    return _DatasetKind is not None and dataset_kind == _DatasetKind.Map


def is_control_message(item: Any) -> bool:
    return item is None or (_ResumeIteration is not None and isinstance(item, _ResumeIteration))


def worker_method(loader: tud.DataLoader) -> str:
    """``"multiprocessing"``, or ``"thread"`` where torch offers thread workers."""
    return getattr(loader, "worker_method", None) or "multiprocessing"


@contextlib.contextmanager
def override_map_fetcher(dataset: Any, make: Callable[[], Any]) -> Iterator[None]:
    """Inside a worker process: make torch's loop use our fetcher for ``dataset``.

    Patches a class attribute of this (worker) process only, and restores it on exit. Any other
    dataset (e.g. a nested DataLoader) still gets torch's own fetcher.
    """
    assert _DatasetKind is not None
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


# ---------------------------------------------------------------------------- accessors
def num_yielded(iterator: Any) -> int:
    """Batches this iterator has returned to the caller in the current epoch."""
    return iterator._num_yielded


def index_sampler(loader: tud.DataLoader) -> Any:
    return loader._index_sampler


def persistent_iterator(loader: tud.DataLoader) -> Any:
    return loader.__dict__.get("_iterator")


def forget_persistent_iterator(loader: tud.DataLoader) -> None:
    """Make the next ``iter(loader)`` start fresh workers (persistent_workers keeps one iterator)."""
    loader._iterator = None


def is_persistent(iterator: Any) -> bool:
    return bool(getattr(iterator, "_persistent_workers", False))


def is_shut_down(iterator: Any) -> bool:
    return bool(getattr(iterator, "_shutdown", False))


def workers(iterator: Any) -> list:
    return list(getattr(iterator, "_workers", ()))


def shutdown_iterator(iterator: Any) -> None:
    """Stop a parallel iterator's workers now (idempotent)."""
    iterator._shutdown_workers()


# ---------------------------------------------------------------------------- patches
class LoaderView:
    """The loader as one of torch's iterators should see it: the same object, except for the
    ``overrides`` (a larger ``prefetch_factor``, our worker context in ``worker_init_fn``, the
    context proxy, the resumable sampler, a wrapped dataset). Nothing on the real loader is
    mutated."""

    def __init__(self, loader: tud.DataLoader, overrides: dict[str, Any]) -> None:
        object.__setattr__(self, "_loader", loader)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name: str) -> Any:
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_loader"), name)


class _ContextProxy:
    """A multiprocessing context whose ``Process`` runs our worker loop instead of torch's."""

    def __init__(self, context: Any, worker_loop: Callable[..., None]) -> None:
        self._context = context
        self._worker_loop = worker_loop

    def Process(self, *args: Any, target: Any = None, **kwargs: Any) -> multiprocessing.process.BaseProcess:
        # Only the loop we bound: a loop with another signature keeps torch's own target
        # (correct data, without our read-ahead).
        if target is TORCH_WORKER_LOOP:
            target = self._worker_loop
        return self._context.Process(*args, target=target, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _TimedNext:
    """Splits the training loop's time into waiting for data and the rest (see EpochTimer)."""

    _timer: EpochTimer | None = None

    def __next__(self) -> Any:
        timer = self._timer
        if timer is None:
            return super().__next__()  # type: ignore[misc]
        began = timer.before_next()
        try:
            data = super().__next__()  # type: ignore[misc]
        except StopIteration:
            timer.after_next(began, False)
            raise
        timer.after_next(began, True)
        return data


class _StoppedCheck:
    """For torch's own iterators: raise instead of ending the epoch quietly when their workers were
    stopped (close()) before the sampler ran out (see NOTE [ Shutdown ] in lifecycle.py)."""

    _cdl_sampler_exhausted = False

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        self._cdl_sampler_exhausted = False
        super()._reset(loader, first_iter)  # type: ignore[misc]

    def _next_index(self) -> Any:
        try:
            return super()._next_index()  # type: ignore[misc]
        except StopIteration:
            self._cdl_sampler_exhausted = True
            raise

    def _next_data(self) -> Any:
        # Parallel iterators (processes, or threads on torch's development branch) count the
        # index batches they sent and received.
        in_flight = getattr(self, "_rcvd_idx", 0) < getattr(self, "_send_idx", 0)
        lifecycle.check_workers_not_stopped(is_shut_down(self), not self._cdl_sampler_exhausted or in_flight,
                                            num_yielded(self))
        return super()._next_data()  # type: ignore[misc]


_timed_classes: dict[type, type] = {}


def stock_iterator(view: LoaderView, timer: EpochTimer | None) -> Any:
    """torch's own iterator for ``view`` (its ``_get_iterator``), timed like ours and never ending
    an epoch quietly after close()."""
    iterator = tud.DataLoader._get_iterator(view)  # type: ignore[arg-type]
    cls = type(iterator)
    timed = _timed_classes.get(cls)
    if timed is None:
        timed = _timed_classes[cls] = type(f"Timed{cls.__name__}", (_TimedNext, _StoppedCheck, cls), {})
    iterator.__class__ = timed
    iterator._timer = timer
    return iterator


if SINGLE_PROCESS_OK:
    class ConcurrentSingleProcessIter(_TimedNext, _SingleIter):  # type: ignore[misc, valid-type]
        """num_workers=0: the loader's fetcher runs in the main process, with a batch pool."""

        def __init__(self, loader: tud.DataLoader, batches: Callable[[Callable[[], Any], bool, Callable], SamplerBatches],
                     sampler: Any = None, timer: EpochTimer | None = None) -> None:
            super().__init__(LoaderView(loader, {"_index_sampler": sampler}) if sampler is not None else loader)
            self._timer = timer
            self._batches = batches(self._next_index, self._auto_collation, self._collate_fn)

        def _reset(self, loader: Any, first_iter: bool = False) -> None:
            super()._reset(loader, first_iter)
            if hasattr(self, "_batches"):
                self._batches.reset()

        def _next_data(self) -> Any:
            data = self._batches.next()
            if self._pin_memory:
                data = _tud_utils.pin_memory.pin_memory(data, self._pin_memory_device)
            return data

        def __del__(self) -> None:
            batches = getattr(self, "_batches", None)
            if batches is not None:
                batches.reset()
else:  # pragma: no cover - a torch without it takes the fallback path
    ConcurrentSingleProcessIter = None  # type: ignore[assignment, misc]


if WORKER_LAYOUT is not None:
    class ConcurrentMultiProcessingIter(_TimedNext, _MultiIter):  # type: ignore[misc, valid-type]
        """Worker processes run our worker loop (``worker.py``) through the context proxy."""

        def __init__(self, loader: tud.DataLoader, worker_loop: Callable[..., None], worker_context: Any,
                     batch_pool: int, sampler: Any = None, timer: EpochTimer | None = None) -> None:
            self._timer = timer
            context = loader.multiprocessing_context or torch.multiprocessing
            overrides = {"_index_sampler": sampler} if sampler is not None else {}
            view = LoaderView(loader, {
                **overrides,
                # Stock torch sends each worker only prefetch_factor batches; our workers need
                # batch_pool of them to keep that many in flight.
                "prefetch_factor": max(loader.prefetch_factor or 2, batch_pool),
                "worker_init_fn": worker_context,
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

        def _next_data(self) -> Any:
            owed = not self._sampler_exhausted or self._rcvd_idx < self._send_idx
            lifecycle.check_workers_not_stopped(self._shutdown, owed, self._num_yielded)
            return super()._next_data()

        def __next__(self) -> Any:
            try:
                return super().__next__()
            except Exception as exc:
                replacement = lifecycle.after_failed_next(exc, self._workers, self._shutdown_workers)
                if replacement is not None:
                    raise replacement from exc
                raise
else:
    ConcurrentMultiProcessingIter = None  # type: ignore[assignment, misc]
