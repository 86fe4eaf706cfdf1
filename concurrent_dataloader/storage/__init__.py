"""Byte sources: one module per store, registered by URL scheme in :mod:`.base`."""

from .base import STORE_REGISTRY, ByteRange, ByteStore, open_store, register_store
from .local import LocalStore

__all__ = ["ByteRange", "ByteStore", "LocalStore", "STORE_REGISTRY", "open_store", "register_store"]
