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
from .dense_ipc import DenseIpcConverter, DenseIpcReader
from .dense_memmap import DenseMemmapConverter, DenseMemmapReader
from .hdf5 import HDF5Converter, HDF5Reader, Hdf5Converter, Hdf5Reader
from .ipc import IpcConverter, IpcReader
from .memmap import MemmapConverter, MemmapReader
from .parquet import ParquetConverter, ParquetReader
from .tar import TarConverter, TarReader

__all__ = [
    "FORMATS", "FormatSpec", "register_format", "get_format", "open_converted",
    "Converter", "ConverterFixedSize", "ConverterFlexibleSize", "ConvertedReader", "FileWriter",
    "ConversionResult", "OutputExistsError", "ResizeAndConvert",
    "MemmapConverter", "MemmapReader", "HDF5Converter", "HDF5Reader", "Hdf5Converter", "Hdf5Reader",
    "ParquetConverter", "ParquetReader", "IpcConverter", "IpcReader", "TarConverter", "TarReader",
    "DenseMemmapConverter", "DenseMemmapReader", "DenseIpcConverter", "DenseIpcReader",
]
