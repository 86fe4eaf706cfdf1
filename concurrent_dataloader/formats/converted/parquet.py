"""Parquet format: each image's encoded bytes in a binary column, one row group per sample.

Layout (the seed's "parquet v1"): ``images/images_<n>.parquet`` with a binary column
``images`` and ``labels/labels_<n>.parquet`` with an int64 column ``labels``.

Random access: with ``row_group_size=1`` (our default) each sample is one row group, so the
reader, after reading a file's footer once per process, fetches exactly that row group's
column chunk with one ranged read (one GET on S3) and lets pyarrow decode it from memory.
Files with bigger row groups (the seed wrote one per file) still work: the whole row group
is fetched and a small per-process cache serves its other rows.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError, DataFormatError
from ._io import SparseFile, parquet_footer
from .converters import ConverterFlexibleSize
from .layout import open_image
from .reader import ConvertedReader
from .registry import register_format
from .writers import FileWriter

__all__ = ["ParquetConverter", "ParquetReader"]

_COMPRESSIONS = ("NONE", "SNAPPY", "GZIP", "BROTLI", "ZSTD", "LZ4")


class _ParquetWriter(FileWriter):
    def __init__(self, finals: dict, n_items: int, row_group_size: int, compression: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(finals, n_items)
        self._pa = pa
        self._schema = pa.schema([pa.field("images", pa.binary(), nullable=False)])
        # Dictionary encoding and statistics are useless for unique image blobs and cost CPU.
        self._writer = pq.ParquetWriter(str(self.temps["images"]), self._schema, compression=compression,
                                        use_dictionary=False, write_statistics=False)
        self._rgs = row_group_size
        self._pending: list[bytes] = []
        self._labels: list[int] = []
        self._closed = False

    def _flush(self, final: bool) -> None:
        while self._pending and (final or len(self._pending) >= self._rgs):
            chunk, self._pending = self._pending[:self._rgs], self._pending[self._rgs:]
            table = self._pa.table([self._pa.array(chunk, self._pa.binary())], schema=self._schema)
            self._writer.write_table(table, row_group_size=self._rgs)

    def _write(self, images: Any, labels: Any) -> None:
        self._pending.extend(images)
        self._labels.extend(int(v) for v in labels)
        self._flush(False)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        import pyarrow.parquet as pq

        try:
            self._flush(True)
        finally:
            self._writer.close()
        pq.write_table(self._pa.table({"labels": self._pa.array(self._labels, self._pa.int64())}),
                       str(self.temps["labels"]))


class ParquetConverter(ConverterFlexibleSize):
    """Convert to Parquet; see :class:`ConverterFlexibleSize` for the arguments.

    ``row_group_size`` (default 1: one sample per row group, for cheap random access) and
    ``compression`` (default ``"NONE"``: encoded images do not compress) are the Parquet knobs.
    """

    format_name = "parquet"
    image_ext = "parquet"
    label_ext = "parquet"

    def __init__(self, *args: Any, row_group_size: int = 1, compression: str = "NONE", **kwargs: Any) -> None:
        if int(row_group_size) < 1:
            raise ConfigError(f"row_group_size must be >= 1, got {row_group_size}")
        if compression.upper() not in _COMPRESSIONS:
            raise ConfigError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
        self.row_group_size = int(row_group_size)
        self.compression = compression.upper()
        super().__init__(*args, **kwargs)

    def _format_params(self) -> dict[str, Any]:
        return {**super()._format_params(), "row_group_size": self.row_group_size, "compression": self.compression}

    writer = _ParquetWriter

    def _writer_args(self) -> tuple:
        return (self.row_group_size, self.compression)


@dataclass
class _ParquetInfo:
    size: int
    metadata: Any
    column: str
    starts: list[int]                     # first row of each row group
    ranges: list[tuple[int, int]]         # (offset, length) of the image column chunk per row group


class ParquetReader(ConvertedReader):
    """Reads a Parquet conversion (ours, or the seed's v1 layout)."""

    format_name = "parquet"
    image_ext = "parquet"
    label_ext = "parquet"
    fixed_size = False
    accepts_decoder = True
    # Row groups of more than one row are cached (whole column chunks): this many per process.
    row_group_cache = 2

    def _footer_metadata(self, key: str) -> tuple[int, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        size = self.size_of(key)
        where = self.store.describe(key)
        tail_len = min(size, 64 << 10)
        tail = self.read(key, size - tail_len, tail_len)
        footer, need = parquet_footer(tail, size, where)
        if footer is None:
            footer, _ = parquet_footer(self.read(key, size - need, need), size, where)
        try:
            return size, pq.read_metadata(pa.BufferReader(footer))
        except Exception as exc:
            raise DataFormatError(f"{where}: corrupt Parquet footer ({exc})") from None

    def _load_file_info(self, n: int) -> _ParquetInfo:
        key = self.image_key(n)
        where = self.store.describe(key)
        size, md = self._footer_metadata(key)
        count = self.file_len(n)
        if md.num_rows != count:
            raise DataFormatError(f"{where}: {md.num_rows} rows, metadata says {count}")
        names = md.schema.names
        name = "images" if "images" in names else (names[0] if len(names) == 1 else None)
        if name is None:
            raise DataFormatError(f"{where}: no 'images' column (columns: {names})")
        ci = names.index(name)
        starts, ranges, row = [], [], 0
        for rg in range(md.num_row_groups):
            g = md.row_group(rg)
            col = g.column(ci)
            start = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else col.data_page_offset
            length = col.total_compressed_size
            if start < 4 or start + length > size:
                raise DataFormatError(f"{where}: row group {rg} lies outside the {size}-byte file; corrupt")
            starts.append(row)
            ranges.append((start, length))
            row += g.num_rows
        return _ParquetInfo(size, md, name, starts, ranges)

    def _load_labels(self, n: int) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = self.label_key(n)
        where = self.store.describe(key)
        data = self.read_all(key)
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFormatError(f"{where}: not a readable Parquet file ({exc})") from None
        col = table.column("labels") if "labels" in table.column_names else table.column(0)
        labels = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
        if labels.shape != (self.file_len(n),):
            raise DataFormatError(f"{where}: {len(labels)} labels, metadata says {self.file_len(n)}")
        return labels

    def _locate_row_group(self, info: _ParquetInfo, j: int) -> tuple[int, int]:
        rg = bisect.bisect_right(info.starts, j) - 1
        return rg, j - info.starts[rg]

    def _group_rows(self, info: _ParquetInfo, rg: int) -> int:
        end = info.starts[rg + 1] if rg + 1 < len(info.starts) else info.metadata.num_rows
        return end - info.starts[rg]

    def _fetch(self, n: int, j: int) -> tuple:
        info = self.file_info(n)
        label = int(self.labels_of(n)[j])
        rg, row = self._locate_row_group(info, j)
        offset, length = info.ranges[rg]
        key = self.image_key(n)
        if self._group_rows(info, rg) == 1:
            return n, rg, row, self.read(key, offset, length), label
        st = self._state()
        cache, cache_lock = st.extra.setdefault("row_groups", (OrderedDict(), threading.Lock()))
        # NOTE: a per-row-group lock, so concurrent fetches of one big row group read it once.
        with st.locks(("rg", n, rg)):
            with cache_lock:
                data = cache.get((n, rg))
            if data is None:
                data = self.read(key, offset, length)
                with cache_lock:
                    cache[(n, rg)] = data
                    while len(cache) > self.row_group_cache:
                        cache.popitem(last=False)
        return n, rg, row, data, label

    async def _afetch(self, n: int, j: int) -> tuple:
        info = await self._acached("files", n, self._load_file_info)
        labels = await self._acached("labels", n, self._load_labels)
        rg, row = self._locate_row_group(info, j)
        if self._group_rows(info, rg) != 1:
            return await super()._afetch(n, j)
        offset, length = info.ranges[rg]
        return n, rg, row, await self.aread(self.image_key(n), offset, length), int(labels[j])

    def image_bytes(self, raw: tuple) -> bytes:
        """The stored (encoded) bytes of a fetched sample."""
        import pyarrow.parquet as pq

        n, rg, row, data, _ = raw
        info = self.file_info(n)
        key = self.image_key(n)
        offset, _ = info.ranges[rg]
        sparse = SparseFile(info.size, {offset: data}, fallback=lambda o, ln: self.read(key, o, ln),
                            name=self.store.describe(key))
        try:
            table = pq.ParquetFile(sparse, metadata=info.metadata).read_row_group(rg, columns=[info.column])
            value = table.column(0)[row].as_py()
        except Exception as exc:
            raise DataFormatError(f"{self.store.describe(key)}: cannot decode row group {rg} ({exc})") from None
        if not isinstance(value, bytes):
            raise DataFormatError(f"{self.store.describe(key)}: row {row} of row group {rg} holds no image bytes")
        return value

    def _decode(self, raw: tuple) -> tuple[Any, int]:
        n, rg, row, _, label = raw
        where = f"{self.store.describe(self.image_key(n))} [row group {rg}, row {row}]"
        return open_image(self.image_bytes(raw), where, self.decoder), label


register_format("parquet", ParquetConverter, ParquetReader,
                "original encoded image bytes in a Parquet binary column; one row group (one ranged read) per sample")
