"""Bridges between batchup-style data sources and our datasets / torch.

:class:`DatasetAccessor`
    An array-like accessor over any map-style dataset: our fetch/decode datasets (S3, scratch,
    tar archives, converted readers) or any torch ``Dataset``. Indexing it with an index
    array fetches every sample of the batch at once with our threaded or asyncio fetcher,
    then decodes them, so a batch of 64 images at 50 ms latency costs about one round trip.
:class:`DataSourceDataset`
    The other direction: an ``ArrayDataSource`` (or a ``map`` of one) as a map-style torch
    ``Dataset``, usable with our ``DataLoader`` or torch's. Its ``__getitems__`` gathers a whole
    batch in one call, so accessors inside it still fetch concurrently.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from .._closing import Closing
from .._process_local import ProcessLocal, drop_process_local
from ..loader.config import FetchConfig, FetchImpl
from ..loader.fetchers import SampleFetcher, make_fetcher
from . import data_source

__all__ = ["DatasetAccessor", "DataSourceDataset"]

_COLLATES = ("stack", "list")


class DatasetAccessor(Closing):
    """A batchup array-like accessor whose batch lookups fetch all samples concurrently.

    ``accessor[i]`` returns one sample; ``accessor[index_array]`` (1-D, integer) and
    ``accessor[slice]`` return a batch. ``collate`` decides the batch type: ``"stack"`` (an
    ndarray; tuple samples become a tuple of per-field arrays), ``"list"`` (for images of
    different sizes, or PIL images to be augmented in a ``map`` function), or a callable taking
    the list of samples. ``field`` picks one element of tuple samples, e.g. ``field=0`` for the
    image of ``(image, label)``.

    Fetch settings are those of our DataLoader: ``num_fetch_workers`` samples in flight and
    ``fetch_impl`` ``"threaded"`` or ``"asyncio"``. A dataset without the fetch/decode protocol
    has its ``__getitem__`` run in the fetch threads.

    The fetch engine (threads, event loop) is per-process state (NOTE [ Per-process state ] in
    ``_process_local.py``), so the accessor works in worker processes of ``WorkerProcessPool``
    and of a DataLoader, under fork and spawn. Call :meth:`close` (or use
    ``with``) to stop this process's fetch threads.
    """

    def __init__(self, dataset: Any, num_fetch_workers: int = 16, fetch_impl: FetchImpl = "threaded",
                 collate: str | Callable[[list], Any] = "stack", field: int | None = None) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset should be a map-style dataset (with __len__ and __getitem__), "
                            f"not {type(dataset).__name__}")
        if not callable(collate) and collate not in _COLLATES:
            raise ValueError(f"collate should be one of {_COLLATES} or a callable, not {collate!r}")
        if field is not None and (isinstance(field, bool) or not isinstance(field, int)):
            raise TypeError(f"field should be None or an int, not {type(field).__name__}")
        self.config = FetchConfig(num_fetch_workers=num_fetch_workers, fetch_impl=fetch_impl)
        self.dataset = dataset
        self.collate = collate
        self.field = field

    # -- fetch engine: per-process state, never pickled (NOTE [ Per-process state ]) ----------
    _engine = ProcessLocal(lambda self: make_fetcher(self.dataset, self.config), close=lambda f: f.close(),
                           close_with_owner=True, key="_state")
    _state = None  # what an accessor that has no engine in this process shows

    def __getstate__(self) -> dict:
        return drop_process_local(self.__dict__)

    def _fetcher(self) -> SampleFetcher:
        return self._engine

    def close(self) -> None:
        """Stop this process's fetch threads (they are re-created on the next lookup)."""
        DatasetAccessor._engine.reset(self)

    # -- array-like protocol ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return (f"DatasetAccessor({type(self.dataset).__name__}, len={len(self)}, "
                f"num_fetch_workers={self.config.num_fetch_workers}, fetch_impl={self.config.fetch_impl!r})")

    def _position(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a DatasetAccessor of length {n}")
        return i + n if i < 0 else i

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (bool, np.bool_)):
            raise TypeError(f"index should be an integer or a NumPy array, not a {type(index)}")
        if isinstance(index, (int, np.integer)):
            return self._pick(self._load([self._position(int(index))])[0])
        if isinstance(index, slice):
            positions = list(range(*index.indices(len(self))))
        elif isinstance(index, np.ndarray):
            if index.ndim != 1:
                raise ValueError(f"index array should only have 1 dimension, not {index.ndim}")
            if index.size and not np.issubdtype(index.dtype, np.integer):
                raise TypeError(f"index array should have an integer dtype, not {index.dtype}")
            positions = [self._position(int(i)) for i in index]
        else:
            raise TypeError(f"index should be an integer or a NumPy array, not a {type(index)}")
        samples = [self._pick(s) for s in self._load(positions)]
        return self._collate(samples, positions)

    def _load(self, positions: list[int]) -> list:
        if not positions:
            return []
        # One submit per batch: every sample's fetch is in flight at once (up to num_fetch_workers).
        return self._fetcher().submit(positions).result()

    def _pick(self, sample: Any) -> Any:
        if self.field is None:
            return sample
        try:
            return sample[self.field]
        except (TypeError, IndexError, KeyError) as exc:
            raise TypeError(f"field={self.field} cannot be taken from a sample of type {type(sample).__name__}") from exc

    def _collate(self, samples: list, positions: Sequence[int]) -> Any:
        if callable(self.collate):
            return self.collate(samples)
        if self.collate == "list":
            return samples
        if not samples:
            return np.zeros((0,))
        if all(isinstance(s, tuple) for s in samples) and len({len(s) for s in samples}) == 1:
            return tuple(_stack([s[k] for s in samples], positions) for k in range(len(samples[0])))
        return _stack(samples, positions)


