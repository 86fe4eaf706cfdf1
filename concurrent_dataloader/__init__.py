"""concurrent_dataloader: read image datasets from high-latency storage as fast as from local disk.

``from concurrent_dataloader import DataLoader`` is a drop-in for ``torch.utils.data.DataLoader``.
"""

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
