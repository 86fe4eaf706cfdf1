"""Per-process engines that load the samples of whole batches concurrently.

``make_fetcher(dataset, config)`` returns a :class:`ThreadedFetcher` or an
:class:`AsyncioFetcher`. ``submit(indices)`` starts every sample of a batch and returns a
:class:`BatchHandle`; ``handle.result()`` waits and returns the samples in index order.

An engine owns threads (and, for asyncio, an event loop), so it is created inside the process
that uses it and never pickled (NOTE [ Fork safety ] in ``concurrent_dataloader/__init__.py``).

Types: ``dataset`` is any map-style dataset; where a step needs the fetch/decode split its
argument is a :class:`~concurrent_dataloader.loader.protocol.SupportsFetchDecode` (checked at run
time by ``is_fetch_decode``, which also refuses a subclass that overrides ``__getitem__``). An
index is whatever the sampler yields (usually an ``int``), hence ``Any``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import operator
import os
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterator, Sequence

from .. import telemetry
from ..errors import annotate_sample_error
from .adaptive import AIMDController, AsyncLimiter, Limiter, SharedBudget
from .config import FetchConfig
from .protocol import ConcurrentDataset, SupportsFetchDecode, describe_index, is_fetch_decode
from .wrappers import batched_getitems, resolve as _resolve

__all__ = ["BatchHandle", "SampleFetcher", "ThreadedFetcher", "AsyncioFetcher", "make_fetcher", "new_event_loop"]



def decode_concurrency() -> int:
    """How many decodes may run at once in this process.

    Decoding is CPU-bound: more concurrent decodes than this process's share of the cores only
    adds GIL and cache contention (measured: 32 decoding threads per worker on 2 cores made a
    local-disk epoch 15-30% slower than torch). Fetches stay fully concurrent; only decode is gated.
    """
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    processes = info.num_workers if info is not None else 1
    return max(1, min(4, (os.cpu_count() or 1) // processes))
_uvloop_warned = False


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed; plain asyncio with one warning per process otherwise."""
    global _uvloop_warned
    try:
        import uvloop
    except ImportError:
        if not _uvloop_warned:
            _uvloop_warned = True
            warnings.warn("uvloop is not installed; fetch_impl='asyncio' falls back to the stdlib event loop",
                          RuntimeWarning, stacklevel=3)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class BatchHandle:
    """The in-flight samples of one batch."""

    __slots__ = ("indices", "_futures", "_batch_future", "_head", "_watch", "_finished")

    def __init__(self, indices: Sequence[Any], futures: list[cf.Future] | None = None,
                 batch_future: cf.Future | None = None, head: list[cf.Future] | None = None) -> None:
        self.indices = indices
        self._futures = futures
        self._batch_future = batch_future
        self._head = head or []  # samples loaded before the rest of the batch (the start-up probe)
        self._watch: list[cf.Future] | None = None
        self._finished = 0  # NOTE: _watch[:_finished] are done; a poll only looks beyond them

    def result(self, timeout: float | None = None) -> Any:
        """The samples in index order; a dataset's own ``__getitems__`` result as it returned it
        (torch hands that object to ``collate_fn`` unchanged: it need not be a list)."""
        head = [f.result(timeout) for f in self._head]
        if self._batch_future is not None:
            rest = self._batch_future.result(timeout)
            return head + rest if head else rest
        return head + [f.result(timeout) for f in self._futures or []]

    def _all(self) -> list[cf.Future]:
        if self._watch is None:
            rest = [self._batch_future] if self._batch_future is not None else list(self._futures or [])
            self._watch = self._head + rest
        return self._watch

    def _advance(self) -> cf.Future | None:
        """The first future not yet done, or None. Amortized O(1): the cursor only moves on."""
        watch = self._all()
        while self._finished < len(watch):
            f = watch[self._finished]
            if not f.done():
                return f
            self._finished += 1
        return None

    def done(self) -> bool:
        return self._advance() is None

    def wait(self, timeout: float | None) -> bool:
        """Wait until every sample finished (or failed); False on timeout. Never raises.

        NOTE: a worker polls this every few ms while its head batch loads; waiting on all N
        futures each time would make a batch cost O(N x polls). We wait on one future at a time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            f = self._advance()
            if f is None:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            cf.wait([f], timeout=remaining)

    def cancel(self) -> None:
        for f in self._all():
            f.cancel()


class _DeferredBatch(BatchHandle):
    """A batch loaded one sample at a time by whichever thread first waits for it.

    NOTE: no future per sample (a ``cf.Future`` costs a condition variable): samples go straight
    into a list and loading stops at the first error, as in torch's fetcher. The error raised is
    the first by position, as on the concurrent paths.
    """

    __slots__ = ("_load", "_cancelled", "_stats", "_results", "_error")

    def __init__(self, indices: Sequence[Any], load: Callable[[Any], Any], head: list[cf.Future] | None,
                 stats: telemetry.StatsRow | None = None) -> None:
        super().__init__(indices, futures=None, head=head)
        self._load: Callable[[Any], Any] | None = load
        self._cancelled = False
        self._stats = stats  # the caller's thread counts into the loader's row (NOTE [ Stats sink ])
        self._results: list[Any] = []
        self._error: BaseException | None = None

    def _run(self) -> None:
        load, self._load = self._load, None
        if load is None:
            return
        results = self._results
        with telemetry.sink(self._stats):
            for i in self.indices[len(self._head):]:
                if self._cancelled:
                    return
                try:
                    results.append(load(i))
                except Exception as exc:  # delivered by result(), like a pool task's error
                    self._error = exc
                    return

    def result(self, timeout: float | None = None) -> list[Any]:
        self._run()
        head = [f.result(timeout) for f in self._head]
        if self._cancelled:
            raise cf.CancelledError("batch cancelled")
        if self._error is not None:
            raise self._error
        return head + self._results

    def wait(self, timeout: float | None) -> bool:
        self._run()
        return super().wait(timeout)

    def done(self) -> bool:
        return self._load is None and super().done()

    def cancel(self) -> None:
        self._cancelled = True
        super().cancel()


class _DrainedBatch(BatchHandle):
    """A batch loaded by at most ``k`` pool tasks, each taking the next position until none is left.

    NOTE (per-sample cost): one pool task per *slot*, not per sample. A sample then costs no
    future, no queue hand-off and no thread wake-up of its own, so a large batch of cheap samples
    is not dominated by hand-offs, while up to ``k`` samples are still in flight. Positions are
    taken in order (one shared iterator; ``next`` on it is atomic under the GIL), as the per-sample
    FIFO did. After an error no new sample starts; the first error by position is raised.
    ``work(handle, pos, index)`` loads one sample and calls ``_settle`` for it, now or later
    (then it calls ``_hold`` first and ``_release`` after settling).
    """

    __slots__ = ("_rest", "_results", "_errors", "_positions", "_lock", "_outstanding", "_settled", "_stop",
                 "_tasks", "_stopping")

    def __init__(self, indices: Sequence[Any], head: list[cf.Future], rest: Sequence[Any], k: int,
                 pool: cf.ThreadPoolExecutor, work: Callable[["_DrainedBatch", int, Any], None],
                 stopping: threading.Event) -> None:
        super().__init__(indices, batch_future=cf.Future(), head=head)
        self._stopping = stopping  # the fetcher is closing: start no new sample
        self._rest = rest
        self._results: list[Any] = [None] * len(rest)
        self._errors: dict[int, BaseException] = {}
        self._positions = iter(range(len(rest)))
        self._lock = threading.Lock()
        self._outstanding = k
        self._settled = 0
        self._stop = False
        self._tasks: list[cf.Future] = []
        for _ in range(k):
            try:
                task = pool.submit(self._drain, work)
            except RuntimeError:  # the pool is shut down: the fetcher was closed
                self._release()
                continue
            # a task cancelled before it ran (the fetcher closed) still counts as finished
            task.add_done_callback(lambda t: self._release() if t.cancelled() else None)
            self._tasks.append(task)

    def _drain(self, work: Callable[["_DrainedBatch", int, Any], None]) -> None:
        try:
            for pos in self._positions:
                if self._stop or self._stopping.is_set():
                    break
                work(self, pos, self._rest[pos])
        finally:
            self._release()

    def _settle(self, pos: int, value: Any = None, exc: BaseException | None = None) -> None:
        if exc is not None:
            self._errors[pos] = exc
            self._stop = True
        else:
            self._results[pos] = value
        with self._lock:
            self._settled += 1

    def _hold(self) -> None:
        with self._lock:
            self._outstanding += 1

    def _release(self) -> None:
        with self._lock:
            self._outstanding -= 1
            last = self._outstanding == 0
        if not last:
            return
        done = self._batch_future
        assert done is not None
        if not done.set_running_or_notify_cancel():
            return  # cancelled: nobody wants the samples
        if self._errors:
            done.set_exception(self._errors[min(self._errors)])
        elif self._settled < len(self._rest):
            done.set_exception(cf.CancelledError("fetcher closed before the batch was loaded"))
        else:
            done.set_result(self._results)

    def cancel(self) -> None:
        self._stop = True
        for task in self._tasks:
            task.cancel()
        super().cancel()


class SampleFetcher:
    """Common part of both engines: how one sample is loaded, and error context."""

    def __init__(self, dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> None:
        self.dataset = dataset
        self.config = config
        self.stats = stats if stats is not None else telemetry.current_row()
        self.controller: AIMDController | None = None
        if config.adaptive:
            row = self.stats
            self.controller = AIMDController(config.concurrency, budget=budget, slot=slot,
                                             throttle_count=(lambda: row.value("throttled")) if row else None)
        self._closed = False
        # Set first thing by close() or the finalizer (NOTE [ Shutdown ] in lifecycle.py): batches
        # being drained start no new sample (see _DrainedBatch), so closing never waits for a batch.
        self._stopping = threading.Event()
        self._fd_cache: dict[int, tuple[Any, bool]] = {}

    @property
    def closed(self) -> bool:
        return self._closed

    def _threads(self, n: int, name: str) -> cf.ThreadPoolExecutor:
        """A pool whose threads serve this fetcher only, so they count into its row (NOTE [ Stats sink ])."""
        return cf.ThreadPoolExecutor(n, thread_name_prefix=name, initializer=telemetry.bind_thread,
                                     initargs=(self.stats,))

    def current_limit(self) -> int:
        return self.controller.limit if self.controller is not None else self.config.concurrency

    @contextlib.contextmanager
    def _measured(self) -> Iterator[float]:
        """Times one fetch and reports its latency and outcome to the adaptive controller."""
        began = time.perf_counter()
        try:
            yield began
        except Exception:
            if self.controller is not None:
                self.controller.on_complete(time.perf_counter() - began, False)
            raise
        if self.controller is not None:
            self.controller.on_complete(time.perf_counter() - began, True)

    # Inline mode: a batch is loaded in the calling thread, as torch does, when concurrency cannot
    # help and thread hand-offs (~0.1-0.2 ms of CPU per sample) would only add cost:
    # * a trivial sample: loading one (fetch + decode, or a plain __getitem__) costs less than a
    #   hand-off (TRIVIAL_ENTER); large batches of cheap samples (embeddings, tabular rows) then
    #   cost little more than in torch;
    # * fetching costs far less than decoding and this process has one core's share: the CPU is
    #   the bottleneck (measured on local disk).
    # A rising cost switches concurrency back on (hysteresis: *_EXIT > *_ENTER).
    # Latencies measured under full concurrency are inflated by queueing (an aiofiles read waits
    # ~4 ms behind 31 others), so the first batch starts with a probe: PROBE_SAMPLES samples
    # loaded one at a time, the first one discarded (cold connections, lazy imports), the
    # cheapest warm one deciding the mode. A fetch/decode dataset with its own async fetch is
    # probed through the engine; a plain __getitem__ (or a blocking fetch_raw) is the same call on
    # every path, so it is probed in the calling thread, without a hand-off inflating its cost.
    INLINE_ENTER, INLINE_EXIT, INLINE_MIN_SAMPLES, PROBE_SAMPLES = 0.2, 0.4, 32, 2
    # Cheap samples are probed a few more times (up to PROBE_MAX, while the cheapest warm one
    # cost under PROBE_MORE_BELOW) and the cheapest counts: on a busy machine one measurement of
    # a few microseconds can be inflated many times by preemption.
    PROBE_MAX, PROBE_MORE_BELOW = 8, 1e-3
    TRIVIAL_ENTER, TRIVIAL_EXIT = 50e-6, 150e-6
    # A fetch thread decodes a sample itself when decoding costs less than handing it over.
    DECODE_HERE_BELOW = 50e-6

    _fetch_ewma: float | None = None
    _decode_ewma: float | None = None
    _observed = 0
    _inline = False
    _probed = False
    _first_index: Any = 0

    def _note(self, fetch_s: float | None = None, decode_s: float | None = None) -> None:
        # NOTE: updated from several threads without a lock; a lost update only nudges an average.
        # One sample moves an average by at most 4x its value, so a single stall (a preempted
        # read) does not flip the mode; a lasting change still wins within a few samples.
        if fetch_s is not None:
            f = self._fetch_ewma
            self._fetch_ewma = fetch_s if f is None else 0.9 * f + 0.1 * min(fetch_s, 4 * f)
            self._observed += 1
        if decode_s is not None:
            d = self._decode_ewma
            self._decode_ewma = decode_s if d is None else 0.9 * d + 0.1 * min(decode_s, 4 * d)

    def _uses_fetch_decode(self, ds: Any) -> bool:
        """``is_fetch_decode(ds)``, cached per dataset object (it walks the class hierarchy)."""
        hit = self._fd_cache.get(id(ds))
        if hit is None or hit[0] is not ds:
            hit = self._fd_cache[id(ds)] = (ds, is_fetch_decode(ds))
        return hit[1]

    def _fetch_decode_first(self) -> bool:
        return self._uses_fetch_decode(_resolve(self.dataset, self._first_index)[0])

    def _may_inline(self) -> bool:
        return self.controller is None

    def _should_inline(self) -> bool:
        f, d = self._fetch_ewma, self._decode_ewma
        if f is None or self._observed < self.INLINE_MIN_SAMPLES or not self._may_inline():
            return False
        fetch_decode = self._fetch_decode_first()
        if fetch_decode and d is None:
            return False
        cost = f + (d or 0.0)
        trivial = cost < (self.TRIVIAL_EXIT if self._inline else self.TRIVIAL_ENTER)
        cpu_bound = (fetch_decode and self._decode_slots == 1
                     and f < (self.INLINE_EXIT if self._inline else self.INLINE_ENTER) * (d or 0.0))
        self._inline = trivial or cpu_bound
        return self._inline

    def _submit_one(self, index: Any) -> cf.Future:
        raise NotImplementedError

    def _sync_fetch_is_the_same(self, ds: Any) -> bool:
        """Whether this engine fetches ``ds`` with its blocking ``fetch_raw``, timed without a hand-off."""
        return False

    def _load_here(self, index: Any) -> cf.Future:
        """Load one sample in the calling thread; its outcome as a finished future."""
        f: cf.Future = cf.Future()
        f.set_running_or_notify_cancel()
        with telemetry.sink(self.stats):
            try:
                f.set_result(self._load_sync(index))
            except Exception as exc:
                f.set_exception(exc)
        return f

    def _probe(self, indices: Sequence[Any]) -> list[cf.Future]:
        """Load the batch's first samples alone (nothing else in flight) and seed the averages."""
        self._probed = True
        if not indices:
            return []
        self._first_index = indices[0]
        if not self._may_inline():
            return []
        ds = _resolve(self.dataset, indices[0])[0]
        fetch_decode = self._uses_fetch_decode(ds)
        through_engine = fetch_decode and not self._sync_fetch_is_the_same(ds)
        head: list[cf.Future] = []
        best: tuple[float, float | None] | None = None
        for n, i in enumerate(indices[: self.PROBE_MAX]):
            if n >= self.PROBE_SAMPLES and (best is None or best[0] + (best[1] or 0.0) >= self.PROBE_MORE_BELOW):
                break
            self._fetch_ewma = self._decode_ewma = None  # each probe measured alone
            if through_engine:
                f = self._submit_one(i)
                cf.wait([f])
            else:
                f = self._load_here(i)
            head.append(f)
            fetched, decoded = self._fetch_ewma, self._decode_ewma
            if n == 0 or fetched is None or (fetch_decode and decoded is None):
                continue  # the first (cold) probe, or a failed one, does not count
            if best is None or fetched + (decoded or 0.0) < best[0] + (best[1] or 0.0):
                best = (fetched, decoded)
        self._fetch_ewma, self._decode_ewma = best if best is not None else (None, None)
        if best is not None:
            self._observed = max(self._observed, self.INLINE_MIN_SAMPLES)
        return head

    def _inline_batch(self, indices: Sequence[Any], head: list[cf.Future] | None = None) -> BatchHandle:
        """``indices`` (after the already loaded ``head``), loaded in the caller's thread when asked for.

        NOTE: loading is deferred to ``result()``/``wait()``, so a worker in inline mode loads
        its batches on demand and in order, as torch does, instead of loading ``batch_pool``
        batches ahead before handing back the first.
        """
        return _DeferredBatch(indices, self._load_sync, head, self.stats)

    def _decode(self, ds: SupportsFetchDecode, i: Any, raw: Any) -> Any:
        began = time.perf_counter()
        sample = ds.decode(i, raw)
        self._note(decode_s=time.perf_counter() - began)
        return sample

    def _record(self, began: float, raw: Any) -> None:
        elapsed = time.perf_counter() - began
        self._note(fetch_s=elapsed)
        stats = self.stats
        if stats is not None:
            stats.observe(elapsed)
            if isinstance(raw, (bytes, bytearray, memoryview)):
                stats.add("bytes", len(raw))

    def _record_sample(self, ok: bool) -> None:
        if self.stats is not None:
            self.stats.add("samples" if ok else "fetch_errors")

    def _fetch_step(self, ds: SupportsFetchDecode, i: Any, index: Any) -> Any:
        try:
            if self.controller is None:  # the per-sample hot path of cheap samples: no context managers
                began = time.perf_counter()
                raw = ds.fetch_raw(i)
            else:
                with self._gate, self._measured() as began:
                    raw = ds.fetch_raw(i)
        except Exception as exc:
            self._record_sample(False)
            raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record(began, raw)
        return raw

    def _decode_step(self, ds: SupportsFetchDecode, i: Any, index: Any, raw: Any) -> Any:
        try:
            sample = self._decode(ds, i, raw)
        except Exception as exc:
            self._record_sample(False)
            raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record_sample(True)
        return sample

    def _work_sync(self, batch: _DrainedBatch, pos: int, index: Any) -> None:
        try:
            batch._settle(pos, self._load_sync(index))
        except Exception as exc:
            batch._settle(pos, exc=exc)

    def _work(self, batch: _DrainedBatch, pos: int, index: Any) -> None:
        """In a fetch thread: fetch one sample, and hand its decode to the decode pool (``_cpu_pool``)."""
        ds, i = _resolve(self.dataset, index)
        if not self._uses_fetch_decode(ds):
            return self._work_sync(batch, pos, index)
        try:
            raw = self._fetch_step(ds, i, index)
        except Exception as exc:
            return batch._settle(pos, exc=exc)
        d = self._decode_ewma
        if d is not None and d < self.DECODE_HERE_BELOW:
            # A decode cheaper than handing it over: do it here (no CPU worth gating either).
            try:
                return batch._settle(pos, self._decode_step(ds, i, index, raw))
            except Exception as exc:
                return batch._settle(pos, exc=exc)
        batch._hold()
        try:
            self._cpu_pool.submit(self._decode_settle, batch, pos, ds, i, index, raw).add_done_callback(
                lambda d: (batch._settle(pos, exc=cf.CancelledError("fetcher closed")), batch._release())
                if d.cancelled() else None)
        except RuntimeError as exc:  # the pool is shut down: the fetcher was closed
            batch._settle(pos, exc=cf.CancelledError(f"fetcher closed: {exc}"))
            batch._release()

    def _decode_settle(self, batch: _DrainedBatch, pos: int, ds: SupportsFetchDecode, i: Any, index: Any,
                       raw: Any) -> None:
        try:
            batch._settle(pos, self._decode_step(ds, i, index, raw))
        except Exception as exc:
            batch._settle(pos, exc=exc)
        finally:
            batch._release()

    def _drained(self, indices: Sequence[Any], head: list[cf.Future], pool: cf.ThreadPoolExecutor,
                 work: Callable[[_DrainedBatch, int, Any], None]) -> BatchHandle:
        rest = indices[len(head):]
        return _DrainedBatch(indices, head, rest, min(len(rest), self.config.concurrency), pool, work,
                             self._stopping)

    def _load_sync(self, index: Any) -> Any:
        ds, i = _resolve(self.dataset, index)
        if self._uses_fetch_decode(ds):
            raw = self._fetch_step(ds, i, index)
            d = self._decode_ewma
            if d is not None and d < self.DECODE_HERE_BELOW:  # no CPU worth gating
                return self._decode_step(ds, i, index, raw)
            with self._decode_gate:
                return self._decode_step(ds, i, index, raw)
        if self.controller is not None:
            try:
                with self._gate, self._measured() as began:
                    sample = ds[i]
            except Exception as exc:
                self._record_sample(False)
                raise annotate_sample_error(exc, index, describe_index(ds, i))
        else:  # the per-sample hot path of cheap samples: no context managers
            began = time.perf_counter()
            try:
                sample = ds[i]
            except Exception as exc:
                self._record_sample(False)
                raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record(began, None)
        self._record_sample(True)
        return sample

    def _batched_getitems(self) -> Callable[[list], list] | None:
        """A dataset's own ``__getitems__`` (a batched read API, or a user's override) is honoured
        as one task per batch; see :func:`~concurrent_dataloader.loader.wrappers.batched_getitems`."""
        return batched_getitems(self.dataset)

    _gate: Any = contextlib.nullcontext()
    _decode_gate: Any = contextlib.nullcontext()
    _decode_slots = 1

    def submit(self, indices: Sequence[Any], batched: bool = True) -> BatchHandle:
        """Start loading ``indices``. ``batched=False``: one sample without auto-collation, which
        torch loads with ``dataset[index]``, never ``__getitems__``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "SampleFetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release_dataset(dataset: Any) -> None:
    close = getattr(dataset, "close_fetch_resources", None)
    if callable(close):
        close()


def _shutdown_pools(pools: list[cf.ThreadPoolExecutor], dataset: Any, stopping: threading.Event) -> None:
    stopping.set()
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    _release_dataset(dataset)


class ThreadedFetcher(SampleFetcher):
    """Fetch threads only fetch; decodes queue for a pool sized to the process's core share.

    NOTE: a fetch thread hands its bytes over and goes on to the next fetch instead of
    waiting for a decode slot: 32 threads queueing on a semaphore cost a GIL hand-off per
    sample, and the decode pool's FIFO keeps decodes in the order the fetches finished.
    """

    def __init__(self, dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> None:
        super().__init__(dataset, config, stats, budget, slot)
        self._pool = self._threads(config.concurrency, "cdl-fetch")
        self._decode_slots = decode_concurrency()
        self._cpu_pool = self._threads(self._decode_slots, "cdl-decode")
        # the inline path (and plain datasets' __getitem__) decode in their own thread: gated too
        self._decode_gate = threading.BoundedSemaphore(self._decode_slots)
        if self.controller is not None:
            self._gate = Limiter(self.current_limit)
        # See NOTE [ Shutdown ] in lifecycle.py (fetcher close): the finalizer stops the pools
        # even if close() is never called; it must not reference self.
        self._finalizer = weakref.finalize(self, _shutdown_pools, [self._pool, self._cpu_pool], dataset,
                                          self._stopping)

    def submit(self, indices: Sequence[Any], batched: bool = True) -> BatchHandle:
        if self._closed:
            raise RuntimeError("fetcher is closed")
        getitems = self._batched_getitems() if batched else None
        if getitems is not None:
            return BatchHandle(indices, batch_future=self._pool.submit(getitems, list(indices)))
        head = [] if self._probed else self._probe(indices)
        rest = indices[len(head):]
        if self._should_inline():
            return self._inline_batch(indices, head)
        if not rest:
            return BatchHandle(indices, [], head=head)
        return self._drained(indices, head, self._pool, self._work)

    def _submit_one(self, index: Any) -> cf.Future:
        ds, i = _resolve(self.dataset, index)
        if not self._uses_fetch_decode(ds):
            return self._pool.submit(self._load_sync, index)
        out: cf.Future = cf.Future()
        fetched = self._pool.submit(self._fetch_step, ds, i, index)
        out.add_done_callback(lambda o: fetched.cancel() if o.cancelled() else None)
        fetched.add_done_callback(lambda f: self._after_fetch(f, out, ds, i, index))
        return out

    def _after_fetch(self, fetched: cf.Future, out: cf.Future, ds: SupportsFetchDecode, i: Any,
                     index: Any) -> None:
        # NOTE: the one place that moves ``out`` on from PENDING, exactly once; runs in the fetch
        # thread (or wherever ``fetched`` was cancelled).
        if fetched.cancelled():
            out.cancel()
        if not out.set_running_or_notify_cancel():
            return
        exc = fetched.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        try:
            decoded = self._cpu_pool.submit(self._decode_into, out, ds, i, index, fetched.result())
        except RuntimeError as exc:  # the pool is shut down: the fetcher was closed
            out.set_exception(cf.CancelledError(f"fetcher closed: {exc}"))
            return
        decoded.add_done_callback(lambda d: out.set_exception(cf.CancelledError("fetcher closed"))
                                  if d.cancelled() else None)

    def _decode_into(self, out: cf.Future, ds: SupportsFetchDecode, i: Any, index: Any, raw: Any) -> None:
        try:
            out.set_result(self._decode_step(ds, i, index, raw))
        except Exception as exc:
            out.set_exception(exc)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._finalizer()
            if self.controller is not None:
                self.controller.close()


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Thread target: run the loop until stopped, then close it *on this thread*."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(_cancel_other_tasks())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, pools: list, dataset: Any,
               stopping: threading.Event) -> None:
    stopping.set()
    # See NOTE [ Shutdown ] in lifecycle.py (fetcher close). This may run on any thread, including
    # the loop's own thread when the last reference to the fetcher dies inside a callback; then
    # it must not block or join.
    on_loop_thread = threading.current_thread() is thread
    if thread.is_alive() and not loop.is_closed():
        if not on_loop_thread:
            try:
                asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout=5)
                aclose = getattr(dataset, "aclose_fetch_resources", None)
                if callable(aclose):  # async clients are bound to this loop: close them on it
                    asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=5)
            except Exception:
                pass
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # already closed
            pass
        if not on_loop_thread:
            thread.join(timeout=5)
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    _release_dataset(dataset)


class AsyncioFetcher(SampleFetcher):
    """Runs an event loop in one thread of this process; decode runs in a small thread pool."""

    def __init__(self, dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> None:
        super().__init__(dataset, config, stats, budget, slot)
        self._loop = new_event_loop()
        # Blocking fallbacks (plain __getitem__, default fetch_raw_async) run here: sized to the
        # fetch concurrency, since the stdlib default executor would silently cap it.
        self._io_pool = self._threads(config.concurrency, "cdl-aio-io")
        self._decode_slots = decode_concurrency()
        self._cpu_pool = self._threads(self._decode_slots, "cdl-decode")
        self._loop.set_default_executor(self._io_pool)
        self._limiter = AsyncLimiter(self.current_limit)  # only touched on the loop thread
        self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name="cdl-event-loop", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_loop, self._loop, self._thread,
                                          [self._io_pool, self._cpu_pool], dataset, self._stopping)

    async def _load(self, index: Any) -> Any:
        telemetry.bind_thread(self.stats)  # this task's context only (NOTE [ Stats sink ])
        ds, i = _resolve(self.dataset, index)
        loop = asyncio.get_running_loop()
        try:
            if not self._uses_fetch_decode(ds):
                async with self._limiter:
                    with self._measured() as began:
                        sample = await loop.run_in_executor(self._io_pool, operator.getitem, ds, i)
                self._record(began, None)
            else:
                async with self._limiter:
                    with self._measured() as began:
                        raw = await ds.fetch_raw_async(i)
                self._record(began, raw)
                # NOTE: decode is CPU work and never runs on this (the event-loop) thread.
                sample = await loop.run_in_executor(self._cpu_pool, self._decode, ds, i, raw)
        except Exception as exc:
            self._record_sample(False)
            raise annotate_sample_error(exc, index, describe_index(ds, i))
        self._record_sample(True)
        return sample

    async def _load_batch(self, indices: Sequence[Any]) -> list[Any]:
        telemetry.bind_thread(self.stats)  # inherited by the gathered tasks (NOTE [ Stats sink ])
        results = await asyncio.gather(*(self._load(i) for i in indices), return_exceptions=True)
        for r in results:  # the first failure *by position*, so errors are deterministic
            if isinstance(r, BaseException):
                raise r
        return results

    async def _getitems(self, getitems: Callable[[list], list], indices: Sequence[Any]) -> list[Any]:
        telemetry.bind_thread(self.stats)
        async with self._limiter:
            return await asyncio.get_running_loop().run_in_executor(self._io_pool, getitems, list(indices))

    def submit(self, indices: Sequence[Any], batched: bool = True) -> BatchHandle:
        if self._closed:
            raise RuntimeError("fetcher is closed")
        getitems = self._batched_getitems() if batched else None
        if getitems is not None:
            return BatchHandle(indices, batch_future=asyncio.run_coroutine_threadsafe(
                self._getitems(getitems, indices), self._loop))
        head = [] if self._probed else self._probe(indices)
        rest = indices[len(head):]
        if self._should_inline():
            return self._inline_batch(indices, head)  # the sync fetch path, in the calling thread
        if not rest:
            return BatchHandle(indices, [], head=head)
        ds = _resolve(self.dataset, rest[0])[0]
        if self.controller is None and (not self._uses_fetch_decode(ds) or self._sync_fetch_is_the_same(ds)):
            # A plain __getitem__, or the default fetch_raw_async (fetch_raw in an executor), is
            # blocking: it runs in the I/O threads either way. Without the loop in between, a
            # sample costs no task and no hand-off (see _DrainedBatch); decode stays in _cpu_pool.
            return self._drained(indices, head, self._io_pool, self._work)
        return BatchHandle(indices, batch_future=asyncio.run_coroutine_threadsafe(self._load_batch(rest), self._loop),
                           head=head)

    def _submit_one(self, index: Any) -> cf.Future:
        return asyncio.run_coroutine_threadsafe(self._load(index), self._loop)

    def _sync_fetch_is_the_same(self, ds: Any) -> bool:
        # The default fetch_raw_async runs fetch_raw in an executor: the same fetch, but timed on
        # the loop it would include the hand-off. A real async client is probed on the loop.
        return getattr(type(ds), "fetch_raw_async", None) is ConcurrentDataset.fetch_raw_async

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        if self.controller is not None:
            self.controller.close()


def make_fetcher(dataset: Any, config: FetchConfig, stats: telemetry.StatsRow | None = None,
                 budget: SharedBudget | None = None, slot: int = 0) -> SampleFetcher:
    """``stats`` defaults to the row of the loader whose code is calling (NOTE [ Stats sink ] in
    :mod:`concurrent_dataloader.telemetry`);
    ``budget``/``slot``: this worker's share of the loader-wide in-flight budget (adaptive mode)."""
    cls = AsyncioFetcher if config.fetch_impl == "asyncio" else ThreadedFetcher
    return cls(dataset, config, stats, budget, slot)
