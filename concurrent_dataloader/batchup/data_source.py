"""Data sources: mini-batch iteration over arrays and array-like accessors (batchup 0.2.3 compatible).

Code written for batchup works after changing only the import::

    from concurrent_dataloader.batchup import data_source, sampling, work_pool

An array-like accessor is anything with ``__len__`` and a ``__getitem__`` that takes an int or
a 1-D integer ndarray (and, ideally, a slice). Build one over any of our datasets with
:class:`concurrent_dataloader.batchup.accessors.DatasetAccessor`, and the samples of each
batch are then fetched concurrently instead of one after another.

Batches are tuples of arrays, ``(batch_X, batch_y, ...)`` in the order of the ``data`` list.
"""

from __future__ import annotations

import collections
import collections.abc
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import sampling

__all__ = [
    "AbstractDataSource",
    "RandomAccessDataSource",
    "ArrayDataSource",
    "CallableDataSource",
    "IteratorDataSource",
    "CompositeDataSource",
    "ChoiceBatch",
    "ChoiceDataSource",
    "MapDataSource",
    "batch_map_concat",
    "batch_map_mean",
    "coerce_data_source",
]


def _length_of_batch(batch: Any) -> int:
    """Samples in a (possibly nested) batch: tuples are structure, anything else is data."""
    while isinstance(batch, tuple):
        batch = batch[0]
    return len(batch)


def _trim_batch(batch: Any, length: int) -> Any:
    """Cut every leaf of a (possibly nested) batch to ``length`` samples, keeping its structure."""
    if isinstance(batch, ChoiceBatch):  # trim the samples, keep which member they came from
        return ChoiceBatch(_trim_batch(batch.sample_indices, length), batch.ds_index)
    if isinstance(batch, tuple):
        return tuple(_trim_batch(b, length) for b in batch)
    return batch[:length]


def _is_array_like(x: Any) -> bool:
    return hasattr(x, "__getitem__") and hasattr(x, "__len__")


def _is_unbounded(n: Any) -> bool:
    return n is not None and n == np.inf


class AbstractDataSource:
    """Base class of every data source."""

    @property
    def is_random_access(self) -> bool:
        """True when ``samples_by_indices`` and ``batch_indices_iterator`` are available.

        Only random-access sources can be handed to a worker pool, because the workers are
        given index batches, not batches.
        """
        return False

    def num_samples(self, **kwargs: Any) -> int | float | None:
        """An int, ``np.inf`` (infinite) or ``None`` (unknown)."""
        raise NotImplementedError

    def batch_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        raise NotImplementedError

    def map(self, fn: Callable[..., Any]) -> "MapDataSource":
        """A data source yielding ``fn(*batch)`` for each batch of this one (e.g. augmentation)."""
        return MapDataSource(self, fn)

    def _n_batches_for(self, batch_size: int, n_batches: int | None, kwargs: dict) -> int | None:
        if n_batches is not None:
            return n_batches
        n = self.num_samples(**kwargs)
        if _is_unbounded(n):
            raise ValueError("Data set has infinite size or sampler will generate infinite samples "
                             "but no n_batches limit specified")
        return None if n is None else sampling.num_batches(n, batch_size)

    def batch_map_concat(self, func: Callable[..., Any], batch_size: int,
                         progress_iter_func: Callable[..., Iterable] | None = None,
                         n_batches: int | None = None, prepend_args: Sequence[Any] | None = None,
                         **kwargs: Any) -> tuple | None:
        """Apply ``func`` batch by batch and concatenate its per-sample results; see :func:`batch_map_concat`."""
        n_batches = self._n_batches_for(batch_size, n_batches, kwargs)
        return batch_map_concat(func, self.batch_iterator(batch_size, **kwargs), progress_iter_func,
                                n_batches, prepend_args)

    def batch_map_mean(self, func: Callable[..., Any], batch_size: int,
                       progress_iter_func: Callable[..., Iterable] | None = None, sum_axis: Any = None,
                       n_batches: int | None = None, prepend_args: Sequence[Any] | None = None,
                       **kwargs: Any) -> tuple | None:
        """Apply ``func`` batch by batch and return the per-sample mean; see :func:`batch_map_mean`."""
        n_batches = self._n_batches_for(batch_size, n_batches, kwargs)
        return batch_map_mean(func, self.batch_iterator(batch_size, **kwargs), progress_iter_func,
                              sum_axis, n_batches, prepend_args)

    @staticmethod
    def _get_shuffle_rng(shuffle: Any) -> Any:
        """``None``/``False``: in order; ``True``: numpy's global RNG; otherwise the RandomState given."""
        if shuffle is None or shuffle is False:
            return None
        if shuffle is True:
            return np.random
        if not callable(getattr(shuffle, "permutation", None)):
            raise TypeError(f"shuffle should be None, a bool or a numpy RandomState, not {type(shuffle).__name__}")
        return shuffle


