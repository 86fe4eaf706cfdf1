"""Offline conversion: the input of a converter, read through our concurrent loader.

:class:`FolderSource` reads an ImageFolder-style tree as raw bytes; :class:`DatasetSource`
wraps any map-style dataset. Both apply the converter's encoders in ``decode`` (off the event
loop) and give a fingerprint so a rerun can tell whether the input changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import ConfigError, DataFormatError
from ...loader.protocol import ConcurrentDataset, DatasetWrapper, describe_index, is_fetch_decode

__all__ = ["FolderSource", "DatasetSource", "collate_arrays", "collate_lists", "check_dataset"]

class FolderSource(ConcurrentDataset):
    """An ImageFolder-style tree, read as raw file bytes (so they can be kept byte for byte).

    Classes and their order follow torchvision's ImageFolder (sorted folder names).
    """

    def __init__(self, root: str | os.PathLike, image_encoder: Callable[[Any, str], Any]) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"input_data {str(root)!r} is not a directory (expected root/<class>/<image> files)")
        try:
            classes, class_to_idx = find_classes(str(root))
            samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as exc:
            raise ConfigError(f"input_data {str(root)!r}: {exc}") from None
        self.root = root
        self.classes = classes
        self.class_to_idx = class_to_idx
        self.samples = [(str(p), int(c)) for p, c in samples]
        self.image_encoder = image_encoder

    def __len__(self) -> int:
        return len(self.samples)

    def fetch_raw(self, index: int) -> bytes:
        with open(self.samples[index][0], "rb") as f:
            return f.read()

    def decode(self, index: int, raw: bytes) -> tuple[Any, int]:
        path, label = self.samples[index]
        return self.image_encoder(raw, path), label

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\n".encode())
        return h.hexdigest()


class DatasetSource(DatasetWrapper):
    """Any map-style dataset yielding ``(image, label)``; the encoders check/convert each sample.

    A dataset that implements the fetch/decode protocol keeps its concurrent fetch step.
    """

    def __init__(self, dataset: Any, image_encoder: Callable[[Any, str], Any],
                 label_encoder: Callable[[Any, str], Any]) -> None:
        self.dataset = dataset
        self.image_encoder = image_encoder
        self.label_encoder = label_encoder
        self._fd = is_fetch_decode(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def fetch_raw(self, index: int) -> Any:
        return self.dataset.fetch_raw(index) if self._fd else self.dataset[index]

    async def fetch_raw_async(self, index: int) -> Any:
        if self._fd:
            return await self.dataset.fetch_raw_async(index)
        return await super().fetch_raw_async(index)

    def decode(self, index: int, raw: Any) -> tuple[Any, Any]:
        sample = self.dataset.decode(index, raw) if self._fd else raw
        where = self.where(index)
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise DataFormatError(f"{where}: the dataset must yield (image, label), got {type(sample).__name__}")
        return self.image_encoder(sample[0], where), self.label_encoder(sample[1], where)

    def where(self, index: int) -> str:
        desc = describe_index(self.dataset, index)
        return f"sample {index} of {type(self.dataset).__name__}" + (f" ({desc})" if desc else "")

    def describe(self, index: int) -> str:
        return self.where(index)

    def fingerprint(self) -> str:
        ds = self.dataset
        ident = {"type": f"{type(ds).__module__}.{type(ds).__qualname__}", "len": len(ds),
                 "root": str(getattr(ds, "root", "")), "class_to_idx": getattr(ds, "class_to_idx", None)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def collate_arrays(batch: list[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size batches: stacked uint8 pixels, and int64 labels (or stacked label maps)."""
    images = np.stack([b[0] for b in batch])
    first = batch[0][1]
    labels = np.stack([b[1] for b in batch]) if isinstance(first, np.ndarray) else np.asarray([b[1] for b in batch], dtype=np.int64)
    return images, labels


def collate_lists(batch: list[tuple[Any, Any]]) -> tuple[list, list]:
    """Flexible-size batches: lists of encoded bytes and labels."""
    return [b[0] for b in batch], [b[1] for b in batch]



def check_dataset(data: Any) -> None:
    if not (callable(getattr(data, "__getitem__", None)) and callable(getattr(data, "__len__", None))):
        raise ConfigError(f"input_data must be a directory path or a map-style Dataset, got {type(data).__name__}")
