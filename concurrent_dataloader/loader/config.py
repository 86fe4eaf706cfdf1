"""Validated fetch settings, and the :class:`WorkerContext` that carries them (with the loader's
stats block and budget) to each worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args

from ..errors import ConfigError

__all__ = ["FetchConfig", "FETCH_IMPLS", "FetchImpl", "WorkerContext"]

FetchImpl = Literal["threaded", "asyncio"]
FETCH_IMPLS: tuple[FetchImpl, ...] = get_args(FetchImpl)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class FetchConfig:
    """``num_fetch_workers="auto"`` adapts the in-flight fetches per worker (AIMD) between 1 and
    ``max_fetch_workers``, with all workers of a loader together under ``fetch_budget``.
    The default budget, 256 in flight, is about S3's documented 5,500 GET/s per prefix at ~50 ms."""

    num_fetch_workers: int | str = 16
    fetch_impl: FetchImpl = "threaded"
    batch_pool: int = 2
    max_fetch_workers: int = 64
    fetch_budget: int = 256

    def __post_init__(self) -> None:
        if self.num_fetch_workers != "auto":
            if isinstance(self.num_fetch_workers, str):
                raise ConfigError(f"num_fetch_workers must be an int >= 1 or 'auto', got {self.num_fetch_workers!r}")
            _positive_int("num_fetch_workers", self.num_fetch_workers)
        _positive_int("batch_pool", self.batch_pool)
        _positive_int("max_fetch_workers", self.max_fetch_workers)
        _positive_int("fetch_budget", self.fetch_budget)
        if self.fetch_impl not in FETCH_IMPLS:
            raise ConfigError(f"fetch_impl must be one of {FETCH_IMPLS}, got {self.fetch_impl!r}")

    @property
    def adaptive(self) -> bool:
        return self.num_fetch_workers == "auto"

    @property
    def concurrency(self) -> int:
        """Threads / in-flight slots to provision: the fixed setting, or the adaptive maximum."""
        if self.adaptive:
            return min(self.max_fetch_workers, self.fetch_budget)
        return int(self.num_fetch_workers)


class WorkerContext:
    """Everything a worker needs from its loader: the fetch settings, the shared-memory stats
    block (one row per worker) and the adaptive budget.

    torch's worker loop has no slot for it, so it rides in something torch pickles to every
    worker anyway: in the ``worker_init_fn`` slot (calling it runs the user's ``worker_init_fn``
    unchanged), or, when the loader falls back to the ``__getitems__`` hook, inside the dataset
    wrapper. :meth:`of` finds it again in the worker; the seed's monkeypatched stock DataLoader
    has none, and gets the defaults.
    """

    def __init__(self, config: FetchConfig, stats_block: Any = None, budget: Any = None,
                 user_init_fn: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.stats_block = stats_block  # telemetry.StatsBlock in shared memory, one row per worker
        self.budget = budget            # adaptive.SharedBudget for num_fetch_workers="auto"
        self.user_init_fn = user_init_fn

    @staticmethod
    def of(init_fn: object) -> "WorkerContext":
        return init_fn if isinstance(init_fn, WorkerContext) else WorkerContext(FetchConfig())

    def __call__(self, worker_id: int) -> None:
        if self.user_init_fn is not None:
            self.user_init_fn(worker_id)

    def row(self, worker_id: int) -> Any:
        """This worker's telemetry row (None without a stats block)."""
        return self.stats_block.row(worker_id) if self.stats_block is not None else None

    def make_fetcher(self, dataset: Any, worker_id: int) -> Any:
        from .fetchers import make_fetcher  # fetchers imports this module

        return make_fetcher(dataset, self.config, self.row(worker_id), budget=self.budget, slot=worker_id)
