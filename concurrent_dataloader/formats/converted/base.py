"""Compatibility: the names that lived here before the split, re-exported.

The converted formats' machinery is now one module per concept:

* :mod:`.layout`     on-disk layout shared by both sides: keys, counts, metadata, image modes
* :mod:`.reader`     :class:`ConvertedReader`, the training hot path
* :mod:`.registry`   :data:`FORMATS`, :func:`register_format`, :func:`open_converted`
* offline conversion: :mod:`.encoders` (sample -> stored form), :mod:`.sources` (the input),
  :mod:`.writers` (one file group), :mod:`.converters` (plan, resume, distributed, write loop)

A format is one module that subclasses :class:`ConverterFixedSize` or
:class:`ConverterFlexibleSize` (declaring its ``writer``) and :class:`ConvertedReader`
(implementing ``_fetch`` and ``_decode``), then calls :func:`register_format`.
"""

from __future__ import annotations

from .converters import ConversionResult, Converter, ConverterFixedSize, ConverterFlexibleSize, OutputExistsError
from .encoders import (DenseLabelEncoder, FixedImageEncoder, FlexibleImageEncoder, ResizeAndConvert, encode_image,
                       int_label)
from .layout import (CLASSES_KEY, FORMAT_VERSION, IMAGE_MODES, LABEL_MODES, METADATA_KEY, PLAN_KEY, Layout, array_shape,
                     mode_channels, normalize_shape, open_image, parse_metadata)
from .reader import ConvertedReader
from .registry import FORMATS, FormatSpec, get_format, open_converted, register_format
from .sources import DatasetSource, FolderSource, collate_arrays, collate_lists
from .writers import FileWriter

__all__ = [
    "ResizeAndConvert",
    "Converter",
    "ConverterFixedSize",
    "ConverterFlexibleSize",
    "ConvertedReader",
    "FileWriter",
    "ConversionResult",
    "OutputExistsError",
    "FormatSpec",
    "FORMATS",
    "register_format",
    "get_format",
    "open_converted",
    "IMAGE_MODES",
    "array_shape",
    # Also importable from here, as before the split.
    "LABEL_MODES", "METADATA_KEY", "CLASSES_KEY", "PLAN_KEY", "FORMAT_VERSION", "Layout", "parse_metadata",
    "normalize_shape", "mode_channels", "open_image", "FixedImageEncoder", "FlexibleImageEncoder",
    "DenseLabelEncoder", "encode_image", "int_label", "FolderSource", "DatasetSource", "collate_arrays",
    "collate_lists",
]
