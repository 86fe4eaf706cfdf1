"""concurrent_dataloader: read image datasets from high-latency storage as fast as from local disk.

``from concurrent_dataloader import DataLoader`` is a drop-in for ``torch.utils.data.DataLoader``.
"""

# NOTE [ Fork safety ]
#   DataLoader workers are started by fork, spawn or forkserver, after the main process may
#   already have used the same datasets and stores (num_workers=0 loaders, validation, probes).
#   The rules, for every object that reaches a worker:
#
#   * What crosses the process boundary is configuration: datasets, stores, FetchConfig and the
#     loader's WorkerContext (config.py), inherited by fork or pickled by torch when it starts
#     the worker. Nothing that owns a thread, an event loop, a socket, a file descriptor or a
#     lock-holding client crosses: threads do not survive fork, and an inherited socket is
#     shared with the parent.
#   * Such resources are per-process state, created lazily in the process that uses them,
#     keyed on its pid, dropped when pickled, never closed in a forked child (NOTE [ Per-process
#     state ] in _process_local.py, the one helper that implements it). Fetch engines are built
#     by the worker itself after it started (worker.py), never in the main process for it.
#   * Memory shared on purpose is made by the main process before the workers start, with the
#     loader's multiprocessing context, and handed over in their start-up arguments: telemetry
#     rows (telemetry.py) and the adaptive budget (adaptive.py). Each row has one writer.
#   * Read-only mappings and loaded bytes may be inherited on purpose (storage/mapped.py,
#     storage/memory.py): pages are shared copy-on-write, never written.
#   * Patches to torch are made inside a worker only, for its own dataset, and undone on exit
#     (_torch_compat.override_map_fetcher); the main process's torch is never patched.
#   * Pools of our own processes fork before the consumer starts fetch threads
#     (batchup/work_pool.py).

from .datasets import S3ImageDataset, ScratchImageDataset, get_dataset
from . import telemetry
from .skip import SkipErrors, skip_collate
from .errors import ConcurrentDataLoaderError, ConfigError, DataFormatError, SampleLoadError, WorkersStoppedError
from .loader import (
    ConcurrentDataset,
    ConcurrentGetitems,
    ConcurrentGetitemsMixin,
    DataLoader,
    FetchConfig,
    concurrent_getitems,
)

__version__ = "0.1.0"

__all__ = [
    "DataLoader",
    "FetchConfig",
    "ConcurrentDataset",
    "ConcurrentGetitems",
    "ConcurrentGetitemsMixin",
    "concurrent_getitems",
    "get_dataset",
    "S3ImageDataset",
    "ScratchImageDataset",
    "ConcurrentDataLoaderError",
    "ConfigError",
    "DataFormatError",
    "SampleLoadError",
    "WorkersStoppedError",
    "__version__",
    "telemetry",
    "SkipErrors",
    "skip_collate",
]