class RandomAccessDataSource(AbstractDataSource):
    """A data source whose samples can be gathered by index; subclasses define the gathering."""

    def __init__(self, length: int, indices: Any = None, repeats: int = 1,
                 sampler: sampling.AbstractSampler | None = None, include_indices: bool = False) -> None:
        if sampler is not None:
            if repeats != 1:
                raise ValueError("repeats should be 1 when sampler is provided")
            if indices is not None:
                raise ValueError("indices should be None when sampler is provided")
        elif indices is None:
            sampler = sampling.StandardSampler(length, repeats=repeats)
        else:
            sampler = sampling.SubsetSampler(indices, repeats=repeats)
            if len(sampler.indices) and (sampler.indices.min() < 0 or sampler.indices.max() >= length):
                bad = sampler.indices[(sampler.indices < 0) | (sampler.indices >= length)]
                raise ValueError(f"indices should lie in [0, {length}) (the data has {length} samples); "
                                 f"got {bad[:5].tolist()}")
        self.include_indices = include_indices
        self.sampler = sampler

    @property
    def is_random_access(self) -> bool:
        return True

    def num_samples(self, **kwargs: Any) -> int | float | None:
        """Samples one pass of :meth:`batch_iterator` yields: subset length x repeats (``np.inf`` if -1)."""
        return self.sampler.num_indices_generated()

    def samples_by_indices_nomapping(self, indices: Any) -> tuple:
        """Gather samples by index into the underlying data, ignoring the ``indices`` subset."""
        raise NotImplementedError

    def samples_by_indices(self, indices: Any) -> tuple:
        """Gather samples by position within this source (through the ``indices`` subset, if any)."""
        return self.samples_by_indices_nomapping(self.sampler.map_indices(indices))

    def batch_indices_iterator(self, batch_size: int, shuffle: Any = None, **kwargs: Any) -> Iterator[np.ndarray]:
        """1-D index arrays into the underlying data, one per mini-batch."""
        rng = self._get_shuffle_rng(shuffle)
        if rng is not None:
            return self.sampler.shuffled_indices_batch_iterator(batch_size, rng)
        return self.sampler.in_order_indices_batch_iterator(batch_size)

    def batch_iterator(self, batch_size: int, shuffle: Any = None, **kwargs: Any) -> Iterator[tuple]:
        """Mini-batches ``(batch_X, batch_y, ...)``; the last one is short if ``batch_size`` does not divide the data.

        ``shuffle``: ``None``/``False`` for in order, a ``numpy.random.RandomState`` to shuffle with
        it (a new permutation each epoch), or ``True`` for numpy's global RNG.
        """
        for batch_ndx in self.batch_indices_iterator(batch_size, shuffle=shuffle, **kwargs):
            yield self.samples_by_indices_nomapping(batch_ndx)


