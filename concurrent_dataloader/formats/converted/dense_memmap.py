"""Dense-label memmap format: fixed-size images plus a per-pixel label map per sample.

Layout: ``images/images_<n>.npy`` as in :mod:`.memmap`; ``labels/labels_<n>.npy`` holds
``(count, H, W[, C])`` uint8 label maps (``C`` from ``label_mode``), raw bytes like the images.
Both are read with one ranged read each per sample.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import ConfigError, DataFormatError
from ._arrays import RawArrayWriter, array_offset
from .converters import ConverterFixedSize
from .encoders import DenseLabelEncoder
from .layout import IMAGE_MODES, LABEL_MODES, array_shape, mode_channels
from .registry import register_format
from .memmap import MemmapReader

__all__ = ["DenseMemmapConverter", "DenseMemmapReader"]


class DenseMemmapConverter(ConverterFixedSize):
    """Convert a Dataset yielding ``(image, label_map)`` (segmentation masks).

    ``label_mode`` ("L" default, "P" keeps palette indices, "RGB", "RGBA") says how label maps
    are stored; they must have the images' ``shape`` (or pass ``resize=True``: nearest-neighbour).
    """

    format_name = "dense_memmap"
    image_ext = "npy"
    label_ext = "npy"
    dense = True

    def __init__(self, *args: Any, label_mode: str = "L", **kwargs: Any) -> None:
        mode_channels(label_mode, LABEL_MODES, "label_mode")
        self.label_mode = label_mode
        super().__init__(*args, **kwargs)
        self.label_shape = array_shape(self.shape, label_mode, LABEL_MODES)

    def _label_encoder(self) -> DenseLabelEncoder:
        return DenseLabelEncoder(self.shape, self.label_mode, bool(self.resize))

    def _format_params(self) -> dict[str, Any]:
        return {**super()._format_params(), "label_mode": self.label_mode}

    def _metadata_extra(self) -> dict[str, Any]:
        return {**super()._metadata_extra(), "label_mode": self.label_mode,
                "label_shape": list(array_shape(self.shape, self.label_mode, LABEL_MODES))}

    writer = RawArrayWriter

    def _writer_args(self) -> tuple:
        return (self.sample_shape, self.label_shape, "|u1")


class DenseMemmapReader(MemmapReader):
    """Items are ``(image, label_map)``, both PIL images; ``target_transform`` gets the map."""

    format_name = "dense_memmap"

    def _setup(self) -> None:
        super()._setup()
        # The seed's dense files have no label_mode: their label maps have the image's shape and mode.
        self.label_mode = self.metadata.get("label_mode", self.mode)
        table = LABEL_MODES if self.label_mode in LABEL_MODES else IMAGE_MODES
        try:
            self.label_shape = array_shape(self.shape, self.label_mode, table)
        except ConfigError:
            raise DataFormatError(f"{self.dataset_path}: unsupported label_mode {self.label_mode!r}") from None
        self.label_bytes = math.prod(self.label_shape)

    def _load_file_info(self, n: int) -> tuple[int, int]:
        count = self.file_len(n)
        return (array_offset(self, self.image_key(n), count, self.sample_shape),
                array_offset(self, self.label_key(n), count, self.label_shape))

    def _fetch(self, n: int, j: int) -> tuple[bytes, bytes]:
        img_off, lab_off = self.file_info(n)
        return (self.read(self.image_key(n), img_off + j * self.sample_bytes, self.sample_bytes),
                self.read(self.label_key(n), lab_off + j * self.label_bytes, self.label_bytes))

    async def _afetch(self, n: int, j: int) -> tuple[bytes, bytes]:
        img_off, lab_off = await self._acached("files", n, self._load_file_info)
        image = await self.aread(self.image_key(n), img_off + j * self.sample_bytes, self.sample_bytes)
        label = await self.aread(self.label_key(n), lab_off + j * self.label_bytes, self.label_bytes)
        return image, label

    def check_files(self) -> None:
        for n in range(self.total_num_arrays):
            self.file_info(n)

    def _decode(self, raw: tuple[bytes, bytes]) -> tuple[Any, Any]:
        from PIL import Image

        image, label = raw
        h, w = self.shape
        return Image.frombytes(self.mode, (w, h), image), Image.frombytes(self.label_mode, (w, h), label)


register_format("dense_memmap", DenseMemmapConverter, DenseMemmapReader,
                "fixed-size images + per-pixel uint8 label maps as raw arrays (segmentation)")
