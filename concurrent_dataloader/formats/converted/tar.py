"""Tar format: one tar member per image (original encoded bytes), labels in JSON.

Layout (the seed's): ``images/images_<n>.tar`` with members ``image_0``, ``image_1``, ...
in sample order and ``labels/labels_<n>.json`` holding the list of integer labels. We also
write ``metadata/tar_index/images_<n>.json`` (``{"offsets": [...], "sizes": [...]}``, the byte
range of each member's data), so a sample is one ranged read (one GET on S3). Without the
index (the seed's files) the reader scans the tar headers once per file and process.

Member names are never used as paths: nothing is extracted, so no member can escape.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

from ...errors import DataFormatError
from ._io import RangedFile
from .converters import ConverterFlexibleSize
from .layout import open_image
from .reader import ConvertedReader
from .registry import register_format
from .writers import FileWriter

__all__ = ["TarConverter", "TarReader"]


def index_key(n: int) -> str:
    return f"metadata/tar_index/images_{n}.json"


class _TarWriter(FileWriter):
    def __init__(self, finals: dict, n_items: int) -> None:
        super().__init__(finals, n_items)
        self.temps["index"].parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self.temps["images"], "w", format=tarfile.USTAR_FORMAT)
        self._offsets: list[int] = []
        self._sizes: list[int] = []
        self._labels: list[int] = []
        self._closed = False

    def _write(self, images: Any, labels: Any) -> None:
        for data, label in zip(images, labels):
            info = tarfile.TarInfo(name=f"image_{len(self._sizes)}")
            info.size = len(data)
            info.mode = 0o644
            before = self._tar.offset
            self._tar.addfile(info, io.BytesIO(data))
            # offset of the data = where the member started + its header blocks
            header = self._tar.offset - before - (-(-len(data) // tarfile.BLOCKSIZE)) * tarfile.BLOCKSIZE
            self._offsets.append(before + header)
            self._sizes.append(len(data))
            self._labels.append(int(label))

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._tar.close()
        with open(self.temps["labels"], "w") as f:
            json.dump(self._labels, f)
        with open(self.temps["index"], "w") as f:
            json.dump({"offsets": self._offsets, "sizes": self._sizes}, f)


class TarConverter(ConverterFlexibleSize):
    """Convert to tar files; see :class:`ConverterFlexibleSize` for the arguments."""

    format_name = "tar"
    image_ext = "tar"
    label_ext = "json"

    def output_files(self, n: int) -> dict:
        files = super().output_files(n)
        files["index"] = self.output_path / index_key(n)
        return files

    writer = _TarWriter


@dataclass
class _TarInfo:
    offsets: list[int]
    sizes: list[int]


class TarReader(ConvertedReader):
    """Reads a tar conversion (ours, or the seed's without an index)."""

    format_name = "tar"
    image_ext = "tar"
    label_ext = "json"
    fixed_size = False
    accepts_decoder = True

    def _load_file_info(self, n: int) -> _TarInfo:
        key = self.image_key(n)
        where = self.store.describe(key)
        count = self.file_len(n)
        size = self.size_of(key)
        try:
            raw_index: bytes | None = self.store.get(index_key(n))
        except (FileNotFoundError, KeyError):
            raw_index = None  # the seed's files: no index, scan the headers
        if raw_index is None:
            offsets, sizes = self._scan(key, size)
        else:
            try:
                index = json.loads(raw_index)
                offsets, sizes = [int(v) for v in index["offsets"]], [int(v) for v in index["sizes"]]
                if any(v < 0 for v in offsets + sizes):
                    raise ValueError("negative offset or size")
            except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
                raise DataFormatError(f"{self.store.describe(index_key(n))}: corrupt tar index ({exc!r:.200})") from None
        if len(offsets) != count or len(sizes) != count:
            raise DataFormatError(f"{where}: {len(offsets)} image members, metadata says {count}")
        end = max((o + s for o, s in zip(offsets, sizes)), default=0)
        if end > size:
            raise DataFormatError(f"{where}: {size} bytes, but its members need {end}: truncated")
        return _TarInfo(offsets, sizes)

    def _scan(self, key: str, size: int) -> tuple[list[int], list[int]]:
        where = self.store.describe(key)
        fileobj = open(self.store.path(key), "rb") if self.is_local else RangedFile(self.store, key, size)
        try:
            with tarfile.open(fileobj=fileobj, mode="r:") as tf:
                members = [m for m in tf if m.isreg()]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataFormatError(f"{where}: not a readable tar file ({exc}); truncated or corrupt") from None
        finally:
            fileobj.close()
        return [m.offset_data for m in members], [m.size for m in members]

    def _load_labels(self, n: int) -> list[int]:
        key = self.label_key(n)
        where = self.store.describe(key)
        try:
            labels = json.loads(self.read_all(key))
        except (ValueError, RecursionError) as exc:
            raise DataFormatError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
        if not isinstance(labels, list) or len(labels) != self.file_len(n) or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise DataFormatError(f"{where}: expected a list of {self.file_len(n)} integer labels")
        return labels

    def _fetch(self, n: int, j: int) -> tuple:
        info = self.file_info(n)
        return n, j, self.read(self.image_key(n), info.offsets[j], info.sizes[j]), self.labels_of(n)[j]

    async def _afetch(self, n: int, j: int) -> tuple:
        info = await self._acached("files", n, self._load_file_info)
        labels = await self._acached("labels", n, self._load_labels)
        return n, j, await self.aread(self.image_key(n), info.offsets[j], info.sizes[j]), labels[j]

    def image_bytes(self, raw: tuple) -> bytes:
        return raw[2]

    def _decode(self, raw: tuple) -> tuple[Any, int]:
        n, j, data, label = raw
        return open_image(data, f"{self.store.describe(self.image_key(n))} [member {j}]", self.decoder), label


register_format("tar", TarConverter, TarReader,
                "original encoded image bytes as tar members, labels in JSON; one ranged read per sample")