class ArrayDataSource(RandomAccessDataSource):
    """Mini-batches drawn from a list of arrays or array-like accessors of equal length.

    ``indices`` restricts it to a subset, ``repeats`` walks the data that many times (-1:
    forever; each repeat gets a new permutation when shuffling), ``sampler`` replaces the
    standard sampling (e.g. :class:`sampling.WeightedSampler`), and ``include_indices`` prefixes
    each batch with the array of sample indices it was built from.
    """

    def __init__(self, data: list, indices: Any = None, repeats: int = 1,
                 sampler: sampling.AbstractSampler | None = None, include_indices: bool = False) -> None:
        if not isinstance(data, (list, tuple)):
            raise TypeError(f"data must be a list of array-like objects, not a {type(data)}")
        if len(data) == 0:
            raise ValueError("data must contain at least one array")
        for i, d in enumerate(data):
            if not _is_array_like(d):
                raise TypeError(f"data[{i}] is not array-like (it needs __len__ and __getitem__): {type(d)}")
        lengths = [len(d) for d in data]
        mismatched = [(i, n) for i, n in enumerate(lengths) if n != lengths[0]]
        if mismatched:
            detail = ", ".join(f"array {i} has length {n}" for i, n in mismatched)
            raise ValueError(f"Arrays have inconsistent length; array 0 has length {lengths[0]}, while {detail}")
        self.data = list(data)
        super().__init__(lengths[0], indices=indices, repeats=repeats, sampler=sampler,
                         include_indices=include_indices)

    def samples_by_indices_nomapping(self, indices: Any) -> tuple:
        batch = tuple(d[indices] for d in self.data)
        if not self.include_indices:
            return batch
        if isinstance(indices, slice):
            indices = np.arange(*indices.indices(len(self.data[0])))
        return (indices,) + batch


class CallableDataSource(AbstractDataSource):
    """Batches come from ``batch_iterator_fn(batch_size, **kwargs)``.

    ``num_samples_fn`` is ``None`` (unknown), an int, ``np.inf`` or a callable taking the kwargs.
    """

    def __init__(self, batch_iterator_fn: Callable[..., Iterator[Any]],
                 num_samples_fn: Callable[..., Any] | int | float | None = None) -> None:
        if num_samples_fn is not None and not callable(num_samples_fn) \
                and not isinstance(num_samples_fn, (int, np.integer)) and not _is_unbounded(num_samples_fn):
            raise TypeError(f"num_samples_fn should be None, a callable, an int, or np.inf, not {num_samples_fn!r}")
        self.batch_iterator_fn = batch_iterator_fn
        self.num_samples_fn = num_samples_fn

    def num_samples(self, **kwargs: Any) -> int | float | None:
        if callable(self.num_samples_fn):
            return self.num_samples_fn(**kwargs)
        return self.num_samples_fn

    def batch_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        return self.batch_iterator_fn(batch_size, **kwargs)


class IteratorDataSource(AbstractDataSource):
    """Wraps an existing batch iterator; ``batch_iterator`` returns it as is (its arguments are ignored)."""

    def __init__(self, batch_iter: Iterator[Any], n_samples: int | float | None = None) -> None:
        if n_samples is not None and not isinstance(n_samples, (int, np.integer)) and not _is_unbounded(n_samples):
            raise TypeError(f"n_samples should be None, an int, or np.inf, not {n_samples!r}")
        self.batch_iter = batch_iter
        self.n_samples = n_samples

    def num_samples(self, **kwargs: Any) -> int | float | None:
        return self.n_samples

    def batch_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        return self.batch_iter


