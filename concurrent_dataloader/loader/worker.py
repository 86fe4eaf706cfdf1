"""Our worker loop: torch's own loop, with the batch pool and concurrent fetching plugged in.

We deliberately do not re-implement torch's worker loop: seeding, ``get_worker_info()``,
``worker_init_fn`` errors, the watchdog and the shutdown protocol (see NOTE [ Shutdown ] in
``lifecycle.py``) all stay torch's. We only
(1) wrap the index queue so the batch pool fills from it (NOTE [ Batch pool ]), and
(2) swap the map-style fetcher for one that takes those started batches, in order.

It can be used two ways:

* our :class:`~concurrent_dataloader.DataLoader` starts workers with it directly;
* the seed's monkeypatch ``torch.utils.data._utils.worker._worker_loop = _worker_loop`` makes
  a stock torch DataLoader (torch 2.14/2.15) use it, with the default :class:`FetchConfig`.

Its arguments are those of the torch worker loop that ``_torch_compat`` bound at import
(``_worker_loop`` or ``_process_worker_loop``).
"""

from __future__ import annotations

from typing import Any

from .. import telemetry
from . import _torch_compat
from .batch_pool import BatchPool, PoolFetcher, WorkerIndexQueue
from .config import WorkerContext
from .orphan import watch_parent

__all__ = ["_worker_loop"]


def _worker_loop(*args: Any, **kwargs: Any) -> None:
    watch_parent()  # exit even mid-batch when the training process dies (see orphan.py)
    bound, dataset = _torch_compat.bind_worker_args(args, kwargs)
    a = bound.arguments
    if not _torch_compat.is_map_kind(a["dataset_kind"]):
        # IterableDataset behaves exactly as in torch.
        return _torch_compat.run_torch_worker_loop(bound)

    context = WorkerContext.of(a["init_fn"])
    worker_id = a["worker_id"]
    row = context.row(worker_id)
    index_queue = WorkerIndexQueue(a["index_queue"], context.config.batch_pool, _torch_compat.is_control_message)
    a["index_queue"] = index_queue

    def make_pool_fetcher() -> PoolFetcher:
        # Called by torch's loop after worker_init_fn succeeded, and again on each
        # _ResumeIteration (persistent workers): the pool is reused, stale batches dropped.
        if index_queue.pool is None:
            index_queue.pool = BatchPool(context.make_fetcher(dataset, worker_id), context.config.batch_pool,
                                         a["auto_collation"], a["collate_fn"], while_waiting=index_queue.top_up)
        index_queue.pool.clear()
        return PoolFetcher(index_queue.pool)

    try:
        # This worker's row: its fetcher carries it; the sink covers code in this thread too.
        with telemetry.sink(row), _torch_compat.override_map_fetcher(dataset, make_pool_fetcher):
            _torch_compat.run_torch_worker_loop(bound)
    finally:
        # See NOTE [ Shutdown ] (exhaustion): cancel what is in flight and stop our threads/event
        # loop before the process exits, so exit is not held up joining fetch threads.
        pool = index_queue.pool
        if pool is not None:
            pool.clear()
            pool.fetcher.close()
