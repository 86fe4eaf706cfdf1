"""concurrent_dataloader: read image datasets from high-latency storage as fast as from local disk.

``from concurrent_dataloader import DataLoader`` is a drop-in for ``torch.utils.data.DataLoader``.
"""

from .errors import ConcurrentDataLoaderError, ConfigError, DataFormatError, SampleLoadError
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
    "ConcurrentDataLoaderError",
    "ConfigError",
    "DataFormatError",
    "SampleLoadError",
    "__version__",
]
