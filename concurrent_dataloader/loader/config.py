"""Validated fetch settings; they travel to worker processes inside the worker_init_fn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

__all__ = ["FetchConfig", "FETCH_IMPLS"]

FETCH_IMPLS = ("threaded", "asyncio")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class FetchConfig:
    num_fetch_workers: int = 16
    fetch_impl: str = "threaded"
    batch_pool: int = 2

    def __post_init__(self) -> None:
        _positive_int("num_fetch_workers", self.num_fetch_workers)
        _positive_int("batch_pool", self.batch_pool)
        if self.fetch_impl not in FETCH_IMPLS:
            raise ConfigError(f"fetch_impl must be one of {FETCH_IMPLS}, got {self.fetch_impl!r}")


class InitFnWithConfig:
    """Carries the FetchConfig to each worker: torch's worker loop has no slot for it.

    Calling it runs the user's worker_init_fn unchanged.
    """

    def __init__(self, init_fn: Callable[[int], None] | None, config: FetchConfig, stats_block: Any = None) -> None:
        self.init_fn = init_fn
        self.config = config
        self.stats_block = stats_block  # telemetry.StatsBlock in shared memory, one row per worker

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)


def config_from_init_fn(init_fn: object) -> FetchConfig | None:
    return init_fn.config if isinstance(init_fn, InitFnWithConfig) else None


def stats_block_from_init_fn(init_fn: object) -> Any:
    return init_fn.stats_block if isinstance(init_fn, InitFnWithConfig) else None
