"""The inline-mode policy: when a batch is loaded in the calling thread instead of concurrently.

Concurrency only pays when there is waiting to overlap. A batch is loaded in the calling
thread, as torch does, when concurrency cannot help and thread hand-offs (~0.1-0.2 ms of CPU per
sample) would only add cost:

* a trivial sample: loading one (fetch + decode, or a plain ``__getitem__``) costs less than a
  hand-off (``TRIVIAL_ENTER``); large batches of cheap samples (embeddings, tabular rows) then
  cost little more than in torch;
* fetching costs far less than decoding and this process has one core's share: the CPU is the
  bottleneck (measured on local disk).

A rising cost switches concurrency back on (hysteresis: ``*_EXIT > *_ENTER``). Latencies
measured under full concurrency are inflated by queueing (an aiofiles read waits ~4 ms behind 31
others), so the first batch starts with a probe: ``PROBE_SAMPLES`` samples loaded one at a time,
the first one discarded (cold connections, lazy imports), the cheapest warm one deciding the
mode. A fetch/decode dataset with its own async fetch is probed through the engine; a plain
``__getitem__`` (or a blocking ``fetch_raw``) is the same call on every path, so it is probed in
the calling thread, without a hand-off inflating its cost.

This is a decision, not a way of loading: it lives apart from the engines, which only provide
the hooks below (``_submit_one``, ``_sync_fetch_is_the_same``) and feed the averages through
:meth:`InlinePolicy._note`. :class:`~concurrent_dataloader.loader.fetchers.SampleFetcher` mixes
it in, so both engines decide the same way.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Sequence

from .. import telemetry
from .batch_handles import BatchHandle, _DeferredBatch
from .wrappers import resolve as _resolve

__all__ = ["InlinePolicy"]


class InlinePolicy:
    """Per-fetcher averages of what a sample costs, the start-up probe, and the mode they decide.

    Adaptive mode never inlines (``_may_inline``): its controller needs concurrent fetches to
    measure. ``_load_sync`` is one sample loaded in the calling thread, the inline path itself.
    """

    INLINE_ENTER, INLINE_EXIT, INLINE_MIN_SAMPLES, PROBE_SAMPLES = 0.2, 0.4, 32, 2
    # Cheap samples are probed a few more times (up to PROBE_MAX, while the cheapest warm one
    # cost under PROBE_MORE_BELOW) and the cheapest counts: on a busy machine one measurement of
    # a few microseconds can be inflated many times by preemption.
    PROBE_MAX, PROBE_MORE_BELOW = 8, 1e-3
    TRIVIAL_ENTER, TRIVIAL_EXIT = 50e-6, 150e-6

    _fetch_ewma: float | None = None
    _decode_ewma: float | None = None
    _observed = 0
    _inline = False
    _probed = False
    _first_index: Any = 0

    # Provided by the fetcher that mixes this in.
    dataset: Any
    controller: Any
    stats: telemetry.StatsRow | None
    _decode_slots: int

    def _uses_fetch_decode(self, ds: Any) -> bool:
        raise NotImplementedError

    def _load_sync(self, index: Any) -> Any:
        raise NotImplementedError

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
