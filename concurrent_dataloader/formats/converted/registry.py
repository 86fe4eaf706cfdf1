"""The registry of converted formats: each format module calls :func:`register_format`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from ...errors import ConfigError, DataFormatError
from .layout import METADATA_KEY, parse_metadata
from .reader import ConvertedReader, open_dataset_store

__all__ = ["FormatSpec", "FORMATS", "register_format", "get_format", "open_converted"]

@dataclass(frozen=True)
class FormatSpec:
    name: str
    converter: type
    reader: type
    fixed_size: bool
    description: str


FORMATS: dict[str, FormatSpec] = {}


def register_format(name: str, converter: type, reader: type, description: str = "") -> FormatSpec:
    """Make a format known to :func:`get_format`, :func:`open_converted` and the CLI."""
    spec = FormatSpec(name, converter, reader, bool(getattr(converter, "fixed_size", True)), description)
    FORMATS[name] = spec
    return spec


def get_format(name: str) -> FormatSpec:
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown converted format {name!r}; known: {sorted(FORMATS)}") from None


def open_converted(dataset_path: str | os.PathLike, transform: Callable | None = None,
                   target_transform: Callable | None = None, **kwargs: Any) -> ConvertedReader:
    """Open a converted dataset with the reader its metadata names (datasets we wrote)."""
    store = kwargs.pop("store", None) or open_dataset_store(str(dataset_path), kwargs.pop("storage_options", None) or {})
    try:
        meta = parse_metadata(store.get(METADATA_KEY), store.describe(METADATA_KEY))
    except (FileNotFoundError, KeyError):
        raise DataFormatError(f"{store.describe(METADATA_KEY)} not found: not a converted dataset, or its conversion "
                              "did not finish") from None
    fmt = meta.get("format")
    if fmt is None:
        raise DataFormatError(f"{dataset_path}: metadata names no format (a seed conversion?); open it with the "
                              "matching reader class, e.g. MemmapReader")
    if fmt.lower() not in FORMATS:
        raise DataFormatError(f"{store.describe(METADATA_KEY)}: unknown format {fmt[:80]!r}; known: {sorted(FORMATS)}")
    return get_format(fmt).reader(dataset_path, transform, target_transform, store=store, **kwargs)
