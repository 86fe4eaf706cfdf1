"""Which dataset wrappers the fetchers may see through, and when a batch must go to ``__getitems__``.

Seeing through a wrapper (``Subset``, ``ConcatDataset``, :class:`ConcurrentGetitems`) lets the
fetchers load the wrapped dataset per sample, with its fetch/decode split. It is only allowed
for the *exact* registered class with nothing overridden on the instance: a subclass may change
``__getitem__`` or ``__getitems__`` (a split with its own augmentation, say), and then the
user's method is called, as torch would call it. Correct beats fast.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable

from torch.utils.data import ConcatDataset, Subset

from .protocol import is_fetch_decode, is_same_as_per_sample

__all__ = ["register_plain_wrapper", "plain_wrapper", "resolve", "batched_getitems"]

Unwrap = Callable[[Any, Any], "tuple[Any, Any]"]
_UNWRAP: dict[type, Unwrap] = {}


def register_plain_wrapper(cls: type, unwrap: Unwrap) -> None:
    """``unwrap(wrapper, index) -> (inner_dataset, inner_index)`` for instances of exactly ``cls``."""
    _UNWRAP[cls] = unwrap


def plain_wrapper(dataset: Any) -> Unwrap | None:
    """How to see through ``dataset``, or None when it must be called as it is."""
    unwrap = _UNWRAP.get(type(dataset))
    if unwrap is None:
        return None
    own = getattr(dataset, "__dict__", {})
    if "__getitem__" in own or "__getitems__" in own:
        return None
    return unwrap


def resolve(dataset: Any, index: Any) -> tuple[Any, Any]:
    """The dataset and index that ``dataset[index]`` ends up reading, through plain wrappers only."""
    while True:
        unwrap = plain_wrapper(dataset)
        if unwrap is None:
            return dataset, index
        dataset, index = unwrap(dataset, index)


def batched_getitems(dataset: Any) -> Callable[[list], list] | None:
    """The ``__getitems__`` a batch must be handed to whole, or None to load it per sample.

    torch's fetcher calls ``dataset.__getitems__(indices)`` when it exists. We load per sample
    instead only where that gives the same samples: a fetch/decode dataset, a ``__getitems__``
    marked as per-sample (ours), or a plain ``Subset`` chain down to a dataset without a
    ``__getitems__`` of its own (``Subset.__getitems__`` then calls ``__getitem__`` per index).
    """
    if is_fetch_decode(dataset):
        return None
    getitems = getattr(dataset, "__getitems__", None)
    if not callable(getitems) or is_same_as_per_sample(getitems):
        return None
    inner = dataset
    while type(inner) is Subset and plain_wrapper(inner) is not None:
        inner = inner.dataset
    if inner is not dataset:  # plain Subsets forward the batch to the inner __getitems__, if any
        inner_getitems = getattr(inner, "__getitems__", None)
        if not callable(inner_getitems) or is_same_as_per_sample(inner_getitems) or is_fetch_decode(inner):
            return None
    return getitems


def _unwrap_subset(ds: Subset, index: Any) -> tuple[Any, Any]:
    return ds.dataset, ds.indices[index]


def _unwrap_concat(ds: ConcatDataset, index: Any) -> tuple[Any, Any]:
    # the same arithmetic as ConcatDataset.__getitem__, negative indices included
    if index < 0:
        if -index > len(ds):
            raise ValueError("absolute value of index should not exceed dataset length")
        index = len(ds) + index
    which = bisect.bisect_right(ds.cumulative_sizes, index)
    start = ds.cumulative_sizes[which - 1] if which > 0 else 0
    return ds.datasets[which], index - start


register_plain_wrapper(Subset, _unwrap_subset)
register_plain_wrapper(ConcatDataset, _unwrap_concat)
