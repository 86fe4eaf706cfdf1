"""Loader telemetry: counters and a fetch-latency histogram per process, readable from the main process.

Each worker process writes into its own row of a shared-memory block that the main process
created (so ``loader.stats()`` sees every worker without extra messages); a ``num_workers=0``
loader has a row of its own. Code anywhere below a fetcher (stores, retry policies, hedging)
reports through :func:`count` and :func:`observe_latency`, which write into the row of the
loader whose fetch is running.

NOTE [ Stats sink ]: there is no process-global sink. The row travels explicitly from the loader
to its fetcher, and the fetcher makes it the value of a context variable wherever that loader's
code runs: in its own threads (set once per thread, see :func:`bind_thread`), in each of its
event-loop tasks, and around inline loads in the caller's thread (:func:`sink`). A store that
hands work to a thread of its own carries the context along (:func:`carried`). So two loaders in
one process (train and val) each count only their own work.

See NOTE [ Fork safety ] in ``concurrent_dataloader/__init__.py``: the block is created by the main process with
the loader's multiprocessing context and reaches workers in their start-up arguments. Rows are
written by one process each, under a per-process lock, and read without locking: a read may be
a few increments stale, never corrupt (8-byte aligned doubles).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import threading
import time
from typing import Any, Callable, Iterator, Sequence

__all__ = ["COUNTERS", "StatsBlock", "StatsRow", "count", "observe_latency", "sink", "bind_thread", "carried",
           "current_row", "summarize", "EpochTimer", "write_to_tensorboard"]

COUNTERS = ("samples", "bytes", "fetch_errors", "requests", "attempts", "retries", "throttled",
            "server_errors", "connection_errors", "gave_up", "hedges", "hedge_wins")
_C = {name: i for i, name in enumerate(COUNTERS)}
# Latency buckets: upper bounds from 50 us to ~100 s, 20 per factor of 10 (12% apart).
_BOUNDS = tuple(5e-5 * 10 ** (i / 20) for i in range(127))
_ROW = len(COUNTERS) + len(_BOUNDS) + 1


class StatsBlock:
    """``rows`` rows of counters + histogram in one flat array of doubles."""

    def __init__(self, rows: int, context: Any = None) -> None:
        self.rows = rows
        n = rows * _ROW
        if context is None:
            import array

            self._data: Any = array.array("d", bytes(8 * n))
        else:
            self._data = context.Array("d", n, lock=False)

    def row(self, index: int) -> "StatsRow":
        return StatsRow(self, index)

    def totals(self) -> list[float]:
        data = self._data
        out = [0.0] * _ROW
        for r in range(self.rows):
            base = r * _ROW
            for i in range(_ROW):
                out[i] += data[base + i]
        return out

    def __getstate__(self) -> dict:
        return {"rows": self.rows, "_data": self._data}


class StatsRow:
    def __init__(self, block: StatsBlock, index: int) -> None:
        if not 0 <= index < block.rows:
            raise IndexError(f"stats row {index} out of range 0..{block.rows - 1}")
        self._data = block._data
        self._base = index * _ROW
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"_data": self._data, "_base": self._base}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, name: str, n: float = 1) -> None:
        i = self._base + _C[name]
        with self._lock:
            self._data[i] += n

    def value(self, name: str) -> float:
        return self._data[self._base + _C[name]]

    def observe(self, seconds: float) -> None:
        k = _bucket(seconds)
        i = self._base + len(COUNTERS) + k
        with self._lock:
            self._data[i] += 1


def _bucket(seconds: float) -> int:
    if seconds <= _BOUNDS[0]:
        return 0
    k = int(math.ceil(math.log10(seconds / 5e-5) * 20))
    return min(k, len(_BOUNDS))


# See NOTE [ Stats sink ] above.
_sink: contextvars.ContextVar[StatsRow | None] = contextvars.ContextVar("concurrent_dataloader_stats", default=None)


@contextlib.contextmanager
def sink(row: StatsRow | None) -> Iterator[None]:
    """Count into ``row`` in this thread (or task) until the block exits."""
    token = _sink.set(row)
    try:
        yield
    finally:
        _sink.reset(token)


def bind_thread(row: StatsRow | None) -> None:
    """Count into ``row`` for the rest of this thread's (or task's) life: a ``ThreadPoolExecutor``
    initializer for threads that serve one fetcher, or the first line of one of its tasks."""
    _sink.set(row)


def carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` bound to the caller's context: for work handed to a thread that no fetcher owns."""
    return functools.partial(contextvars.copy_context().run, fn)


def current_row() -> StatsRow | None:
    return _sink.get()


def count(name: str, n: float = 1) -> None:
    row = _sink.get()
    if row is not None:
        row.add(name, n)


def observe_latency(seconds: float) -> None:
    row = _sink.get()
    if row is not None:
        row.observe(seconds)


def _percentile(hist: Sequence[float], q: float) -> float | None:
    total = sum(hist)
    if total <= 0:
        return None
    target = q * total
    acc = 0.0
    for k, c in enumerate(hist):
        acc += c
        if acc >= target:
            return _BOUNDS[min(k, len(_BOUNDS) - 1)]
    return _BOUNDS[-1]


def summarize(start: Sequence[float], end: Sequence[float], seconds: float) -> dict[str, Any]:
    """Stats between two ``StatsBlock.totals()`` snapshots taken ``seconds`` apart."""
    delta = [b - a for a, b in zip(start, end)]
    counters = {name: int(delta[i]) for name, i in _C.items()}
    hist = delta[len(COUNTERS):]
    seconds = max(seconds, 1e-9)
    out: dict[str, Any] = dict(counters)
    out.update(
        seconds=seconds,
        samples_per_s=counters["samples"] / seconds,
        bytes_per_s=counters["bytes"] / seconds,
        # histogram bucket upper bounds: a percentile is exact to within ~12%
        fetch_latency_p50_ms=_ms(_percentile(hist, 0.50)),
        fetch_latency_p95_ms=_ms(_percentile(hist, 0.95)),
        fetch_latency_p99_ms=_ms(_percentile(hist, 0.99)),
    )
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


class EpochTimer:
    """Main-process time split: waiting for data (inside ``next``) versus everything else (compute)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.end: float | None = None
        self.data_wait = 0.0
        self.compute = 0.0
        self.batches = 0
        self._last_return: float | None = None

    def before_next(self) -> float:
        now = time.perf_counter()
        if self._last_return is not None:
            self.compute += now - self._last_return
        return now

    def after_next(self, began: float, got_batch: bool) -> None:
        now = time.perf_counter()
        self.data_wait += now - began
        if got_batch:
            self.batches += 1
            self._last_return = now
        else:
            self.end = now
            self._last_return = None

    def as_dict(self) -> dict[str, float]:
        elapsed = (self.end or time.perf_counter()) - self.start
        busy = self.data_wait + self.compute
        return {"batches": self.batches, "data_wait_s": self.data_wait, "compute_s": self.compute,
                "data_wait_fraction": self.data_wait / busy if busy > 0 else 0.0, "epoch_seconds": elapsed}


def write_to_tensorboard(writer: Any, stats: dict[str, Any], step: int, prefix: str = "loader/") -> None:
    """Record ``loader.stats()`` with a ``torch.utils.tensorboard.SummaryWriter`` (optional dependency)."""
    for key, value in stats.items():
        if isinstance(value, (int, float)) and value is not None:
            writer.add_scalar(prefix + key, value, step)
