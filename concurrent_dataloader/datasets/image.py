"""Image classification datasets over a byte store (S3 or a local/network filesystem).

They implement the fetch/decode protocol: ``fetch_raw``/``fetch_raw_async`` only move bytes
(through the optional disk cache), ``decode`` does the CPU work (decode with the dataset's
``decoder``, transform) and never runs on the event loop. ``__getitem__`` chains the two, so the datasets
also work with the stock ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._closing import ClosesStore
from ..decoding import DECODERS, check_decode_device, check_decoder, decode_image, encoded_image
from ..errors import ConfigError, SampleLoadError, annotate_sample_error
from ..loader.protocol import ConcurrentDataset
from ..storage.base import ByteStore
from ..storage.cache import DiskCache
from ..storage.local import LocalStore
from ..storage.retry import RetryPolicy
from ..storage.s3 import DEFAULT_MAX_POOL_CONNECTIONS, S3Store
from ..storage.s3_http import LeanS3Store

__all__ = ["ImageDataset", "S3ImageDataset", "ScratchImageDataset", "decode_image", "DECODERS"]


class _PackedStrings:
    """A read-only list of strings in two numpy arrays (one UTF-8 blob + offsets).

    Why: a Python list of a million ``str`` objects is touched (refcounts) by every forked worker
    that indexes it, so each worker slowly copies the whole list ("copy-on-read", torch issue
    13246). Two numpy buffers have no per-item objects, so forked workers keep sharing the pages.
    """

    __slots__ = ("_blob", "_offsets")

    def __init__(self, items: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return self._blob[self._offsets[index]:self._offsets[index + 1]].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]


class ImageDataset(ClosesStore, ConcurrentDataset):
    """``(image, label)`` samples: ``keys[i]`` read from ``store``, ``labels[i]`` an int.

    After the default collate the labels are an int64 tensor. Without a transform the image is a
    ``PIL.Image`` (set one with :meth:`set_transform` before batching).

    ``decoder``: ``"pil"`` (an RGB ``PIL.Image``) or ``"torchvision"`` (a ``uint8`` CHW RGB tensor,
    for :mod:`concurrent_dataloader.transforms`); see :mod:`concurrent_dataloader.decoding`.
    ``decode_device="cuda"`` (with ``decoder="torchvision"``): ``decode`` hands on the encoded
    bytes as a uint8 tensor and applies no transform; batch with
    :func:`~concurrent_dataloader.decoding.collate_encoded` and decode in the main process with
    :func:`~concurrent_dataloader.decoding.decode_batch` (docs/decode.md).
    """

    def __init__(self, store: ByteStore, keys: Sequence[str], labels: Sequence[int], *,
                 transform: Callable[[Any], Any] | None = None, cache: DiskCache | None = None,
                 decoder: str = "pil", classes: dict[str, int] | None = None,
                 decode_device: str = "cpu") -> None:
        if len(keys) != len(labels):
            raise ConfigError(f"{len(keys)} keys but {len(labels)} labels")
        check_decoder(decoder)
        self.decode_device = check_decode_device(decode_device, decoder)
        self.store = store
        self._keys = _PackedStrings(keys)
        self._labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.cache = cache
        self.decoder = decoder
        self.classes = classes

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, index: int) -> str:
        """The key (S3) or relative path (scratch) of sample ``index``."""
        return self._keys[index]

    @property
    def keys(self) -> list[str]:
        """All keys, as a new list (the dataset itself keeps them packed, see ``_PackedStrings``)."""
        return self._keys.tolist()

    @property
    def labels(self) -> list[int]:
        return self._labels.tolist()

    @property
    def targets(self) -> list[int]:
        """torchvision's name for the labels (samplers such as class-balanced ones look for it)."""
        return self.labels

    def set_transform(self, transform: Callable[[Any], Any] | None) -> None:
        """Applied to each decoded image; set it before the DataLoader starts its workers."""
        self.transform = transform

    def describe(self, index: int) -> str:
        return self.store.describe(self._keys[index])

    def fetch_raw(self, index: int) -> bytes:
        try:
            return self._fetch(index)
        except Exception as exc:
            # The note names this dataset's own index (the position in the index file), even when
            # the loader sees it through a Subset.
            raise annotate_sample_error(exc, index, self._safe_describe(index))

    async def fetch_raw_async(self, index: int) -> bytes:
        try:
            return await self._afetch(index)
        except Exception as exc:
            raise annotate_sample_error(exc, index, self._safe_describe(index))

    def _fetch(self, index: int) -> bytes:
        key = self._keys[index]
        if self.cache is not None:
            data = self.cache.get(key)
            if data is not None:
                return data
        data = self.store.get(key)
        if self.cache is not None:
            self.cache.put(key, data)
        return data

    async def _afetch(self, index: int) -> bytes:
        key = self._keys[index]
        loop = asyncio.get_running_loop()
        if self.cache is not None:
            # NOTE: cache reads/writes are blocking file I/O; keep them off the event loop.
            data = await loop.run_in_executor(None, self.cache.get, key)
            if data is not None:
                return data
        data = await self.store.aget(key)
        if self.cache is not None:
            await loop.run_in_executor(None, self.cache.put, key, data)
        return data

    def decode(self, index: int, raw: bytes) -> tuple[Any, int]:
        if self.decode_device != "cpu":  # the GPU path: the main process decodes (decoding.decode_batch)
            return encoded_image(raw, index, self._safe_describe(index)), int(self._labels[index])
        try:
            image = decode_image(raw, self.decoder)
        except Exception as exc:
            where = self.describe(index)
            err = SampleLoadError(f"{where} (index {index}): cannot decode image "
                                  f"({len(raw)} bytes): {type(exc).__name__}: {exc}", index=index, key=where)
            raise annotate_sample_error(err, index, where) from exc
        if self.transform is not None:
            try:
                image = self.transform(image)
            except Exception as exc:
                raise annotate_sample_error(exc, index, self._safe_describe(index))
        return image, int(self._labels[index])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        # The stock torch DataLoader calls this directly; attach index and key like our fetchers do.
        try:
            return self.decode(index, self.fetch_raw(index))
        except Exception as exc:
            raise annotate_sample_error(exc, index, self._safe_describe(index))

    def _safe_describe(self, index: int) -> str | None:
        try:
            return self.describe(index)
        except Exception:
            return None

    @property
    def _fetch_store(self) -> ByteStore:
        return self.store  # close() and the loader's shutdown hooks release its clients (ClosesStore)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images from {self.store!r}, cache={self.cache!r})"


