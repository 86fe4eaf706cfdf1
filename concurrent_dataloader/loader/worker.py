"""Our worker loop: torch's own loop, with read-ahead and concurrent fetching plugged in.

We deliberately do not re-implement torch's worker loop: seeding, ``get_worker_info()``,
``worker_init_fn`` errors, the watchdog and the shutdown protocol (see NOTE [ Data Loader
Multiprocessing Shutdown Logic ] in torch's dataloader.py) all stay torch's. We only
(1) wrap the index queue so up to ``batch_pool`` batches are read ahead and started, and
(2) swap the map-style fetcher for one that returns those started batches, in order.

It can be used two ways:

* our :class:`~concurrent_dataloader.DataLoader` starts workers with it directly;
* the seed's monkeypatch ``torch.utils.data._utils.worker._worker_loop = _worker_loop`` makes
  a stock torch DataLoader use it, with the default :class:`FetchConfig`.
"""

from __future__ import annotations

from typing import Any

from .. import telemetry
from . import _torch_compat
from .config import FetchConfig, budget_from_init_fn, config_from_init_fn, stats_block_from_init_fn
from .fetchers import SampleFetcher, make_fetcher
from .orphan import watch_parent
from .pipeline import PipelineFetcher, ReadAhead

__all__ = ["_worker_loop"]


def _worker_loop(*args: Any, **kwargs: Any) -> None:
    watch_parent()  # exit even mid-batch when the training process dies (see orphan.py)
    bound = _torch_compat.bind_worker_args(args, kwargs)
    a = bound.arguments
    if not _torch_compat.is_map_kind(a["dataset_kind"]):
        # IterableDataset behaves exactly as in torch.
        return _torch_compat.TORCH_WORKER_LOOP(*bound.args, **bound.kwargs)

    config = config_from_init_fn(a["init_fn"]) or FetchConfig()
    block = stats_block_from_init_fn(a["init_fn"])
    row = block.row(a["worker_id"]) if block is not None else None
    dataset = a["dataset_holder"][0]  # torch's loop pops it; we only peek
    index_queue = _torch_compat.make_worker_index_queue(a["index_queue"], config.batch_pool)
    a["index_queue"] = index_queue
    fetcher: SampleFetcher | None = None

    def make_pipeline_fetcher() -> PipelineFetcher:
        # Called by torch's loop after worker_init_fn succeeded, and again on each
        # _ResumeIteration (persistent workers): the engine is reused, stale batches dropped.
        nonlocal fetcher
        if fetcher is None:
            fetcher = make_fetcher(dataset, config, row, budget=budget_from_init_fn(a["init_fn"]), slot=a["worker_id"])
            index_queue.read_ahead = ReadAhead(fetcher, a["auto_collation"], a["collate_fn"],
                                               while_waiting=index_queue.top_up)
        assert index_queue.read_ahead is not None
        index_queue.read_ahead.clear()
        return PipelineFetcher(index_queue.read_ahead)

    try:
        # This worker's row: its fetcher carries it; the sink covers code in this thread too.
        with telemetry.sink(row), _torch_compat.override_map_fetcher(dataset, make_pipeline_fetcher):
            _torch_compat.TORCH_WORKER_LOOP(*bound.args, **bound.kwargs)
    finally:
        # NOTE (shutdown): cancel what is in flight and stop our threads/event loop before the
        # process exits, so exit is not held up joining fetch threads.
        if index_queue.read_ahead is not None:
            index_queue.read_ahead.clear()
        if fetcher is not None:
            fetcher.close()
