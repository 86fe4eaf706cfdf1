"""The on-disk layout of a converted dataset, shared by readers and converters.

A converted dataset is a directory (local, or copied to any :class:`ByteStore` such as S3)::

    images/images_<n>.<ext>        n = 0 .. total_num_arrays-1, num_images_per_array each
    labels/labels_<n>.<ext>        (the last file holds len_last_array when that is not 0)
    metadata/metadata.json         written last: its presence means "conversion complete"
    metadata/class_to_integer_mapping.json
    metadata/conversion.json       the conversion plan, written first: lets a rerun resume

This module holds what both sides must agree on (keys, file counts, metadata checks, image
modes and shapes, decoding one stored image), so the reader on the training hot path does not
import the offline converters.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import ConfigError, DataFormatError

__all__ = [
    "METADATA_KEY", "CLASSES_KEY", "PLAN_KEY", "FORMAT_VERSION", "IMAGE_MODES", "LABEL_MODES",
    "normalize_shape", "mode_channels", "array_shape", "open_image", "Layout", "parse_metadata",
]

METADATA_KEY = "metadata/metadata.json"
CLASSES_KEY = "metadata/class_to_integer_mapping.json"
PLAN_KEY = "metadata/conversion.json"
FORMAT_VERSION = 1

# Modes stored as uint8 pixels, with their channel count. ("1", "I", "F" and "P" are not
# representable as plain uint8 pixels without losing information, so they are refused.)
IMAGE_MODES: dict[str, int] = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}
# Dense label maps may also be palette images: the stored values are the palette indices.
LABEL_MODES: dict[str, int] = {"L": 1, "P": 1, "RGB": 3, "RGBA": 4}



def normalize_shape(shape: Any, what: str = "shape") -> tuple[int, int]:
    """``(height, width)``; an int means a square."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be (height, width), got {shape!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{what} must be positive, got {(h, w)}")
    return h, w


def mode_channels(mode: str, table: dict[str, int] = IMAGE_MODES, what: str = "im_mode") -> int:
    try:
        return table[mode]
    except KeyError:
        raise ConfigError(f"{what} {mode!r} is not supported; use one of {sorted(table)}") from None


def array_shape(shape: Sequence[int], mode: str, table: dict[str, int] = IMAGE_MODES) -> tuple[int, ...]:
    """The numpy shape of one stored sample: ``(H, W)`` for one channel, else ``(H, W, C)``."""
    h, w = normalize_shape(shape)
    c = mode_channels(mode, table)
    return (h, w) if c == 1 else (h, w, c)



def open_image(data: bytes, where: str, decoder: str = "pil") -> Any:
    """Decode fully (so truncation shows up here, not later) or raise naming ``where``.

    ``decoder="pil"``: the ``PIL.Image`` in its stored mode; otherwise the registry's decoder
    (``decoding.decode_image``, e.g. a uint8 CHW RGB tensor for ``"torchvision"``)."""
    from PIL import Image

    try:
        if decoder != "pil":
            from ...decoding import decode_image

            return decode_image(data, decoder)
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Exception as exc:
        raise DataFormatError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class Layout:
    """File counts implied by (len, num_images_per_array), with the seed's conventions:
    ``total_num_arrays`` counts every file, ``len_last_array`` is ``len % per_file`` (0 = full)."""

    length: int
    per_file: int

    @property
    def total(self) -> int:
        return math.ceil(self.length / self.per_file)

    @property
    def last(self) -> int:
        return self.length % self.per_file

    def file_len(self, n: int) -> int:
        if n == self.total - 1 and self.last:
            return self.last
        return self.per_file


def parse_metadata(data: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DataFormatError(f"{where}: not valid JSON ({str(exc)[:200]}); the conversion is corrupt") from None
    if not isinstance(meta, dict):
        raise DataFormatError(f"{where}: expected a JSON object")
    required = ("num_images_per_array", "len", "len_last_array", "total_num_arrays")
    missing = [k for k in required if k not in meta]
    if missing:
        raise DataFormatError(f"{where}: missing {missing}; not a converted dataset's metadata")
    for k in required:
        if not isinstance(meta[k], int) or isinstance(meta[k], bool) or meta[k] < 0:
            raise DataFormatError(f"{where}: {k}={meta[k]!r} is not a non-negative integer")
    for k, ok, what in (("format", lambda v: isinstance(v, str), "a string"),
                        ("mode", lambda v: v is None or isinstance(v, str), "a string"),
                        ("shape", lambda v: v is None or (isinstance(v, list) and all(
                            isinstance(x, int) and not isinstance(x, bool) for x in v)), "a list of integers")):
        if k in meta and not ok(meta[k]):
            raise DataFormatError(f"{where}: {k}={str(meta[k])[:80]} is not {what}")
    layout = Layout(meta["len"], max(1, meta["num_images_per_array"]))
    if meta["num_images_per_array"] < 1 or meta["len"] < 1 or (meta["total_num_arrays"], meta["len_last_array"]) != (layout.total, layout.last):
        raise DataFormatError(
            f"{where}: inconsistent counts: len={meta['len']}, num_images_per_array={meta['num_images_per_array']} imply "
            f"total_num_arrays={layout.total}, len_last_array={layout.last}, but the file says "
            f"{meta['total_num_arrays']}, {meta['len_last_array']}")
    return meta