S3_CLIENTS = {"botocore": S3Store, "lean": LeanS3Store}


class S3ImageDataset(ImageDataset):
    """Images stored as objects ``s3://<bucket>/<prefix><key>`` (any S3-compatible server).

    ``s3_options`` go to the store: ``endpoint_url``, ``region_name``, ``addressing_style``,
    credentials, ``max_pool_connections`` (keep it at least ``num_fetch_workers``), ``retry``.
    ``s3_client="botocore"`` (default) uses :class:`~concurrent_dataloader.storage.S3Store`
    (boto3/aiobotocore, every S3 feature and credential source); ``"lean"`` uses
    :class:`~concurrent_dataloader.storage.LeanS3Store`, our SigV4 client that costs ~0.05-0.1 ms of
    CPU per GET instead of ~1 ms (same endpoint, addressing, TLS and credential settings).
    """

    def __init__(self, bucket: str, keys: Sequence[str], labels: Sequence[int], *, prefix: str = "",
                 max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS, retry: RetryPolicy | None = None,
                 transform: Callable[[Any], Any] | None = None, cache: DiskCache | None = None,
                 decoder: str = "pil", classes: dict[str, int] | None = None, s3_client: str = "botocore",
                 decode_device: str = "cpu", **s3_options: Any) -> None:
        if s3_client not in S3_CLIENTS:
            raise ConfigError(f"s3_client must be one of {sorted(S3_CLIENTS)}, got {s3_client!r}")
        if retry is not None:
            s3_options["retry"] = retry
        store = S3_CLIENTS[s3_client](bucket, prefix, max_pool_connections=max_pool_connections, **s3_options)
        super().__init__(store, keys, labels, transform=transform, cache=cache, decoder=decoder, classes=classes,
                         decode_device=decode_device)


class ScratchImageDataset(ImageDataset):
    """Images on a local or network filesystem: ``root / key``. Threads use plain reads, asyncio uses aiofiles."""

    def __init__(self, root: str | os.PathLike | None, keys: Sequence[str], labels: Sequence[int], *,
                 transform: Callable[[Any], Any] | None = None, cache: DiskCache | None = None,
                 decoder: str = "pil", classes: dict[str, int] | None = None, decode_device: str = "cpu") -> None:
        store = LocalStore(Path(root) if root is not None else Path())
        super().__init__(store, keys, labels, transform=transform, cache=cache, decoder=decoder, classes=classes,
                         decode_device=decode_device)
