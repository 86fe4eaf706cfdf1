"""HDF5 format: fixed-size uint8 pixels in HDF5 files (datasets ``images`` and ``labels``).

Layout: ``images/images_<n>.h5`` with dataset ``images`` ``(count, H, W[, C])`` uint8 and
``labels/labels_<n>.h5`` with dataset ``labels`` ``(count,)`` int64, as the seed writes them.

We write contiguous, uncompressed datasets, so the reader asks h5py once per file (per
process) where the pixel data starts and then reads samples with plain ranged reads: no h5py
call (and no h5py global lock) on the hot path, and one ranged GET per sample from S3.
Chunked or compressed files written by other tools still work, through h5py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import DataFormatError
from ._io import RangedFile
from .converters import ConverterFixedSize
from .reader import ConvertedReader
from .registry import register_format
from .writers import FileWriter

__all__ = ["HDF5Converter", "HDF5Reader", "Hdf5Converter", "Hdf5Reader"]


class _H5Writer(FileWriter):
    def __init__(self, finals: dict, n_items: int, sample_shape: tuple[int, ...]) -> None:
        import h5py

        super().__init__(finals, n_items)
        self._files = {}
        self._pos = 0
        try:
            self._files["images"] = h5py.File(self.temps["images"], "w")
            self._images = self._files["images"].create_dataset(
                "images", shape=(n_items, *sample_shape), dtype=np.uint8, track_times=False)
            self._files["labels"] = h5py.File(self.temps["labels"], "w")
            self._labels = self._files["labels"].create_dataset("labels", shape=(n_items,), dtype=np.int64,
                                                                track_times=False)
        except BaseException:
            self.abort()
            raise

    def _write(self, images: Any, labels: Any) -> None:
        k = len(images)
        self._images[self._pos:self._pos + k] = np.asarray(images, dtype=np.uint8)
        self._labels[self._pos:self._pos + k] = np.asarray(labels, dtype=np.int64)
        self._pos += k

    def _close(self) -> None:
        for f in self._files.values():
            if f.id.valid:
                f.close()


class HDF5Converter(ConverterFixedSize):
    """Convert to HDF5 files; see :class:`ConverterFixedSize` for the arguments."""

    format_name = "hdf5"
    image_ext = "h5"
    label_ext = "h5"

    writer = _H5Writer


@dataclass
class _H5Info:
    offset: int | None          # start of the contiguous pixel data, or None: read via h5py
    dataset: Any = None         # the open h5py dataset when offset is None
    lock: Any = None


class HDF5Reader(ConvertedReader):
    """Reads an HDF5 conversion (ours or the seed's)."""

    format_name = "hdf5"
    image_ext = "h5"
    label_ext = "h5"

    def _open_h5(self, key: str) -> tuple[Any, int]:
        import h5py

        where = self.store.describe(key)
        size = self.size_of(key)
        try:
            if self.is_local:
                return h5py.File(self.store.path(key), "r"), size
            # NOTE: h5py reads through our file object (ranged GETs with a block cache).
            return h5py.File(RangedFile(self.store, key, size, block_size=256 << 10), "r"), size
        except OSError as exc:
            raise DataFormatError(f"{where}: not a readable HDF5 file ({exc}); truncated or corrupt") from None

    def _dataset(self, f: Any, name: str, key: str, shape: tuple[int, ...], dtype: Any) -> Any:
        where = self.store.describe(key)
        if name not in f:
            raise DataFormatError(f"{where}: no dataset {name!r} (has {sorted(f.keys())})")
        d = f[name]
        if d.shape != shape or d.dtype != dtype:
            raise DataFormatError(f"{where}: dataset {name!r} is {d.shape} {d.dtype}, metadata says {shape} {np.dtype(dtype)}")
        return d

    def _load_file_info(self, n: int) -> _H5Info:
        key = self.image_key(n)
        count = self.file_len(n)
        f, size = self._open_h5(key)
        keep = False
        try:
            d = self._dataset(f, "images", key, (count, *self.sample_shape), np.uint8)
            offset = d.id.get_offset() if d.chunks is None and d.compression is None else None
            if offset is not None:
                if size < offset + count * self.sample_bytes:
                    raise DataFormatError(f"{self.store.describe(key)}: {size} bytes, but its pixel data needs "
                                          f"{offset + count * self.sample_bytes}: truncated")
                return _H5Info(offset)
            keep = True
            self._state().handles.append(f)
            return _H5Info(None, d, threading.Lock())
        finally:
            if not keep:
                f.close()

    def _load_labels(self, n: int) -> np.ndarray:
        import io

        import h5py

        key = self.label_key(n)
        if self.is_local:
            f, _ = self._open_h5(key)
        else:
            data = self.read_all(key)
            try:
                f = h5py.File(io.BytesIO(data), "r")
            except OSError as exc:
                raise DataFormatError(f"{self.store.describe(key)}: not a readable HDF5 file ({exc})") from None
        with f:
            d = f["labels"] if "labels" in f else None
            if d is None or d.shape != (self.file_len(n),):
                got = None if d is None else d.shape
                raise DataFormatError(f"{self.store.describe(key)}: dataset 'labels' is {got}, expected ({self.file_len(n)},)")
            return np.asarray(d[()], dtype=np.int64)

    def _fetch(self, n: int, j: int) -> tuple[bytes, int]:
        info = self.file_info(n)
        label = int(self.labels_of(n)[j])
        if info.offset is not None:
            return self.read(self.image_key(n), info.offset + j * self.sample_bytes, self.sample_bytes), label
        with info.lock:
            return np.ascontiguousarray(info.dataset[j]).tobytes(), label

    async def _afetch(self, n: int, j: int) -> tuple[bytes, int]:
        info = await self._acached("files", n, self._load_file_info)
        if info.offset is None:
            return await super()._afetch(n, j)
        labels = await self._acached("labels", n, self._load_labels)
        data = await self.aread(self.image_key(n), info.offset + j * self.sample_bytes, self.sample_bytes)
        return data, int(labels[j])

    def _decode(self, raw: tuple[bytes, int]) -> tuple[Any, int]:
        from PIL import Image

        data, label = raw
        h, w = self.shape
        return Image.frombytes(self.mode, (w, h), data), label


# The seed's spelling.
Hdf5Converter = HDF5Converter
Hdf5Reader = HDF5Reader

register_format("hdf5", HDF5Converter, HDF5Reader,
                "fixed-size uint8 pixels in HDF5 datasets 'images'/'labels'; contiguous, read by byte offset")
