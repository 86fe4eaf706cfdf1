"""Dense-label Arrow IPC format: each sample's image and label map as encoded bytes.

Layout: ``images/images_<n>.arrow`` as in :mod:`.ipc`; ``labels/labels_<n>.arrow`` has a
binary column ``label`` holding each label map as an image file (PNG when we encode it, so
class values survive exactly; the seed used JPEG, which corrupts masks). One record batch
per sample in both files; a sample is two ranged reads.
"""

from __future__ import annotations

from typing import Any

from .encoders import FlexibleImageEncoder
from .layout import open_image
from .registry import register_format
from .ipc import IpcConverter, IpcInfo, IpcReader, column_value, decode_ipc_row, load_ipc_info

__all__ = ["DenseIpcConverter", "DenseIpcReader"]


class DenseIpcConverter(IpcConverter):
    """Convert a Dataset yielding ``(image, label_map)``; label maps given as encoded bytes are
    kept as they are, decoded ones (PIL images, arrays) are stored as lossless PNG."""

    format_name = "dense_ipc"
    accepts_decoder = False  # image and label map are decoded together, with PIL
    dense = True
    label_type = "binary"

    def _label_encoder(self) -> FlexibleImageEncoder:
        return FlexibleImageEncoder(None, None, self.verify_images, label_map=True)


class DenseIpcReader(IpcReader):
    """Items are ``(image, label_map)``, both PIL images; ``target_transform`` gets the map."""

    format_name = "dense_ipc"

    def _load_file_info(self, n: int) -> tuple[IpcInfo, IpcInfo]:
        count = self.file_len(n)
        return load_ipc_info(self, self.image_key(n), count), load_ipc_info(self, self.label_key(n), count)

    def _fetch(self, n: int, j: int) -> tuple:
        img, lab = self.file_info(n)
        a, b = img.blocks[j], lab.blocks[j]
        return n, j, self.read(self.image_key(n), a.offset, a.length), self.read(self.label_key(n), b.offset, b.length)

    async def _afetch(self, n: int, j: int) -> tuple:
        img, lab = await self._acached("files", n, self._load_file_info)
        a, b = img.blocks[j], lab.blocks[j]
        return (n, j, await self.aread(self.image_key(n), a.offset, a.length),
                await self.aread(self.label_key(n), b.offset, b.length))

    def check_files(self) -> None:
        for n in range(self.total_num_arrays):
            self.file_info(n)

    def image_bytes(self, raw: tuple) -> bytes:
        n, j, data, _ = raw
        where = f"{self.store.describe(self.image_key(n))} [record batch {j}]"
        return column_value(decode_ipc_row(data, self.file_info(n)[0].schema, where), "image_data", where)

    def label_bytes(self, raw: tuple) -> bytes:
        n, j, _, data = raw
        where = f"{self.store.describe(self.label_key(n))} [record batch {j}]"
        return column_value(decode_ipc_row(data, self.file_info(n)[1].schema, where), "label", where)

    def _decode(self, raw: tuple) -> tuple[Any, Any]:
        n, j = raw[0], raw[1]
        image = open_image(self.image_bytes(raw), f"{self.store.describe(self.image_key(n))} [record batch {j}]")
        label = open_image(self.label_bytes(raw), f"{self.store.describe(self.label_key(n))} [record batch {j}]")
        return image, label


register_format("dense_ipc", DenseIpcConverter, DenseIpcReader,
                "encoded images + per-pixel label maps (PNG) as Arrow IPC record batches (segmentation)")