class CompositeDataSource(AbstractDataSource):
    """Draws one batch from every member per step; stops when the first member runs out.

    Typical use: labelled data repeated forever alongside one pass of unlabelled data. With
    ``flatten`` the batch is the members' batches concatenated, otherwise a tuple of them;
    ``trim`` cuts every member's batch to the shortest one.
    """

    def __init__(self, datasets: Sequence[AbstractDataSource], flatten: bool = True, trim: bool = True) -> None:
        self.datasets = list(datasets)
        self.flatten = flatten
        self.trim = trim
        self._random_access = all(ds.is_random_access for ds in self.datasets)

    def _prepare_batch(self, batch: tuple) -> tuple:
        if self.trim:
            batch = self._prepare_index_batch(batch)
        if self.flatten:
            return tuple(item for sub_batch in batch
                         for item in (sub_batch if isinstance(sub_batch, (tuple, list)) else (sub_batch,)))
        return tuple(batch)

    def _prepare_index_batch(self, batch: tuple) -> tuple:
        lengths = [_length_of_batch(sub_batch) for sub_batch in batch]
        if min(lengths) != max(lengths):
            batch = _trim_batch(tuple(batch), min(lengths))
        return tuple(batch)

    @property
    def is_random_access(self) -> bool:
        return self._random_access

    def num_samples(self, **kwargs: Any) -> int | float | None:
        counts = [d.num_samples(**kwargs) for d in self.datasets]
        # An unknown member may be the shortest, so the composite is unknown too.
        return None if any(n is None for n in counts) else min(counts)

    def batch_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[tuple]:
        iterators = [d.batch_iterator(batch_size, **kwargs) for d in self.datasets]
        for batch in zip(*iterators):
            yield self._prepare_batch(batch)

    def _require_random_access(self, what: str) -> None:
        if not self._random_access:
            raise TypeError(f"{what} not supported as one or more of the underlying data sources "
                            "does not support random access")

    def _check_index_list(self, indices: Sequence[Any]) -> None:
        if len(indices) != len(self.datasets):
            raise ValueError(f"length mis-match: indices has {len(indices)} items, self has "
                             f"{len(self.datasets)} data sources, should be equal")

    def samples_by_indices_nomapping(self, indices: Sequence[Any]) -> tuple:
        """``indices``: one index array (or slice) per member, into the members' underlying data."""
        self._require_random_access("samples_by_indices_nomapping method")
        self._check_index_list(indices)
        return self._prepare_batch(tuple(ds.samples_by_indices_nomapping(ndx)
                                         for ds, ndx in zip(self.datasets, indices)))

    def samples_by_indices(self, indices: Sequence[Any]) -> tuple:
        """``indices``: one index array (or slice) per member, through each member's subset mapping."""
        self._require_random_access("samples_by_indices method")
        self._check_index_list(indices)
        return self._prepare_batch(tuple(ds.samples_by_indices(ndx) for ds, ndx in zip(self.datasets, indices)))

    def batch_indices_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[tuple]:
        self._require_random_access("batch_indices_iterator method")  # now, not at the first next()
        iterators = [d.batch_indices_iterator(batch_size, **kwargs) for d in self.datasets]
        return (self._prepare_index_batch(batch) for batch in zip(*iterators))


ChoiceBatch = collections.namedtuple("ChoiceBatch", ["sample_indices", "ds_index"])


