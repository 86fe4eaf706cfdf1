"""``concurrent_dataloader.DataLoader``: torch's DataLoader with concurrent fetching per worker."""

from __future__ import annotations

import warnings
import weakref
from operator import attrgetter
from typing import Any, TypeVar

import torch.utils.data
from torch.utils.data import Dataset

from .. import telemetry
from . import _torch_compat, lifecycle
from .adaptive import SharedBudget
from .batch_pool import BatchPool, SamplerBatches
from .config import FetchConfig, FetchImpl, WorkerContext
from .fetchers import SampleFetcher, make_fetcher
from .getitems import LoaderGetitems
from .resume import STATE_VERSION, ResumableIndexSampler, capture_rng, restore_rng, validate_state
from .worker import _worker_loop

__all__ = ["DataLoader"]

# As torch's: ``DataLoader[T]`` is generic in what a batch is (typing only; never checked).
_T_co = TypeVar("_T_co", covariant=True)


def _fetch_setting(name: str) -> Any:
    """A read-only loader attribute read from its ``fetch_config``, the one carrier of the settings."""
    return property(attrgetter(f"fetch_config.{name}"), doc=f"``fetch_config.{name}`` (read-only)")


class DataLoader(torch.utils.data.DataLoader[_T_co]):
    """A drop-in ``torch.utils.data.DataLoader`` whose workers fetch many samples at once.

    Every torch argument keeps its meaning. Three are added:

    num_fetch_workers
        Samples each worker process (or the main process when ``num_workers=0``) fetches
        concurrently; ``"auto"`` adapts it per worker (AIMD, see ``loader/adaptive.py``) up to
        ``max_fetch_workers``, with all workers together under ``fetch_budget`` in flight.
    fetch_impl
        ``"threaded"`` (a thread pool) or ``"asyncio"`` (an event loop, uvloop when installed).
    batch_pool
        Batches each worker keeps in flight. The loader sends each worker at least this many
        index batches ahead (``max(prefetch_factor, batch_pool)``), so it takes effect.

    Map-style datasets get the concurrency; an ``IterableDataset`` behaves exactly as in torch.

    With a torch whose worker loop this version cannot bind (see ``_torch_compat.py``), and with
    torch's thread workers (``worker_method="thread"``, where torch offers them), torch's own
    iterator runs and each batch's samples still load concurrently through the ``__getitems__``
    hook (:class:`~concurrent_dataloader.loader.getitems.LoaderGetitems`); only read-ahead
    across batches is lost, and a warning says so once per process.
    """

    def __init__(self, dataset: Dataset[_T_co], *args: Any, num_fetch_workers: int | str = 16,
                 fetch_impl: FetchImpl = "threaded", batch_pool: int = 2, max_fetch_workers: int = 64,
                 fetch_budget: int = 256, **kwargs: Any) -> None:
        config = FetchConfig(num_fetch_workers=num_fetch_workers, fetch_impl=fetch_impl, batch_pool=batch_pool,
                             max_fetch_workers=max_fetch_workers, fetch_budget=fetch_budget)
        super().__init__(dataset, *args, **kwargs)
        self.fetch_config = config
        # Shared by this loader and its num_workers=0 iterators (see NOTE [ Shutdown ] in
        # lifecycle.py: close(), or a finalizer once they are all gone).
        self._main_fetcher: SampleFetcher | None = None
        # The __getitems__ fallback's dataset wrapper (unknown torch layout, thread workers).
        self._fallback_dataset: LoaderGetitems | None = None
        # Parallel iterators still alive, so close() can stop their workers at once; otherwise
        # each iterator owns its workers (see NOTE [ Shutdown ]: del / garbage collection).
        self._live_iterators: weakref.WeakSet = weakref.WeakSet()
        # Mid-epoch resume: the sampler wrapper and iterator of the current epoch, and a state
        # waiting to be replayed by the next iterator.
        self._resume_track: tuple[weakref.ref, ResumableIndexSampler] | None = None
        self._pending_resume: dict | None = None
        # Telemetry: a shared-memory row per worker (made with the first worker iterator), one
        # row for this process, and the epoch's starting totals and wait/compute timer.
        self._worker_stats: telemetry.StatsBlock | None = None
        self._budget: SharedBudget | None = None
        self._main_stats = telemetry.StatsBlock(1)
        self._timer = telemetry.EpochTimer()
        self._epoch_start_totals = self._stats_totals()

    num_fetch_workers: int | str = _fetch_setting("num_fetch_workers")
    fetch_impl: FetchImpl = _fetch_setting("fetch_impl")
    batch_pool: int = _fetch_setting("batch_pool")

    def _get_iterator(self) -> Any:
        if not _torch_compat.is_map_style(self):
            return super()._get_iterator()
        pending, self._pending_resume = self._pending_resume, None
        if pending is not None and pending.get("pre_iterator_rng"):
            restore_rng(self, pending["pre_iterator_rng"])
        sampler = ResumableIndexSampler(_torch_compat.index_sampler(self), self, capture_rng(self))
        sampler.pending = pending
        if self.num_workers == 0 and _torch_compat.SINGLE_PROCESS_OK:
            iterator = _torch_compat.ConcurrentSingleProcessIter(self, self._sampler_batches, sampler, self._timer)
        elif self.num_workers == 0:
            _warn_fallback("its single-process iterator changed")
            iterator = self._fallback_iterator(sampler)
        else:
            self.check_worker_number_rationality()
            self._ensure_worker_stats()
            method = _torch_compat.worker_method(self)
            if method != "multiprocessing" or _torch_compat.WORKER_LAYOUT is None:
                _warn_fallback(f"worker_method={method!r}" if method != "multiprocessing"
                               else _torch_compat.UNKNOWN_LAYOUT_REASON)
                iterator = self._fallback_iterator(sampler)
            else:
                iterator = _torch_compat.ConcurrentMultiProcessingIter(
                    self, _worker_loop, WorkerContext(self.fetch_config, self._worker_stats, self._budget,
                                                      self.worker_init_fn),
                    self.batch_pool, sampler, self._timer)
            self._live_iterators.add(iterator)
        self._resume_track = (weakref.ref(iterator), sampler)
        return iterator

    def _sampler_batches(self, next_index: Any, auto_collation: bool, collate_fn: Any) -> SamplerBatches:
        """num_workers=0: an iterator's batches, from its sampler through this loader's fetcher."""
        if self._main_fetcher is None:
            # This loader's row travels with its fetcher (NOTE [ Stats sink ] in telemetry.py).
            self._main_fetcher = make_fetcher(self.dataset, self.fetch_config, self._main_stats.row(0))
        return SamplerBatches(BatchPool(self._main_fetcher, self.batch_pool, auto_collation, collate_fn), next_index)

    def _ensure_worker_stats(self) -> None:
        """A shared-memory stats row per worker (and the adaptive budget), made with the first
        parallel iterator and again when num_workers changes."""
        if self._worker_stats is None or self._worker_stats.rows != self.num_workers:
            context = self.multiprocessing_context or torch.multiprocessing
            self._worker_stats = telemetry.StatsBlock(self.num_workers, context)
            self._epoch_start_totals = self._stats_totals()
            if self.fetch_config.adaptive:
                self._budget = SharedBudget(self.fetch_config.fetch_budget, self.num_workers, context)

    def _fallback_iterator(self, sampler: Any) -> Any:
        """torch's own iterator over a wrapper whose ``__getitems__`` loads each batch concurrently."""
        wrapper = self._fallback_dataset
        stats = self._worker_stats if self.num_workers > 0 else self._main_stats
        if wrapper is None or wrapper._cdl_context.stats_block is not stats:
            if wrapper is not None:
                wrapper.close_getitems()
            context = WorkerContext(self.fetch_config, stats, self._budget if self.num_workers > 0 else None)
            wrapper = self._fallback_dataset = LoaderGetitems(self.dataset, context)
        dataset = self.dataset if callable(getattr(self.dataset, "__getitems__", None)) else wrapper
        view = _torch_compat.LoaderView(self, {"_index_sampler": sampler, "dataset": dataset})
        return _torch_compat.stock_iterator(view, self._timer)

    def __iter__(self) -> Any:
        if self.persistent_workers:
            # Its workers were stopped (one died, or a timeout): resuming it would wait forever.
            lifecycle.replace_broken_persistent_iterator(self)
        if _torch_compat.is_map_style(self):
            # NOTE: snapshot *before* torch primes the next epoch's prefetch, so nothing of this
            # epoch is counted in the previous one.
            self._epoch_start_totals = self._stats_totals()
            self._timer.reset()
        return super().__iter__()

    def _stats_totals(self) -> list[float]:
        totals = self._main_stats.totals()
        if self._worker_stats is not None:
            totals = [a + b for a, b in zip(totals, self._worker_stats.totals())]
        return totals

    def stats(self) -> dict[str, Any]:
        """This epoch so far (since the last ``iter(loader)``), across all workers.

        Samples/s, bytes/s, requests, retries, hedges, fetch-latency percentiles (p50/p95/p99,
        from a histogram), and the training loop's time waiting for data against computing.
        """
        out = telemetry.summarize(self._epoch_start_totals, self._stats_totals(),
                                  self._timer.as_dict()["epoch_seconds"])
        out.update(self._timer.as_dict())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands, as a small JSON-able dict (no pickled objects).

        After ``load_state_dict`` in a fresh process, the next ``iter(loader)`` continues with
        exactly the batches an uninterrupted run would have produced next (for map-style datasets).
        """
        if not _torch_compat.is_map_style(self):
            raise TypeError("state_dict() needs a map-style dataset; an IterableDataset owns its own position")
        track = self._resume_track
        iterator = track[0]() if track is not None else None
        sampler = track[1] if track is not None else None
        state: dict[str, Any] = {"version": STATE_VERSION, "batches_yielded": 0, "rng": None,
                                 "pre_iterator_rng": None,
                                 "sampler_epoch": getattr(self.sampler, "epoch", None)}
        started = iterator is not None and sampler is not None and sampler.epoch_rng is not None
        yielded = sampler.skipped + _torch_compat.num_yielded(iterator) if started else 0
        if started and yielded < len(self):  # mid-epoch (possibly before its first batch)
            state.update(batches_yielded=yielded, rng=sampler.epoch_rng,
                         pre_iterator_rng=sampler.pre_iterator_rng if sampler.epochs_started == 1 else None)
        elif iterator is not None and not started:  # iterator made, sampler not drawn yet
            state["pre_iterator_rng"] = sampler.pre_iterator_rng
        elif self.persistent_workers and self.num_workers > 0 and iterator is not None:
            # The next epoch reuses the workers: its sampler draws from the RNG as it is now.
            state["rng"] = capture_rng(self)
        else:  # the next epoch starts a new iterator, which first draws the workers' base seed
            state["pre_iterator_rng"] = capture_rng(self)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Arrange for the next ``iter(loader)`` to continue from ``state`` (see ``state_dict``)."""
        state = validate_state(state, len(self) if _torch_compat.is_map_style(self) else None)
        epoch = state.get("sampler_epoch")
        if epoch is not None and callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)
        self.close()  # persistent workers must start over to replay the state
        self._pending_resume = dict(state)

    def close(self) -> None:
        """Stop worker processes (persistent ones included) and main-process fetch threads."""
        for iterator in list(self.__dict__.get("_live_iterators", ())):
            _torch_compat.shutdown_iterator(iterator)
        _torch_compat.forget_persistent_iterator(self)
        fetcher = self.__dict__.get("_main_fetcher")
        if fetcher is not None:
            fetcher.close()
            self._main_fetcher = None
        wrapper = self.__dict__.get("_fallback_dataset")
        if wrapper is not None:
            wrapper.close_getitems()  # this process's fetcher only; workers close their own

    def __enter__(self) -> "DataLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_fallback_warned: set[str] = set()


def _warn_fallback(reason: str) -> None:
    """Once per process and reason: what the ``__getitems__`` fallback loses."""
    if reason in _fallback_warned:
        return
    _fallback_warned.add(reason)
    warnings.warn(
        f"concurrent_dataloader cannot run its own worker loop with torch {torch.__version__} ({reason}); "
        f"batches load through torch's own iterator, with each batch's samples fetched concurrently via "
        f"__getitems__. Lost: read-ahead across batches (batch_pool), so a worker finishes one batch "
        f"before it starts the next.", RuntimeWarning, stacklevel=4)