def _stack(items: list, positions: Sequence[int]) -> np.ndarray:
    try:
        return np.stack([np.asarray(x) for x in items], axis=0)
    except ValueError as exc:
        shapes = [np.shape(x) for x in items]
        k = next((k for k, s in enumerate(shapes) if s != shapes[0]), None)
        if k is None:
            raise
        raise ValueError(f"cannot stack the samples of this batch: index {positions[0]} has shape {shapes[0]} "
                         f"but index {positions[k]} has shape {shapes[k]}; use collate='list' for samples of "
                         "different sizes") from exc


class DataSourceDataset(Dataset):
    """A map-style torch ``Dataset`` over an ``ArrayDataSource`` (or ``.map(fn)`` of one).

    Item ``i`` is the tuple ``(X[i], y[i], ...)`` of the source's ``i``-th sample (through its
    ``indices`` subset, if any; ``repeats`` and the sampler do not apply, the torch sampler
    decides the order). A map function runs on whole batches via ``__getitems__``, so it must
    accept any batch size.
    """

    def __init__(self, ds: data_source.AbstractDataSource) -> None:
        root = ds
        while isinstance(root, data_source.MapDataSource):
            root = root.source
        if not isinstance(root, data_source.RandomAccessDataSource):
            raise TypeError("DataSourceDataset needs an ArrayDataSource (or a map of one), whose batches are "
                            f"per-sample arrays; got {type(ds).__name__} over {type(root).__name__}")
        self.ds = ds
        self._length = int(root.sampler.length)

    def __len__(self) -> int:
        return self._length

    def _check(self, index: Any) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index should be an integer, not a {type(index)}")
        i = int(index)
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} is out of range for a DataSourceDataset of length {self._length}")
        return i + self._length if i < 0 else i

    def _rows(self, positions: np.ndarray) -> list[tuple]:
        batch = self.ds.samples_by_indices(positions)
        if not isinstance(batch, (tuple, list)):
            batch = (batch,)
        return [tuple(part[k] for part in batch) for k in range(len(positions))]

    def __getitem__(self, index: int) -> tuple:
        return self._rows(np.array([self._check(index)], dtype=np.int64))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        """The whole batch in one ``samples_by_indices`` call (so accessors fetch it concurrently)."""
        return self._rows(np.array([self._check(i) for i in indices], dtype=np.int64))
