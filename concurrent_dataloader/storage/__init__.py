"""Byte sources: one module per store, registered by URL scheme in :mod:`.base`.

``s3.py`` imports botocore/aiobotocore (the ``s3`` extra) only when a client is first needed.
"""

from .base import STORE_REGISTRY, ByteRange, ByteStore, open_store, register_store
from .cache import DiskCache
from .hedged import HedgedStore
from .local import LocalStore
from .mapped import MmapStore
from .memory import MemoryStore
from .pread import PreadStore
from .retry import RetryCounters, RetryPolicy
from .s3_http import LeanS3Store
from .s3 import BucketNotFoundError, ObjectNotFoundError, S3AccessDeniedError, S3Error, S3Store, parse_s3_url

__all__ = [
    "ByteRange", "ByteStore", "LocalStore", "PreadStore", "MmapStore", "MemoryStore", "STORE_REGISTRY", "open_store", "register_store",
    "RetryCounters", "RetryPolicy", "DiskCache", "HedgedStore",
    "S3Store", "LeanS3Store", "S3Error", "ObjectNotFoundError", "BucketNotFoundError", "S3AccessDeniedError", "parse_s3_url",
]
