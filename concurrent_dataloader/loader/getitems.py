"""Concurrency for the stock ``torch.utils.data.DataLoader`` through its public ``__getitems__`` hook.

torch's map-style fetcher calls ``dataset.__getitems__(indices)`` for each batch when the
dataset defines it. These helpers define it so that the batch's samples load concurrently,
without our DataLoader. Batches are still handled one at a time per worker (no batch pool).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch.utils.data import Dataset, get_worker_info

from .._process_local import ProcessLocal, drop_process_local
from .config import FetchConfig, FetchImpl, WorkerContext
from .fetchers import SampleFetcher, make_fetcher
from .orphan import watch_parent
from .protocol import same_as_per_sample
from .wrappers import plain_wrapper, register_plain_wrapper

__all__ = ["ConcurrentGetitemsMixin", "ConcurrentGetitems", "concurrent_getitems", "LoaderGetitems"]


class ConcurrentGetitemsMixin:
    """Mix into a map-style dataset to get a concurrent ``__getitems__``.

    Set ``num_fetch_workers`` / ``fetch_impl`` as class or instance attributes.

    The fetch engine is per-process state (NOTE [ Per-process state ] in ``_process_local.py``),
    so workers under fork and spawn each build their own.
    """

    num_fetch_workers: int = 16
    fetch_impl: FetchImpl = "threaded"

    def _cdl_new_fetcher(self) -> SampleFetcher:
        config = FetchConfig(num_fetch_workers=self.num_fetch_workers, fetch_impl=self.fetch_impl)
        return make_fetcher(self._cdl_target(), config)

    _cdl_engine = ProcessLocal(lambda self: self._cdl_new_fetcher(), close=lambda f: f.close(),
                               key="_cdl_fetcher_state")

    def _cdl_fetcher(self) -> SampleFetcher:
        return self._cdl_engine

    def _cdl_target(self) -> Any:
        return self

    # Our own fetchers load this dataset per sample instead of calling __getitems__ (unless a
    # subclass overrides it: then theirs is called).
    @same_as_per_sample
    def __getitems__(self, indices: Sequence[int]) -> list:
        return self._cdl_fetcher().submit(list(indices)).result()

    def close_getitems(self) -> None:
        ConcurrentGetitemsMixin._cdl_engine.reset(self)

    def __getstate__(self) -> dict:
        return drop_process_local(self.__dict__)


class ConcurrentGetitems(ConcurrentGetitemsMixin, Dataset):
    """Wraps any map-style dataset; ``__getitem__``/``__len__`` and the fetch/decode methods delegate."""

    def __init__(self, dataset: Any, num_fetch_workers: int = 16, fetch_impl: FetchImpl = "threaded") -> None:
        FetchConfig(num_fetch_workers=num_fetch_workers, fetch_impl=fetch_impl)  # validate early
        self.dataset = dataset
        self.num_fetch_workers = num_fetch_workers
        self.fetch_impl = fetch_impl

    def _cdl_target(self) -> Any:
        # A subclass may change __getitem__: then the samples must come from it, not the wrapped dataset.
        return self.dataset if plain_wrapper(self) is not None else self

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (during unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


# Our fetchers see through exactly this class to the wrapped dataset (not through a subclass).
register_plain_wrapper(ConcurrentGetitems, lambda ds, index: (ds.dataset, index))


def concurrent_getitems(dataset: Any, num_fetch_workers: int = 16,
                       fetch_impl: FetchImpl = "threaded") -> ConcurrentGetitems:
    """Return ``dataset`` wrapped so that the stock torch DataLoader loads each batch concurrently."""
    return ConcurrentGetitems(dataset, num_fetch_workers=num_fetch_workers, fetch_impl=fetch_impl)


class LoaderGetitems(ConcurrentGetitemsMixin, Dataset):
    """Our DataLoader's fallback when it cannot run its own worker loop (a torch worker layout it
    does not know, or torch's thread workers): torch's iterator runs unchanged on this wrapper,
    and each batch's samples load concurrently through ``__getitems__``, with the loader's
    fetch settings, stats rows and budget (its :class:`WorkerContext`). Read-ahead across
    batches is lost.

    It stands in for the user's dataset in the workers: attributes are read from and written to
    the wrapped dataset (a ``worker_init_fn`` that sets ``get_worker_info().dataset.x`` still
    reaches it). Thread workers of one process share one fetcher.
    """

    _own = frozenset({"dataset", "_cdl_context"})

    def __init__(self, dataset: Any, context: WorkerContext) -> None:
        self.__dict__.update(dataset=dataset, _cdl_context=context)

    def _cdl_new_fetcher(self) -> SampleFetcher:
        info = get_worker_info()
        if info is not None and getattr(info, "worker_method", "multiprocessing") == "multiprocessing":
            watch_parent()  # a worker process: exit even mid-batch when the training process dies
        return self._cdl_context.make_fetcher(self.dataset, info.id if info is not None else 0)

    def _cdl_target(self) -> Any:
        return self.dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name in LoaderGetitems._own:  # not yet set (during unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in LoaderGetitems._own or name.startswith("_cdl_"):
            self.__dict__[name] = value
        else:
            setattr(self.dataset, name, value)
