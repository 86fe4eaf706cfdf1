"""Converted formats (seed 001): convert an image dataset once, then train from the converted files.

Fixed-size formats store decoded pixels (memmap, HDF5, dense memmap); flexible-size formats
store each image's encoded bytes (Parquet, Arrow IPC, tar, dense IPC). Every format is one
module registering a converter and a reader; :data:`FORMATS` lists them.
"""

from .base import (
    FORMATS,
    ConversionResult,
    ConvertedReader,
    Converter,
    ConverterFixedSize,
    ConverterFlexibleSize,
    FileWriter,
    FormatSpec,
    OutputExistsError,
    ResizeAndConvert,
    get_format,
    open_converted,
    register_format,
)
from .memmap import MemmapConverter, MemmapReader

__all__ = [
    "FORMATS", "FormatSpec", "register_format", "get_format", "open_converted",
    "Converter", "ConverterFixedSize", "ConverterFlexibleSize", "ConvertedReader", "FileWriter",
    "ConversionResult", "OutputExistsError", "ResizeAndConvert",
    "MemmapConverter", "MemmapReader",
]
