"""Validated fetch settings; they travel to worker processes inside the worker_init_fn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args

from ..errors import ConfigError

__all__ = ["FetchConfig", "FETCH_IMPLS", "FetchImpl"]

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


class InitFnWithConfig:
    """Carries the FetchConfig to each worker: torch's worker loop has no slot for it.

    Calling it runs the user's worker_init_fn unchanged.
    """

    def __init__(self, init_fn: Callable[[int], None] | None, config: FetchConfig, stats_block: Any = None,
                 budget: Any = None) -> None:
        self.init_fn = init_fn
        self.config = config
        self.stats_block = stats_block  # telemetry.StatsBlock in shared memory, one row per worker
        self.budget = budget            # adaptive.SharedBudget for num_fetch_workers="auto"

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)


def config_from_init_fn(init_fn: object) -> FetchConfig | None:
    return init_fn.config if isinstance(init_fn, InitFnWithConfig) else None


def stats_block_from_init_fn(init_fn: object) -> Any:
    return init_fn.stats_block if isinstance(init_fn, InitFnWithConfig) else None


def budget_from_init_fn(init_fn: object) -> Any:
    return init_fn.budget if isinstance(init_fn, InitFnWithConfig) else None
