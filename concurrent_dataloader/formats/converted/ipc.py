"""Arrow IPC format: one record batch per sample, holding the image's encoded bytes.

Layout: ``images/images_<n>.arrow`` (Arrow IPC *file* format, column ``image_data`` binary,
one single-row record batch per sample) and ``labels/labels_<n>.arrow`` (column ``label``
int64, one record batch per sample). The seed wrote the same content under ``.parquet``
names; the reader finds those too.

Random access: the reader parses each file's footer once per process (the block table gives
every record batch's byte range, which pyarrow does not expose), then reads one sample as one
ranged read (one GET on S3) and decodes it in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataFormatError
from ._io import IpcBlock, ipc_file_blocks
from .converters import ConverterFlexibleSize
from .layout import open_image
from .reader import ConvertedReader
from .registry import register_format
from .writers import FileWriter

__all__ = ["IpcConverter", "IpcReader"]

LEGACY_EXT = "parquet"


class IpcFileWriter:
    """Writes single-row record batches of one schema to an IPC file."""

    def __init__(self, path: Path, fields: list[tuple[str, Any]]) -> None:
        import pyarrow as pa

        self._pa = pa
        self.schema = pa.schema([pa.field(name, typ, nullable=False) for name, typ in fields])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self.closed = False

    def write_rows(self, *columns: list) -> None:
        pa = self._pa
        for values in zip(*columns):
            arrays = [pa.array([v], type=f.type) for v, f in zip(values, self.schema)]
            self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._writer.close()
            finally:
                self._sink.close()


class _IpcWriter(FileWriter):
    def __init__(self, finals: dict, n_items: int, label_type: str) -> None:
        import pyarrow as pa

        super().__init__(finals, n_items)
        self._int_labels = label_type == "int"
        self._images = IpcFileWriter(self.temps["images"], [("image_data", pa.binary())])
        self._labels = IpcFileWriter(self.temps["labels"], [("label", pa.int64() if self._int_labels else pa.binary())])

    def _write(self, images: Any, labels: Any) -> None:
        self._images.write_rows(list(images))
        self._labels.write_rows([int(v) for v in labels] if self._int_labels else list(labels))

    def _close(self) -> None:
        try:
            self._images.close()
        finally:
            self._labels.close()


class IpcConverter(ConverterFlexibleSize):
    """Convert to Arrow IPC files; see :class:`ConverterFlexibleSize` for the arguments."""

    format_name = "ipc"
    image_ext = "arrow"
    label_ext = "arrow"
    label_type = "int"

    writer = _IpcWriter

    def _writer_args(self) -> tuple:
        return (self.label_type,)


@dataclass
class IpcInfo:
    size: int
    blocks: list[IpcBlock]
    schema: Any


def load_ipc_info(reader: ConvertedReader, key: str, count: int) -> IpcInfo:
    """Footer (block table) and schema of one IPC file, checked against ``count`` samples."""
    import pyarrow as pa

    where = reader.store.describe(key)
    size = reader.size_of(key)
    tail_len = min(size, 64 << 10)
    tail = reader.read(key, size - tail_len, tail_len)
    blocks, need = ipc_file_blocks(tail, size, where)
    if not blocks and need > len(tail):
        blocks, _ = ipc_file_blocks(reader.read(key, size - need, need), size, where)
    if len(blocks) != count:
        raise DataFormatError(f"{where}: {len(blocks)} record batches, metadata says {count} samples "
                              "(one record batch per sample); truncated or from another conversion")
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(reader.read(key, 8, blocks[0].offset - 8)))
    except Exception as exc:
        raise DataFormatError(f"{where}: cannot read the Arrow schema ({exc})") from None
    return IpcInfo(size, blocks, schema)


def decode_ipc_row(data: bytes, schema: Any, where: str) -> Any:
    """The single row of the record batch message in ``data``, as a pyarrow RecordBatch."""
    import pyarrow as pa

    try:
        batch = pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(data)), schema)
    except Exception as exc:
        raise DataFormatError(f"{where}: corrupt record batch ({exc})") from None
    if batch.num_rows != 1:
        raise DataFormatError(f"{where}: record batch has {batch.num_rows} rows; expected one per sample")
    return batch


def column_value(batch: Any, preferred: str, where: str) -> Any:
    names = batch.schema.names
    name = preferred if preferred in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise DataFormatError(f"{where}: no {preferred!r} column (columns: {names})")
    return batch.column(names.index(name))[0].as_py()


class IpcReader(ConvertedReader):
    """Reads an Arrow IPC conversion (ours, or the seed's ``.parquet``-named IPC files)."""

    format_name = "ipc"
    image_ext = "arrow"
    label_ext = "arrow"
    fixed_size = False
    accepts_decoder = True

    def _setup(self) -> None:
        if self.metadata.get("format") is None:  # a seed conversion: IPC files named .parquet
            try:
                self.store.size(self.image_key(0))
            except (FileNotFoundError, KeyError):
                self.image_ext = self.label_ext = LEGACY_EXT

    def _load_file_info(self, n: int) -> IpcInfo:
        return load_ipc_info(self, self.image_key(n), self.file_len(n))

    def _load_labels(self, n: int) -> np.ndarray:
        import pyarrow as pa

        key = self.label_key(n)
        where = self.store.describe(key)
        data = self.read_all(key)
        try:
            table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFormatError(f"{where}: not a readable Arrow IPC file ({exc})") from None
        col = table.column("label") if "label" in table.column_names else table.column(0)
        labels = np.asarray(col.to_numpy(), dtype=np.int64)
        if labels.shape != (self.file_len(n),):
            raise DataFormatError(f"{where}: {len(labels)} labels, metadata says {self.file_len(n)}")
        return labels

    def _fetch(self, n: int, j: int) -> tuple:
        info = self.file_info(n)
        block = info.blocks[j]
        return n, j, self.read(self.image_key(n), block.offset, block.length), int(self.labels_of(n)[j])

    async def _afetch(self, n: int, j: int) -> tuple:
        info = await self._acached("files", n, self._load_file_info)
        labels = await self._acached("labels", n, self._load_labels)
        block = info.blocks[j]
        return n, j, await self.aread(self.image_key(n), block.offset, block.length), int(labels[j])

    def image_bytes(self, raw: tuple) -> bytes:
        n, j, data, _ = raw
        where = f"{self.store.describe(self.image_key(n))} [record batch {j}]"
        return column_value(decode_ipc_row(data, self.file_info(n).schema, where), "image_data", where)

    def _decode(self, raw: tuple) -> tuple[Any, int]:
        n, j, _, label = raw
        where = f"{self.store.describe(self.image_key(n))} [record batch {j}]"
        return open_image(self.image_bytes(raw), where, self.decoder), label


register_format("ipc", IpcConverter, IpcReader,
                "original encoded image bytes, one Arrow IPC record batch per sample; one ranged read per sample")