class ChoiceDataSource(AbstractDataSource):
    """Each mini-batch comes whole from one member (e.g. one domain per batch).

    Not stratified: members take turns (in a shuffled order per round when shuffling) until one
    runs out. Stratified (all members finite): each member contributes batches in proportion
    to its size, and every batch of every member is used once.
    """

    def __init__(self, datasets: Sequence[AbstractDataSource], stratified: bool = False) -> None:
        self.datasets = list(datasets)
        self.stratified = stratified
        self._random_access = all(ds.is_random_access for ds in self.datasets)

    @property
    def is_random_access(self) -> bool:
        return self._random_access

    def num_samples(self, **kwargs: Any) -> int | float:
        return sum((n if n is not None else 0) for n in (d.num_samples(**kwargs) for d in self.datasets))

    def batch_iterator(self, batch_size: int, shuffle: Any = None, **kwargs: Any) -> Iterator[Any]:
        iterators = [d.batch_iterator(batch_size, shuffle=shuffle, **kwargs) for d in self.datasets]
        rng = self._get_shuffle_rng(shuffle)
        for choice in self._ds_iterator(batch_size, iterators, rng, **kwargs):
            yield choice.sample_indices

    def _require_random_access(self, what: str) -> None:
        if not self._random_access:
            raise TypeError(f"{what} not supported as one or more of the underlying data sources "
                            "does not support random access")

    @staticmethod
    def _check_choice(indices: Any) -> None:
        if not isinstance(indices, ChoiceBatch):
            raise TypeError(f"indices should be a ChoiceBatch, not a {type(indices)}")

    def samples_by_indices_nomapping(self, indices: ChoiceBatch) -> Any:
        self._require_random_access("samples_by_indices_nomapping method")
        self._check_choice(indices)
        return self.datasets[indices.ds_index].samples_by_indices_nomapping(indices.sample_indices)

    def samples_by_indices(self, indices: ChoiceBatch) -> Any:
        self._require_random_access("samples_by_indices method")
        self._check_choice(indices)
        return self.datasets[indices.ds_index].samples_by_indices(indices.sample_indices)

    def batch_indices_iterator(self, batch_size: int, shuffle: Any = None, **kwargs: Any) -> Iterator[ChoiceBatch]:
        """``ChoiceBatch(sample_indices, ds_index)`` items, one per mini-batch."""
        self._require_random_access("batch_indices_iterator method")
        rng = self._get_shuffle_rng(shuffle)
        iterators = [d.batch_indices_iterator(batch_size, shuffle=rng, **kwargs) for d in self.datasets]
        return self._ds_iterator(batch_size, iterators, rng, **kwargs)

    def _ds_iterator(self, batch_size: int, iterators: list, shuffle_rng: Any, **kwargs: Any) -> Iterator[ChoiceBatch]:
        if not iterators:  # nothing to choose from (and never loop forever doing so)
            return
        counts = [d.num_samples(shuffle=shuffle_rng, **kwargs) for d in self.datasets]
        all_finite = not any(_is_unbounded(n) for n in counts)
        if self.stratified and all_finite:
            per_ds = [sampling.num_batches(n or 0, batch_size) for n in counts]
            if shuffle_rng is not None:
                order = self._ds_indices_stratified_shuffled(per_ds, shuffle_rng)
            else:
                order = self._ds_indices_stratified_in_order(per_ds)
            for ds_i in order:
                try:
                    x = next(iterators[ds_i])
                except StopIteration:  # a member yielded fewer batches than it announced
                    return
                yield ChoiceBatch(sample_indices=x, ds_index=int(ds_i))
            return
        while True:
            rounds = shuffle_rng.permutation(len(iterators)) if shuffle_rng is not None else range(len(iterators))
            for ds_i in rounds:
                try:
                    x = next(iterators[ds_i])
                except StopIteration:
                    return
                yield ChoiceBatch(sample_indices=x, ds_index=int(ds_i))

    @staticmethod
    def _ds_indices_stratified_in_order(batches_per_ds: Sequence[int]) -> np.ndarray:
        """Interleave members evenly: member k gets a slot whenever its share of the biggest crosses a step."""
        counts = np.asarray(batches_per_ds)
        if counts.size == 0 or counts.max() == 0:
            return np.zeros((0,), dtype=int)
        biggest = counts.max()
        rate = counts.astype(float) / biggest
        eps = 0.25 / biggest
        progress = np.zeros_like(rate)
        last_step = np.full(counts.shape, -1)
        order = []
        for _ in range(biggest):
            step = np.floor(progress + eps).astype(int)
            order.append(np.flatnonzero(step > last_step))
            last_step = step
            progress += rate
        return np.concatenate(order)

    @staticmethod
    def _ds_indices_stratified_shuffled(batches_per_ds: Sequence[int], shuffle_rng: Any) -> np.ndarray:
        """Every member's batches, in an order shuffled by ``shuffle_rng``."""
        order = np.repeat(np.arange(len(batches_per_ds)), np.asarray(batches_per_ds, dtype=int))
        shuffle_rng.shuffle(order)
        return order


class MapDataSource(AbstractDataSource):
    """Yields ``fn(*batch)`` for each batch of ``source``; ``fn`` must return a batch tuple."""

    def __init__(self, source: AbstractDataSource, fn: Callable[..., Any]) -> None:
        self.source = source
        self.fn = fn
        self._random_access = source.is_random_access

    @property
    def is_random_access(self) -> bool:
        return self._random_access

    def num_samples(self, **kwargs: Any) -> int | float | None:
        return self.source.num_samples(**kwargs)

    def batch_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        for batch in self.source.batch_iterator(batch_size, **kwargs):
            yield self.fn(*batch)

    def _require_random_access(self, what: str) -> None:
        if not self._random_access:
            raise TypeError(f"{what} not supported as one or more of the underlying data sources "
                            "does not support random access")

    def samples_by_indices_nomapping(self, indices: Any) -> Any:
        self._require_random_access("samples_by_indices_nomapping method")
        return self.fn(*self.source.samples_by_indices_nomapping(indices))

    def samples_by_indices(self, indices: Any) -> Any:
        self._require_random_access("samples_by_indices method")
        return self.fn(*self.source.samples_by_indices(indices))

    def batch_indices_iterator(self, batch_size: int, **kwargs: Any) -> Iterator[Any]:
        self._require_random_access("batch_indices_iterator method")
        return self.source.batch_indices_iterator(batch_size, **kwargs)


def _call_batch_fn(func: Callable[..., Any], batch: Any, prepend_args: Sequence[Any] | None) -> Any:
    args = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    if prepend_args is not None:
        args = tuple(prepend_args) + args
    return func(*args)


