"""Memmap format: fixed-size uint8 pixels in raw array files, one ranged read per sample.

Layout: ``images/images_<n>.npy`` holds ``(count, H, W[, C])`` uint8 and
``labels/labels_<n>.npy`` holds ``(count,)`` int64, both raw C-order little-endian bytes with
no header (the seed's ``np.memmap`` files); readers also accept real NPY files.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .converters import ConverterFixedSize
from .reader import ConvertedReader
from .registry import register_format
from ._arrays import RawArrayWriter, array_offset, parse_small_array

__all__ = ["MemmapConverter", "MemmapReader"]


class MemmapConverter(ConverterFixedSize):
    """Convert to raw uint8 arrays; see :class:`ConverterFixedSize` for the arguments."""

    format_name = "memmap"
    image_ext = "npy"
    label_ext = "npy"

    writer = RawArrayWriter


class MemmapReader(ConvertedReader):
    """Reads a memmap conversion: sample ``j`` of file ``n`` is bytes
    ``[j * H*W*C, (j+1) * H*W*C)`` of ``images_<n>.npy`` (after an NPY header, if any)."""

    format_name = "memmap"
    image_ext = "npy"
    label_ext = "npy"

    def _load_file_info(self, n: int) -> int:
        return array_offset(self, self.image_key(n), self.file_len(n), self.sample_shape)

    def _load_labels(self, n: int) -> np.ndarray:
        return parse_small_array(self, self.label_key(n), self.file_len(n), (), "<i8")

    def _fetch(self, n: int, j: int) -> tuple[bytes, int]:
        offset = self.file_info(n)
        label = int(self.labels_of(n)[j])
        return self.read(self.image_key(n), offset + j * self.sample_bytes, self.sample_bytes), label

    async def _afetch(self, n: int, j: int) -> tuple[bytes, int]:
        offset = await self._acached("files", n, self._load_file_info)
        labels = await self._acached("labels", n, self._load_labels)
        data = await self.aread(self.image_key(n), offset + j * self.sample_bytes, self.sample_bytes)
        return data, int(labels[j])

    def _decode(self, raw: tuple[bytes, int]) -> tuple[Any, int]:
        from PIL import Image

        data, label = raw
        h, w = self.shape
        return Image.frombytes(self.mode, (w, h), data), label


register_format("memmap", MemmapConverter, MemmapReader,
                "fixed-size raw uint8 arrays (.npy names, no header, as the seed); one ranged read per sample")
