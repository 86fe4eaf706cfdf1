"""batchup 0.2.3 compatible mini-batch iteration, with accessors that fetch each batch concurrently.

Existing batchup code changes only its import::

    from concurrent_dataloader.batchup import data_source, sampling, work_pool

and :class:`~concurrent_dataloader.batchup.accessors.DatasetAccessor` turns any of our datasets
(or any map-style torch Dataset) into an array-like accessor whose index-array lookups fetch all
samples of the batch at once with our threaded or asyncio fetchers.
"""

from . import accessors, data_source, sampling, work_pool
from .accessors import DataSourceDataset, DatasetAccessor

__all__ = ["data_source", "sampling", "work_pool", "accessors", "DatasetAccessor", "DataSourceDataset"]
