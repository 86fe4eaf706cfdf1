"""Raw uint8 array files (the memmap layout) shared by MemmapReader and DenseMemmapReader.

The seed writes ``np.memmap`` files: raw C-order bytes with no header, despite the ``.npy``
name. We write the same, so the seed's readers read our files; our readers also accept real
NPY files (magic ``\\x93NUMPY``), parsed with ``allow_pickle`` semantics off (object dtypes
are refused; nothing is ever unpickled).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import DataFormatError
from .writers import FileWriter

if TYPE_CHECKING:  # pragma: no cover
    from .reader import ConvertedReader

__all__ = ["RawArrayWriter", "array_offset", "parse_small_array"]

_NPY_MAGIC = b"\x93NUMPY"


class RawArrayWriter(FileWriter):
    """Appends each batch's bytes to headerless temp files (images uint8, labels ``label_dtype``)."""

    def __init__(self, finals: dict[str, Path], n_items: int, sample_shape: tuple[int, ...],
                 label_shape: tuple[int, ...] = (), label_dtype: str = "<i8") -> None:
        super().__init__(finals, n_items)
        self.sample_shape = tuple(sample_shape)
        self.label_shape = tuple(label_shape)
        self.label_dtype = np.dtype(label_dtype)
        self._files = {role: open(tmp, "wb") for role, tmp in self.temps.items()}

    def _write(self, images: Any, labels: Any) -> None:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.shape[1:] != self.sample_shape:
            raise DataFormatError(f"{self.finals['images']}: batch of shape {images.shape[1:]}, expected {self.sample_shape}")
        labels = np.ascontiguousarray(labels, dtype=self.label_dtype)
        if labels.shape != (len(images), *self.label_shape):
            raise DataFormatError(f"{self.finals['labels']}: labels of shape {labels.shape}, expected {(len(images), *self.label_shape)}")
        self._files["images"].write(memoryview(images).cast("B"))
        self._files["labels"].write(memoryview(labels).cast("B"))

    def _close(self) -> None:
        for f in self._files.values():
            if not f.closed:
                f.flush()
                f.close()


def _npy_header(head: bytes, where: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    bio = io.BytesIO(head)
    try:
        major, _ = np.lib.format.read_magic(bio)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(bio)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(bio)
    except Exception as exc:
        raise DataFormatError(f"{where}: corrupt NPY header ({exc})") from None
    if dtype.hasobject:
        raise DataFormatError(f"{where}: NPY file holds Python objects; refusing to unpickle it")
    return tuple(shape), dtype, bool(fortran), bio.tell()


def array_offset(reader: "ConvertedReader", key: str, count: int, item_shape: tuple[int, ...],
                 dtype: str = "|u1") -> int:
    """Byte offset of the first item in ``key`` (0 for raw files), after checking the file's
    size against ``count`` items of ``item_shape``: a short file is a clear error here."""
    dt = np.dtype(dtype)
    expected = count * math.prod(item_shape) * dt.itemsize
    where = reader.store.describe(key)
    size = reader.size_of(key)
    if size == expected:
        return 0
    if size > 10:
        head = reader.read(key, 0, min(size, 12))
        if head.startswith(_NPY_MAGIC):
            major = head[6]
            hlen = int.from_bytes(head[8:10], "little") + 10 if major == 1 else int.from_bytes(head[8:12], "little") + 12
            shape, fdt, fortran, offset = _npy_header(reader.read(key, 0, min(size, hlen)), where)
            if shape != (count, *item_shape) or fdt.newbyteorder("=") != dt.newbyteorder("=") or fortran:
                raise DataFormatError(f"{where}: NPY array {shape} {fdt}{' (Fortran order)' if fortran else ''} does not "
                                      f"match the metadata ({(count, *item_shape)} {dt})")
            if size < offset + expected:
                raise DataFormatError(f"{where}: {size} bytes, NPY header + data need {offset + expected}: truncated")
            return offset
    what = "shorter" if size < expected else "longer"
    raise DataFormatError(f"{where}: {size} bytes, but the metadata says {count} samples of {item_shape} {dt} = "
                          f"{expected} bytes; the file is {what} than it should be (truncated, corrupt or from "
                          "another conversion)")


def parse_small_array(reader: "ConvertedReader", key: str, count: int, item_shape: tuple[int, ...],
                      dtype: str) -> np.ndarray:
    """Read a whole (small) raw or NPY array file, e.g. the labels of one file."""
    offset = array_offset(reader, key, count, item_shape, dtype)
    dt = np.dtype(dtype)
    nbytes = count * math.prod(item_shape) * dt.itemsize
    data = reader.read(key, offset, nbytes) if nbytes else b""
    return np.frombuffer(data, dtype=dt).reshape((count, *item_shape))