def _progress(batch_iter: Iterable, progress_iter_func: Callable[..., Iterable] | None,
              n_batches: int | None) -> Iterable:
    if progress_iter_func is None:
        return batch_iter
    return progress_iter_func(batch_iter, total=n_batches, leave=False)


def batch_map_concat(func: Callable[..., Any], batch_iter: Iterable, progress_iter_func: Callable[..., Iterable] | None = None,
                     n_batches: int | None = None, prepend_args: Sequence[Any] | None = None) -> tuple | None:
    """Apply ``func(*batch)`` to each batch of ``batch_iter`` and concatenate the per-sample results.

    ``func`` returns ``None``, an array or a tuple of arrays (one entry per sample along axis
    0). The result is a tuple of concatenated arrays, or ``None`` if ``func`` never returned
    anything. ``n_batches`` stops early (the iterator can be resumed by a later call);
    ``progress_iter_func`` is a tqdm-style wrapper, e.g. ``tqdm.tqdm``; ``prepend_args`` are
    passed before the batch's arrays.
    """
    results = []
    done = 0
    for batch in _progress(batch_iter, progress_iter_func, n_batches):
        out = _call_batch_fn(func, batch, prepend_args)
        if isinstance(out, np.ndarray):
            out = (out,)
        elif out is not None and not isinstance(out, tuple):
            raise TypeError("Batch function should return a tuple of results, a single result as a NumPy "
                            f"array, or None, not {type(out)}")
        if out is not None:
            results.append(out)
        done += 1
        if n_batches is not None and done >= n_batches:
            break
    if not results:
        return None
    return tuple(np.concatenate(list(parts), axis=0) for parts in zip(*results))


def batch_map_mean(func: Callable[..., Any], batch_iter: Iterable, progress_iter_func: Callable[..., Iterable] | None = None,
                   sum_axis: Any = None, n_batches: int | None = None,
                   prepend_args: Sequence[Any] | None = None) -> tuple | None:
    """Apply ``func(*batch)`` to each batch and return the per-sample mean of its results.

    With ``sum_axis=None``, ``func`` returns per-batch *sums* (a float/array or a tuple of
    them); otherwise its results are summed over ``sum_axis`` first (e.g. per-sample losses
    with ``sum_axis=0``). The accumulated sums are divided by the number of samples seen.
    Returns a tuple of float arrays, or ``None`` if ``func`` never returned anything.
    """
    totals: list | None = None
    n_samples = 0
    done = 0
    for batch in _progress(batch_iter, progress_iter_func, n_batches):
        batch_n = _length_of_batch(batch)
        out = _call_batch_fn(func, batch, prepend_args)
        if isinstance(out, (np.ndarray, float, np.number)):
            out = (out,)
        elif out is not None and not isinstance(out, tuple):
            raise TypeError("Batch function should return a tuple of results, a single result as a NumPy "
                            f"array or float, or None, not {type(out)}")
        if out is not None:
            if sum_axis is not None:
                out = tuple(np.asarray(r).sum(axis=sum_axis) for r in out)
            if totals is None:
                totals = list(out)
            else:
                for i, r in enumerate(out):
                    totals[i] = totals[i] + r
        n_samples += batch_n
        done += 1
        if n_batches is not None and done >= n_batches:
            break
    if totals is None:
        return None
    return tuple(np.array(t).astype(float) / n_samples for t in totals)


def coerce_data_source(x: Any) -> AbstractDataSource:
    """Turn ``x`` into a data source: a data source as is, a list/tuple of arrays into an
    :class:`ArrayDataSource`, an iterator into an :class:`IteratorDataSource`, a callable into
    a :class:`CallableDataSource`. Anything else raises ``TypeError``.
    """
    if isinstance(x, AbstractDataSource):
        return x
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError("Cannot convert x to a data source; x is an empty sequence")
        for item in x:
            if not _is_array_like(item):
                raise TypeError("Cannot convert x to a data source; x is a sequence and one of the elements "
                                f"is not an array-like object, rather a {type(item)}")
        return ArrayDataSource(list(x))
    if isinstance(x, collections.abc.Iterator):
        return IteratorDataSource(x)
    if callable(x):
        return CallableDataSource(x)
    raise TypeError("Cannot convert x to a data source; can only handle iterators, callables, non-empty "
                    f"sequences of array-like objects; cannot handle {type(x)}")
