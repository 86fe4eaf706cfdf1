"""Samplers: they decide which sample indices make up each mini-batch (batchup 0.2.3 compatible).

A sampler yields 1-D integer index arrays; a data source turns them into batches. Shuffling
follows batchup exactly: one ``rng.permutation(N)`` per epoch (drawn from the ``RandomState``
you pass), epochs concatenated and cut into batches, so the same seed gives the same batches
as batchup, also when one ``RandomState`` is shared across several epochs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

__all__ = [
    "num_batches",
    "AbstractSampler",
    "StandardSampler",
    "SubsetSampler",
    "WeightedSampler",
    "WeightedSubsetSampler",
]


def num_batches(n: int, batch_size: int) -> int:
    """Number of mini-batches of ``batch_size`` needed to cover ``n`` samples (last one may be short)."""
    return -(-int(n) // int(batch_size))


def _check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)):
        raise TypeError(f"repeats should be an int (>= 1, or -1 for infinite), not {type(repeats).__name__}")
    if repeats == 0 or repeats < -1:
        raise ValueError(f"Invalid number of repeats; should be >= 1 or -1, not {repeats}")
    return int(repeats)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size should be an int >= 1, not {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size should be >= 1, not {batch_size}")
    return int(batch_size)


def _as_index_array(indices: Any, name: str = "indices") -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"{name} should be a 1-D array of sample indices, not {arr.ndim}-D")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} should have an integer dtype, not {arr.dtype}")
    return arr.astype(np.int64, copy=False) if arr.size else np.zeros((0,), dtype=np.int64)


def _epoch_batches(next_epoch: Callable[[], np.ndarray], length: int, batch_size: int,
                   repeats: int) -> Iterator[np.ndarray]:
    """Cut the concatenation of ``repeats`` epochs into batches of ``batch_size``.

    ``next_epoch()`` returns the order of one epoch (a fresh permutation when shuffling).
    When an epoch runs out *inside* a batch, the next epoch's order is drawn at once, also
    after the final epoch: batchup does this, so we do too, to keep a shared RandomState in
    the same state batchup would leave it in.
    """
    # Validate now, not at the first next(): the generator below is lazy (as batchup's is, which
    # matters for when the RNG is consumed).
    batch_size = _check_batch_size(batch_size)
    if length == 0 and repeats == -1:
        raise ValueError("cannot repeat an empty data set infinitely (repeats=-1, 0 samples)")
    return _epoch_batches_gen(next_epoch, length, batch_size, repeats)


def _epoch_batches_gen(next_epoch: Callable[[], np.ndarray], length: int, batch_size: int,
                       repeats: int) -> Iterator[np.ndarray]:
    if length == 0:
        return
    order = next_epoch()
    if repeats == 1:
        for start in range(0, length, batch_size):
            yield order[start:start + batch_size]
        return
    pos = 0
    remaining = repeats
    while True:
        if pos + batch_size <= length:
            yield order[pos:pos + batch_size]
            pos += batch_size
            continue
        pieces = []
        filled = 0
        finished = False
        while filled < batch_size:
            take = min(batch_size - filled, length - pos)
            pieces.append(order[pos:pos + take])
            filled += take
            pos += take
            if pos >= length:
                order = next_epoch()
                pos = 0
                if remaining != -1:
                    remaining -= 1
                if remaining == 0:
                    finished = True
                    break
        if filled:
            yield np.concatenate(pieces)
        if finished:
            return


class AbstractSampler:
    """Base class: generates mini-batches of sample indices in order or shuffled."""

    length: int

    def num_indices_generated(self) -> int | float | None:
        """An int, ``np.inf`` (infinite) or ``None`` (unknown)."""
        raise NotImplementedError

    def map_indices(self, indices: np.ndarray) -> np.ndarray:
        """Map positions within this sampler to indices into the data (identity by default)."""
        return indices

    def in_order_indices_batch_iterator(self, batch_size: int) -> Iterator[np.ndarray]:
        raise NotImplementedError(f"Abstract for type {type(self)}")

    def shuffled_indices_batch_iterator(self, batch_size: int, shuffle_rng: Any) -> Iterator[np.ndarray]:
        raise NotImplementedError(f"Abstract for type {type(self)}")


class StandardSampler(AbstractSampler):
    """Every sample of a data set of ``length`` samples, ``repeats`` times (-1: forever)."""

    def __init__(self, length: int, repeats: int = 1) -> None:
        self.repeats = _check_repeats(repeats)
        if int(length) < 0:
            raise ValueError(f"length should be >= 0, not {length}")
        self.length = int(length)

    def num_indices_generated(self) -> int | float:
        return np.inf if self.repeats == -1 else self.length * self.repeats

    def in_order_indices_batch_iterator(self, batch_size: int) -> Iterator[np.ndarray]:
        return _epoch_batches(lambda: np.arange(self.length), self.length, batch_size, self.repeats)

    def shuffled_indices_batch_iterator(self, batch_size: int, shuffle_rng: Any) -> Iterator[np.ndarray]:
        return _epoch_batches(lambda: shuffle_rng.permutation(self.length), self.length, batch_size,
                              self.repeats)


class SubsetSampler(AbstractSampler):
    """The samples named by ``indices`` (in that order when not shuffling), ``repeats`` times."""

    def __init__(self, indices: Any, repeats: int = 1) -> None:
        self.repeats = _check_repeats(repeats)
        self.indices = _as_index_array(indices)
        self.length = len(self.indices)

    def num_indices_generated(self) -> int | float:
        return np.inf if self.repeats == -1 else self.length * self.repeats

    def map_indices(self, indices: np.ndarray) -> np.ndarray:
        return self.indices[indices]

    def in_order_indices_batch_iterator(self, batch_size: int) -> Iterator[np.ndarray]:
        # A copy per epoch, so a caller that modifies a batch cannot corrupt self.indices.
        return _epoch_batches(lambda: self.indices.copy(), self.length, batch_size, self.repeats)

    def shuffled_indices_batch_iterator(self, batch_size: int, shuffle_rng: Any) -> Iterator[np.ndarray]:
        # indices[permutation(N)] consumes the RNG exactly like batchup's permutation(indices).
        return _epoch_batches(lambda: self.indices[shuffle_rng.permutation(self.length)], self.length,
                              batch_size, self.repeats)


def _normalised_weights(weights: Any, name: str) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1:
        raise ValueError(f"{name} should be a 1-D array, not {w.ndim}-D")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f"{name} should be finite and non-negative")
    total = w.sum()
    if total == 0.0:
        raise ValueError(f"{name} should not sum to 0")
    return w / total


class _WeightedDraw(AbstractSampler):
    """Endless draws with replacement from ``range(self.length)`` with probabilities ``self._p``."""

    length: int
    _p: np.ndarray

    def num_indices_generated(self) -> float:
        return np.inf

    def in_order_indices_batch_iterator(self, batch_size: int) -> Iterator[np.ndarray]:
        raise NotImplementedError(f"In-order sampling not supported by {type(self).__name__}")

    def shuffled_indices_batch_iterator(self, batch_size: int, shuffle_rng: Any) -> Iterator[np.ndarray]:
        batch_size = _check_batch_size(batch_size)
        return self._draw(batch_size, shuffle_rng)

    def _draw(self, batch_size: int, shuffle_rng: Any) -> Iterator[np.ndarray]:
        while True:
            yield self._map(shuffle_rng.choice(self.length, size=(batch_size,), p=self._p))

    def _map(self, drawn: np.ndarray) -> np.ndarray:
        return drawn


class WeightedSampler(_WeightedDraw):
    """Draws samples with replacement, with probability proportional to ``weights``; never ends.

    Only shuffled iteration is supported (``batch_iterator(..., shuffle=rng)``).
    """

    def __init__(self, weights: Any) -> None:
        self.weights = self._p = _normalised_weights(weights, "weights")
        self.length = len(self.weights)

    @staticmethod
    def class_balancing_sample_weights(y: Any) -> np.ndarray:
        """Per-sample weights under which every class present in ``y`` is drawn equally often."""
        y = np.asarray(y)
        if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
            raise ValueError("y should be a 1-D array of non-negative integer class labels")
        counts = np.bincount(y)
        present = counts > 0
        cls_weight = np.zeros(len(counts), dtype=float)
        cls_weight[present] = 1.0 / (counts[present] * present.sum())
        return cls_weight[y]

    @staticmethod
    def class_balancing_sampler(y: Any) -> "WeightedSampler":
        """A ``WeightedSampler`` that compensates for class imbalance in ``y``."""
        return WeightedSampler(WeightedSampler.class_balancing_sample_weights(y))


class WeightedSubsetSampler(_WeightedDraw):
    """Like :class:`WeightedSampler`, over the subset ``indices`` with weights ``sub_weights``."""

    def __init__(self, sub_weights: Any, indices: Any) -> None:
        indices = _as_index_array(indices)
        if len(sub_weights) != len(indices):
            raise ValueError(f"sub_weights and indices should have the same length; "
                             f"{len(sub_weights)} != {len(indices)}")
        self.sub_weights = self._p = _normalised_weights(sub_weights, "sub_weights")
        self.indices = indices
        self.length = len(indices)

    def map_indices(self, indices: np.ndarray) -> np.ndarray:
        return self.indices[indices]

    def _map(self, drawn: np.ndarray) -> np.ndarray:
        # indices[choice(N, p)] draws the same numbers as batchup's choice(indices, p).
        return self.indices[drawn]

    @staticmethod
    def class_balancing_sampler(y: Any, indices: Any) -> "WeightedSubsetSampler":
        """A ``WeightedSubsetSampler`` over ``indices`` that compensates for class imbalance in ``y``."""
        indices = _as_index_array(indices)
        weights = WeightedSampler.class_balancing_sample_weights(np.asarray(y)[indices])
        return WeightedSubsetSampler(weights, indices=indices)
