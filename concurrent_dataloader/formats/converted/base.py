"""Shared machinery of the converted formats: converters, the reader base class, the registry.

A converted dataset is a directory (local, or copied to any :class:`ByteStore` such as S3)::

    images/images_<n>.<ext>        n = 0 .. total_num_arrays-1, num_images_per_array each
    labels/labels_<n>.<ext>        (the last file holds len_last_array when that is not 0)
    metadata/metadata.json         written last: its presence means "conversion complete"
    metadata/class_to_integer_mapping.json
    metadata/conversion.json       the conversion plan, written first: lets a rerun resume

A format is one module that subclasses :class:`ConverterFixedSize` or
:class:`ConverterFlexibleSize` (implementing ``_open_writer``) and :class:`ConvertedReader`
(implementing ``_fetch`` and ``_decode``), then calls :func:`register_format`.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import math
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from ...errors import ConfigError, DataFormatError
from ...loader.protocol import ConcurrentDataset, DatasetWrapper, describe_index, is_fetch_decode
from ...storage.base import ByteStore, open_store
from ...storage.local import LocalStore
from ._dist import DistContext, resolve_dist, split_files
from ._io import KeyedLocks, atomic_write_bytes, is_temp_name, temp_path_for

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


class OutputExistsError(ConfigError):
    """The output path already holds a different dataset and ``overwrite`` was not asked for."""


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


class ResizeAndConvert:
    """Convert an image to ``mode`` and resize it to ``shape = (height, width)``.

    The seed's version passed ``(height, width)`` to PIL, which expects ``(width, height)``,
    so non-square shapes came out transposed. Here the shape means (height, width) everywhere:
    the transform, the stored arrays and the metadata. ``size=`` is accepted as in the seed.
    """

    def __init__(self, shape: Any = None, mode: str | None = None, *, size: Any = None,
                 resample: int | None = None) -> None:
        if shape is not None and size is not None and normalize_shape(shape) != normalize_shape(size, "size"):
            raise ConfigError(f"ResizeAndConvert got both shape={shape!r} and size={size!r}; pass one")
        if shape is None:
            shape = size
        if shape is None or mode is None:
            raise ConfigError("ResizeAndConvert needs shape (height, width) and mode, e.g. ResizeAndConvert((224, 224), 'RGB')")
        self.shape = normalize_shape(shape)
        mode_channels(mode)
        self.mode = mode
        self.resample = resample

    @property
    def size(self) -> tuple[int, int]:
        return self.shape

    def __call__(self, img: Any) -> Any:
        if img.mode != self.mode:
            img = img.convert(self.mode)
        h, w = self.shape
        if img.size != (w, h):
            img = img.resize((w, h), resample=self.resample) if self.resample is not None else img.resize((w, h))
        return img

    def __repr__(self) -> str:
        return f"ResizeAndConvert(shape={self.shape}, mode={self.mode!r})"


# ============================================================================ sample encoding

_BYTES_TYPES = (bytes, bytearray, memoryview)


def open_image(data: bytes, where: str) -> Any:
    """Decode fully (so truncation shows up here, not later) or raise naming ``where``."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Exception as exc:
        raise DataFormatError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def _to_numpy(image: Any) -> Any:
    """torch tensors (CHW, as torchvision.io gives them) become HWC numpy arrays."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return image
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return arr
    return image


def _describe_array_input(image: Any) -> str:
    if hasattr(image, "size") and hasattr(image, "mode") and not isinstance(image, np.ndarray):
        w, h = image.size
        return f"a {image.mode} image of height {h}, width {w}"
    if isinstance(image, np.ndarray):
        return f"an array of shape {image.shape} and dtype {image.dtype}"
    return f"a {type(image).__name__}"


class FixedImageEncoder:
    """Turns one input image (encoded bytes, PIL image, uint8 array/tensor) into a uint8 array
    of exactly ``array_shape(shape, mode)``; with ``resize`` it applies ResizeAndConvert first,
    without it a mismatch is an error naming the sample."""

    def __init__(self, shape: tuple[int, int], mode: str, resize: bool, resample: int | None = None,
                 converter_name: str = "converter") -> None:
        self.shape = shape
        self.mode = mode
        self.resize = resize
        self.rc = ResizeAndConvert(shape, mode, resample=resample)
        self.expected = array_shape(shape, mode)
        self.converter_name = converter_name

    def __call__(self, image: Any, where: str) -> np.ndarray:
        from PIL import Image

        if isinstance(image, _BYTES_TYPES):
            image = open_image(bytes(image), where)
        image = _to_numpy(image)
        if isinstance(image, np.ndarray) and self.resize:
            if image.dtype != np.uint8:
                raise DataFormatError(f"{where}: image array has dtype {image.dtype}; uint8 is needed")
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            if self.resize:
                try:
                    image = self.rc(image)
                except Exception as exc:
                    raise DataFormatError(f"{where}: cannot convert image to {self.mode} {self.shape}: {exc}") from exc
            elif image.mode != self.mode or image.size != (self.shape[1], self.shape[0]):
                raise DataFormatError(self._mismatch(where, image))
            arr = np.asarray(image, dtype=np.uint8)
        elif isinstance(image, np.ndarray):
            arr = image
        else:
            raise DataFormatError(f"{where}: expected an image (PIL image, encoded bytes or uint8 array), got {type(image).__name__}")
        if arr.dtype != np.uint8 or arr.shape != self.expected:
            raise DataFormatError(self._mismatch(where, arr))
        return arr

    def _mismatch(self, where: str, got: Any) -> str:
        h, w = self.shape
        return (f"{where} is {_describe_array_input(got)}, but {self.converter_name}(shape={self.shape}, "
                f"im_mode={self.mode!r}) stores {self.mode} images of height {h}, width {w}: apply "
                f"ResizeAndConvert({self.shape}, {self.mode!r}) to the dataset, or pass resize=True")


_LOSSY = {"JPEG", "WEBP"}


def encode_image(image: Any, fmt: str, quality: int | None, where: str) -> bytes:
    fmt = fmt.upper()
    kwargs: dict[str, Any] = {}
    if fmt in _LOSSY:
        kwargs["quality"] = 95 if quality is None else int(quality)
        if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt, **kwargs)
    except Exception as exc:
        raise DataFormatError(f"{where}: cannot encode image as {fmt}: {exc}") from exc
    return buf.getvalue()


class FlexibleImageEncoder:
    """Keeps encoded bytes as they are (after checking they decode, unless ``verify=False``).

    Decoded inputs (PIL images, arrays) are encoded losslessly as PNG. Re-encoding encoded
    inputs happens only when asked for with ``reencode`` (and ``quality`` for JPEG/WEBP).
    """

    def __init__(self, reencode: str | None = None, quality: int | None = None, verify: bool = True,
                 label_map: bool = False) -> None:
        self.reencode = reencode.upper() if reencode else None
        self.quality = quality
        self.verify = verify
        self.label_map = label_map

    def __call__(self, image: Any, where: str) -> bytes:
        from PIL import Image

        if isinstance(image, _BYTES_TYPES):
            data = bytes(image)
            if self.reencode:
                return encode_image(open_image(data, where), self.reencode, self.quality, where)
            if self.verify:
                open_image(data, where)
            return data
        image = _to_numpy(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise DataFormatError(f"{where}: image array has dtype {image.dtype}; uint8 is needed")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise DataFormatError(f"{where}: expected an image (PIL image, encoded bytes or uint8 array), got {type(image).__name__}")
        # Label maps are never encoded lossily: a JPEG-ed mask has wrong classes at every edge.
        fmt = "PNG" if self.label_map or not self.reencode else self.reencode
        return encode_image(image, fmt, self.quality, where)


class DenseLabelEncoder:
    """A per-pixel label map as a uint8 array of ``array_shape(shape, label_mode)``.

    Palette ("P") maps keep their indices; resizing (with ``resize``) uses nearest neighbour
    so no new class values appear.
    """

    def __init__(self, shape: tuple[int, int], label_mode: str, resize: bool) -> None:
        self.shape = shape
        self.label_mode = label_mode
        self.resize = resize
        self.expected = array_shape(shape, label_mode, LABEL_MODES)

    def __call__(self, label: Any, where: str) -> np.ndarray:
        from PIL import Image

        if isinstance(label, _BYTES_TYPES):
            label = open_image(bytes(label), f"{where} (label map)")
        label = _to_numpy(label)
        if isinstance(label, Image.Image):
            h, w = self.shape
            if self.resize and label.size != (w, h):
                label = label.resize((w, h), resample=Image.NEAREST)
            label = np.asarray(label)
        if not isinstance(label, np.ndarray):
            raise DataFormatError(f"{where}: expected a label map (PIL image or uint8 array), got {type(label).__name__}")
        if label.dtype != np.uint8 and label.size and label.min() >= 0 and label.max() <= 255:
            label = label.astype(np.uint8)
        if label.dtype != np.uint8 or label.shape != self.expected:
            raise DataFormatError(f"{where}: label map is {_describe_array_input(label)}, but the converter stores "
                                  f"{self.label_mode} label maps of shape {self.expected}")
        return label


def int_label(label: Any, where: str) -> int:
    try:
        import torch

        if isinstance(label, torch.Tensor):
            label = label.item() if label.numel() == 1 else label
    except ImportError:  # pragma: no cover
        pass
    if isinstance(label, np.ndarray) and label.size == 1:
        label = label.reshape(()).item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DataFormatError(f"{where}: label must be an integer class index, got {type(label).__name__} {label!r}; "
                              "per-pixel labels need a Dense* converter")
    return int(label)


# ============================================================================ conversion sources


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


# ============================================================================ metadata


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


# ============================================================================ writers


class FileWriter(ABC):
    """Writes one output file group (images_n, labels_n, extras) under temporary names.

    ``commit`` closes and renames everything into place; ``abort`` deletes the temporaries.
    A file group counts as done only when all its final names exist.
    """

    def __init__(self, finals: dict[str, Path], n_items: int) -> None:
        self.finals = finals
        self.temps = {role: temp_path_for(p) for role, p in finals.items()}
        self.n_items = n_items
        self.remaining = n_items

    def write(self, images: Any, labels: Any) -> None:
        if len(images) > self.remaining:
            raise RuntimeError(f"{self.finals['images']}: {len(images)} more samples than the {self.n_items} planned")
        self._write(images, labels)
        self.remaining -= len(images)

    @abstractmethod
    def _write(self, images: Any, labels: Any) -> None: ...

    @abstractmethod
    def _close(self) -> None:
        """Flush and close the temporary files (called once, before renaming)."""

    def commit(self) -> None:
        if self.remaining:
            raise RuntimeError(f"{self.finals['images']}: {self.remaining} samples missing at commit")
        self._close()
        # Images last: a file group is complete only when every final name exists.
        for role in sorted(self.temps, key=lambda r: r == "images"):
            os.replace(self.temps[role], self.finals[role])

    def abort(self) -> None:
        try:
            self._close()
        except Exception:
            pass
        for tmp in self.temps.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


@dataclass
class ConversionResult:
    """What one process did: files it wrote, files it found already done, images written."""

    output_path: str
    format: str
    rank: int
    num_replicas: int
    files_written: int
    files_skipped: int
    images_written: int
    seconds: float
    total_files: int

    @property
    def images_per_second(self) -> float:
        return self.images_written / self.seconds if self.seconds > 0 else 0.0


# ============================================================================ converters


class Converter(ABC):
    """Common part of all converters. Subclass :class:`ConverterFixedSize` or
    :class:`ConverterFlexibleSize`, and implement :meth:`_open_writer`.

    Parameters (as in the seed): ``input_data`` (an ImageFolder-style directory or any map-style
    torch ``Dataset`` yielding ``(image, label)``), ``output_path`` (a local directory),
    ``images_per_file``, ``batch_size`` (must divide ``images_per_file``), ``num_workers``
    (DataLoader worker processes), ``dist``/``rank``/``num_replicas``.

    Added: ``overwrite`` (replace a different dataset at ``output_path``), ``progress`` (tqdm),
    ``num_fetch_workers``/``fetch_impl`` (concurrency of our loader while reading the input,
    which matters when the input is remote), ``class_to_idx`` (override the class mapping),
    ``dist_timeout`` (timedelta for the gloo group we create).
    """

    format_name: ClassVar[str] = ""
    image_ext: ClassVar[str] = ""
    label_ext: ClassVar[str] = ""
    fixed_size: ClassVar[bool] = True
    dense: ClassVar[bool] = False

    def __init__(self, input_data: Any, output_path: str | os.PathLike, images_per_file: int, batch_size: int,
                 num_workers: int = 0, *, dist: bool = False, rank: int | None = None,
                 num_replicas: int | None = None, overwrite: bool = False, progress: bool = True,
                 num_fetch_workers: int = 8, fetch_impl: str = "threaded",
                 class_to_idx: dict[str, int] | None = None, dist_timeout: Any = None) -> None:
        for name, value, low in (("images_per_file", images_per_file, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if images_per_file % batch_size:
            raise ConfigError(f"batch_size={batch_size} must divide images_per_file={images_per_file} "
                              "(each batch goes into exactly one file)")
        self.output_path = Path(output_path)
        self.images_per_file = int(images_per_file)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.dist = bool(dist)
        self.rank = rank
        self.num_replicas = num_replicas
        self.overwrite = bool(overwrite)
        self.progress = bool(progress)
        self.num_fetch_workers = int(num_fetch_workers)
        self.fetch_impl = fetch_impl
        self.dist_timeout = dist_timeout
        self.input_data = input_data
        self.input_dataset = self._build_source(input_data)
        self.length = len(self.input_dataset)
        if self.length == 0:
            raise ConfigError(f"input_data {input_data!r} holds no samples")
        self.layout = Layout(self.length, self.images_per_file)
        # The seed's attribute names.
        self.num_arrays = self.layout.total
        self.len_last_array = self.layout.last
        self.class_to_idx = self._class_mapping(class_to_idx)

    # ----------------------------------------------------------------- subclass hooks

    @abstractmethod
    def _build_source(self, input_data: Any) -> ConcurrentDataset: ...

    @abstractmethod
    def _open_writer(self, n: int, n_items: int) -> FileWriter:
        """A writer for file group ``n`` holding ``n_items`` samples."""

    @property
    @abstractmethod
    def collate_fn(self) -> Callable[[list], Any]: ...

    def _format_params(self) -> dict[str, Any]:
        """Parameters that change the bytes written (part of the plan, so a rerun with other
        values is refused instead of mixing two conversions)."""
        return {}

    def _metadata_extra(self) -> dict[str, Any]:
        return {}

    def output_files(self, n: int) -> dict[str, Path]:
        """Final paths of file group ``n`` (role -> path); ``images`` and ``labels`` always."""
        return {"images": self.output_path / "images" / f"images_{n}.{self.image_ext}",
                "labels": self.output_path / "labels" / f"labels_{n}.{self.label_ext}"}

    # ----------------------------------------------------------------- plan & output state

    def _class_mapping(self, override: dict[str, int] | None) -> dict[str, int]:
        if override is not None:
            return {str(k): int(v) for k, v in override.items()}
        ds = self.input_dataset
        inner = getattr(ds, "dataset", ds)
        mapping = getattr(ds, "class_to_idx", None) or getattr(inner, "class_to_idx", None)
        if mapping:
            return {str(k): int(v) for k, v in mapping.items()}
        classes = getattr(inner, "classes", None) or getattr(inner, "categories", None)
        if classes and all(isinstance(c, str) for c in classes):
            return {c: i for i, c in enumerate(classes)}
        return {}

    def plan(self) -> dict[str, Any]:
        fp = getattr(self.input_dataset, "fingerprint", None)
        return {
            "format": self.format_name,
            "format_version": FORMAT_VERSION,
            "num_images_per_array": self.images_per_file,
            "len": self.length,
            "total_num_arrays": self.layout.total,
            "len_last_array": self.layout.last,
            "class_to_idx": self.class_to_idx,
            "source_fingerprint": fp() if callable(fp) else None,
            "params": self._format_params(),
        }

    def metadata(self) -> dict[str, Any]:
        """metadata.json: the seed's four keys (plus mode/shape for fixed-size), then ours."""
        meta: dict[str, Any] = {
            "num_images_per_array": self.images_per_file,
            "len": self.length,
            "len_last_array": self.layout.last,
            "total_num_arrays": self.layout.total,
        }
        meta.update(self._metadata_extra())
        meta["format"] = self.format_name
        meta["format_version"] = FORMAT_VERSION
        return meta

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"<unreadable>": str(path)}

    def _has_data_files(self) -> bool:
        for sub in ("images", "labels"):
            d = self.output_path / sub
            if d.is_dir() and any(not is_temp_name(e.name) for e in os.scandir(d)):
                return True
        return False

    def _inspect_output(self, plan: dict[str, Any]) -> str:
        """"fresh", "resume" or "complete"; raises OutputExistsError for a different dataset."""
        existing = self._read_json(self.output_path / PLAN_KEY)
        meta_exists = (self.output_path / METADATA_KEY).exists()
        if existing is not None:
            if existing == json.loads(json.dumps(plan)):
                return "complete" if meta_exists else "resume"
            if self.overwrite:
                return "fresh"
            diff = sorted(k for k in set(existing) | set(plan) if existing.get(k) != plan.get(k)) if isinstance(existing, dict) else ["<all>"]
            raise OutputExistsError(
                f"{self.output_path} holds a different conversion (plan differs in {diff}); "
                "pass overwrite=True to replace it, or choose another output_path")
        if meta_exists or self._has_data_files():
            if self.overwrite:
                return "fresh"
            raise OutputExistsError(
                f"{self.output_path} already holds a dataset this converter did not start (images/, labels/ or "
                "metadata/metadata.json exist without metadata/conversion.json); pass overwrite=True to replace it")
        return "fresh"

    def _clear_output(self) -> None:
        for sub in ("images", "labels", "metadata"):
            shutil.rmtree(self.output_path / sub, ignore_errors=True)

    def _file_done(self, n: int) -> bool:
        return all(p.exists() for p in self.output_files(n).values())

    def _remove_stale_temps(self, files: Iterable[int]) -> None:
        """Delete temporaries an interrupted run left for *our* files (never another rank's)."""
        mine: dict[Path, set[str]] = {}
        for n in files:
            for p in self.output_files(n).values():
                mine.setdefault(p.parent, set()).add(p.name)
        for directory, names in mine.items():
            if not directory.is_dir():
                continue
            for entry in os.scandir(directory):
                if is_temp_name(entry.name) and entry.name[1:].split(".tmp-")[0] in names:
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass

    # ----------------------------------------------------------------- conversion

    def convert(self) -> ConversionResult:
        """Convert (or finish converting) the dataset; returns what this process did.

        Files already complete (from an interrupted earlier run with the same plan) are kept.
        With ``dist=True`` each process converts a contiguous block of files and rank 0
        writes the metadata once every file exists.
        """
        ctx = resolve_dist(self.dist, self.rank, self.num_replicas, self.dist_timeout)
        self.rank, self.num_replicas = ctx.rank, ctx.world
        try:
            return self._convert(ctx)
        finally:
            ctx.close()

    def _convert(self, ctx: DistContext) -> ConversionResult:
        start = time.perf_counter()
        plan = self.plan()
        error: BaseException | None = None
        state = "fresh"
        try:
            # Every rank inspects (read-only), so a refused output path fails on all ranks alike.
            state = self._inspect_output(plan)
            if ctx.rank == 0:
                if state == "fresh":
                    self._clear_output()
                for sub in ("images", "labels", "metadata"):
                    (self.output_path / sub).mkdir(parents=True, exist_ok=True)
                if state == "fresh":
                    atomic_write_bytes(self.output_path / PLAN_KEY, json.dumps(plan, indent=1, sort_keys=True).encode())
        except Exception as exc:
            error = exc
        # NOTE: also the barrier that keeps other ranks from writing before rank 0 has prepared.
        self._agree(ctx, error, "preparing the output path")
        total = self.layout.total
        mine = split_files(total, ctx.rank, ctx.world)
        if state == "complete":
            return ConversionResult(str(self.output_path), self.format_name, ctx.rank, ctx.world, 0, len(mine), 0,
                                    time.perf_counter() - start, total)
        error = None
        written = images = 0
        todo: list[int] = []
        try:
            if ctx.rank != 0 and self._read_json(self.output_path / PLAN_KEY) != json.loads(json.dumps(plan)):
                raise ConfigError(f"rank {ctx.rank}: its conversion plan differs from rank 0's (different input, "
                                  "arguments or file listing?); every rank must convert the same dataset")
            for sub in ("images", "labels"):
                (self.output_path / sub).mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps(mine)
            todo = [n for n in mine if not self._file_done(n)]
            written, images = self._write_files(todo, ctx)
        except Exception as exc:
            error = exc
        self._agree(ctx, error, "converting")
        error = None
        if ctx.rank == 0:
            try:
                self._finish()
            except Exception as exc:
                error = exc
        self._agree(ctx, error, "writing the metadata")
        return ConversionResult(str(self.output_path), self.format_name, ctx.rank, ctx.world, written,
                                len(mine) - len(todo), images, time.perf_counter() - start, total)

    def _agree(self, ctx: DistContext, error: BaseException | None, step: str) -> None:
        """Raise on every rank if any rank failed ``step``.

        NOTE: an all-reduce instead of a bare barrier, so a failing rank releases the others
        instead of leaving them waiting until the process-group timeout.
        """
        if not ctx.all_ok(error is None):
            if error is not None:
                raise error
            raise RuntimeError(f"another rank failed while {step} ({self.output_path}); completed files are kept, "
                               "rerun to resume")

    def _finish(self) -> None:
        missing = [n for n in range(self.layout.total) if not self._file_done(n)]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise DataFormatError(f"{self.output_path}: {len(missing)} file(s) missing after conversion ({shown}); "
                                  "metadata not written, rerun to resume")
        meta_dir = self.output_path / "metadata"
        atomic_write_bytes(meta_dir / "class_to_integer_mapping.json", json.dumps(self.class_to_idx).encode())
        # Last: its presence is what tells readers (and reruns) that the conversion is complete.
        atomic_write_bytes(meta_dir / "metadata.json", json.dumps(self.metadata(), indent=1).encode())

    def _make_loader(self, indices: list[int]) -> Any:
        from torch.utils.data import Subset

        from ...loader.dataloader import DataLoader

        return DataLoader(Subset(self.input_dataset, indices), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=self.collate_fn, pin_memory=False,
                          num_fetch_workers=self.num_fetch_workers, fetch_impl=self.fetch_impl)

    def _write_files(self, todo: list[int], ctx: DistContext) -> tuple[int, int]:
        from tqdm import tqdm

        indices = [i for n in todo for i in range(n * self.images_per_file,
                                                  n * self.images_per_file + self.layout.file_len(n))]
        if not indices:
            return 0, 0
        desc = f"{self.format_name}" + (f" rank {ctx.rank}/{ctx.world}" if ctx.world > 1 else "")
        bar = tqdm(total=len(indices), unit="img", desc=desc, disable=not self.progress, dynamic_ncols=True)
        loader = self._make_loader(indices)
        files = iter(todo)
        writer: FileWriter | None = None
        written = images_done = 0
        try:
            for images, labels in loader:
                pos, count = 0, len(images)
                while pos < count:
                    if writer is None:
                        n = next(files)
                        writer = self._open_writer(n, self.layout.file_len(n))
                    take = min(count - pos, writer.remaining)
                    writer.write(images[pos:pos + take], labels[pos:pos + take])
                    pos += take
                    if writer.remaining == 0:
                        writer.commit()
                        writer = None
                        written += 1
                images_done += count
                bar.update(count)
            if writer is not None or next(files, None) is not None:
                raise DataFormatError(f"input_data yielded only {images_done} of {len(indices)} samples "
                                      "(its __len__ is larger than what it yields)")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            bar.close()
            close = getattr(loader, "close", None)
            if callable(close):
                close()
        return written, images_done


class ConverterFixedSize(Converter):
    """Every image is stored as raw ``uint8`` pixels of one ``shape = (height, width)`` and mode.

    From a folder, images are decoded and passed through ``ResizeAndConvert(shape, im_mode)``.
    From a Dataset they must already match (apply ResizeAndConvert as its transform, as the
    seed requires) unless ``resize=True``; a mismatch is an error naming the sample.
    """

    fixed_size = True

    def __init__(self, input_data: Any, output_path: str | os.PathLike, images_per_file: int, batch_size: int,
                 num_workers: int = 0, shape: Any = None, im_mode: str | None = None, *,
                 resize: bool | None = None, resample: int | None = None, **kwargs: Any) -> None:
        if shape is None or im_mode is None:
            raise ConfigError(f"{type(self).__name__} needs shape=(height, width) and im_mode (e.g. 'RGB')")
        self.shape = normalize_shape(shape)
        mode_channels(im_mode)
        self.im_mode = im_mode
        self.resize = resize
        self.resample = resample
        self.sample_shape = array_shape(self.shape, im_mode)
        super().__init__(input_data, output_path, images_per_file, batch_size, num_workers, **kwargs)

    @property
    def collate_fn(self) -> Callable[[list], Any]:
        return collate_arrays

    def _image_encoder(self, from_folder: bool) -> FixedImageEncoder:
        resize = from_folder if self.resize is None else self.resize
        return FixedImageEncoder(self.shape, self.im_mode, resize, self.resample, type(self).__name__)

    def _label_encoder(self) -> Callable[[Any, str], Any]:
        return int_label

    def _build_source(self, input_data: Any) -> ConcurrentDataset:
        if isinstance(input_data, (str, os.PathLike)):
            if self.dense:
                raise ConfigError(f"{type(self).__name__} needs a Dataset yielding (image, label_map); a folder has no label maps")
            return FolderSource(input_data, self._image_encoder(True))
        _check_dataset(input_data)
        return DatasetSource(input_data, self._image_encoder(False), self._label_encoder())

    def _format_params(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "mode": self.im_mode}

    def _metadata_extra(self) -> dict[str, Any]:
        return {"mode": self.im_mode, "shape": list(self.shape)}


class ConverterFlexibleSize(Converter):
    """Images keep their own size and encoding: the original encoded bytes are stored as they
    are (checked to decode unless ``verify_images=False``). ``reencode="JPEG"|"PNG"|"WEBP"``
    with ``quality`` re-encodes on purpose; decoded inputs (PIL images from a Dataset) are
    stored as lossless PNG unless ``reencode`` says otherwise."""

    fixed_size = False

    def __init__(self, input_data: Any, output_path: str | os.PathLike, images_per_file: int, batch_size: int,
                 num_workers: int = 0, *, reencode: str | None = None, quality: int | None = None,
                 verify_images: bool = True, **kwargs: Any) -> None:
        if reencode is not None and reencode.upper() not in ("JPEG", "PNG", "WEBP"):
            raise ConfigError(f"reencode must be 'JPEG', 'PNG' or 'WEBP', got {reencode!r}")
        if quality is not None:
            if reencode is None or reencode.upper() not in _LOSSY:
                raise ConfigError("quality only applies with reencode='JPEG' or 'WEBP'; the default keeps original bytes")
            if not 1 <= int(quality) <= 100:
                raise ConfigError(f"quality must be in 1..100, got {quality}")
        self.reencode = reencode.upper() if reencode else None
        self.quality = int(quality) if quality is not None else None
        self.verify_images = bool(verify_images)
        super().__init__(input_data, output_path, images_per_file, batch_size, num_workers, **kwargs)

    @property
    def collate_fn(self) -> Callable[[list], Any]:
        return collate_lists

    def _image_encoder(self) -> FlexibleImageEncoder:
        return FlexibleImageEncoder(self.reencode, self.quality, self.verify_images)

    def _label_encoder(self) -> Callable[[Any, str], Any]:
        return int_label

    def _build_source(self, input_data: Any) -> ConcurrentDataset:
        if isinstance(input_data, (str, os.PathLike)):
            if self.dense:
                raise ConfigError(f"{type(self).__name__} needs a Dataset yielding (image, label_map); a folder has no label maps")
            return FolderSource(input_data, self._image_encoder())
        _check_dataset(input_data)
        return DatasetSource(input_data, self._image_encoder(), self._label_encoder())

    def _format_params(self) -> dict[str, Any]:
        return {"reencode": self.reencode, "quality": self.quality}

    def _metadata_extra(self) -> dict[str, Any]:
        return {"image_encoding": self.reencode or "original"}


def _check_dataset(data: Any) -> None:
    if not (callable(getattr(data, "__getitem__", None)) and callable(getattr(data, "__len__", None))):
        raise ConfigError(f"input_data must be a directory path or a map-style Dataset, got {type(data).__name__}")


# ============================================================================ readers

_STATE_LOCK = threading.Lock()


def _reset_state_lock() -> None:
    global _STATE_LOCK
    _STATE_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_state_lock)


class _ProcessState:
    """Everything a reader opens or caches, owned by one process (never pickled)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.locks = KeyedLocks()
        self.files: dict[int, Any] = {}
        self.labels: dict[int, Any] = {}
        self.fds: dict[str, int] = {}
        self.handles: list[Any] = []
        self.extra: dict[str, Any] = {}

    def close(self) -> None:
        if self.pid != os.getpid():
            return
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()
        for h in self.handles:
            try:
                h.close()
            except Exception:
                pass
        self.handles.clear()
        self.files.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class ConvertedReader(ConcurrentDataset):
    """Map-style dataset over a converted dataset, on local disk or any :class:`ByteStore`.

    ``dataset_path`` is a directory or a URL (``s3://bucket/prefix``; ``storage_options`` go to
    :func:`open_store`, e.g. ``endpoint_url`` and credentials); or pass ``store=`` directly.
    Items are ``(image, label)`` with ``transform``/``target_transform`` applied.

    It implements the fetch/decode protocol: ``fetch_raw`` reads only one sample's bytes
    (a ranged read for memmap/HDF5, one row group's column chunk for Parquet, one record
    batch for IPC, one member for tar), ``decode`` builds the image. Per-file details (headers,
    footers, label arrays) are read once per process, on first use.

    NOTE (fork/spawn): file descriptors, h5py handles and caches live in a per-process state
    keyed on ``os.getpid()`` and are dropped when pickled, so the dataset can be handed to
    workers under fork and spawn; ``worker_init_fn`` is kept for the seed's callers.
    """

    format_name: ClassVar[str] = ""
    image_ext: ClassVar[str] = ""
    label_ext: ClassVar[str] = ""
    # Formats whose metadata.json may name another (compatible) format.
    accepts_formats: ClassVar[tuple[str, ...]] = ()
    fixed_size: ClassVar[bool] = True

    def __init__(self, dataset_path: str | os.PathLike | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, store: ByteStore | None = None,
                 storage_options: dict[str, Any] | None = None, check_files: bool = False) -> None:
        if store is None:
            if dataset_path is None:
                raise ConfigError(f"{type(self).__name__} needs dataset_path (a directory or s3:// URL) or store=")
            store = _open_store(str(dataset_path), storage_options or {})
        elif storage_options:
            raise ConfigError("pass storage_options only with dataset_path, not with store=")
        self.dataset_path = str(dataset_path) if dataset_path is not None else store.describe("")
        self.store = store
        self.transform = transform
        self.target_transform = target_transform
        self.metadata = self._load_metadata()
        meta = self.metadata
        self.len = meta["len"]
        self.images_per_file = meta["num_images_per_array"]
        self.len_last_array = meta["len_last_array"]
        self.total_num_arrays = meta["total_num_arrays"]
        self.layout = Layout(self.len, self.images_per_file)
        self.mode = meta.get("mode")
        self.shape = tuple(meta["shape"]) if meta.get("shape") is not None else None
        self.class_to_idx = self._load_classes()
        self._setup()
        if check_files:
            self.check_files()

    # ----------------------------------------------------------------- metadata

    def _load_metadata(self) -> dict[str, Any]:
        where = self.store.describe(METADATA_KEY)
        try:
            data = self.store.get(METADATA_KEY)
        except (FileNotFoundError, KeyError):
            raise DataFormatError(
                f"{where} not found: {self.dataset_path} is not a converted dataset, or its conversion did not "
                "finish (metadata.json is written last; rerun the converter to resume)") from None
        meta = parse_metadata(data, where)
        fmt = meta.get("format")
        if fmt is not None and fmt != self.format_name and fmt not in self.accepts_formats:
            hint = FORMATS[fmt].reader.__name__ if fmt in FORMATS else f"the reader for {fmt!r}"
            raise DataFormatError(f"{self.dataset_path} holds a {fmt!r} conversion; open it with {hint}, not {type(self).__name__}")
        if self.fixed_size:
            if "mode" not in meta or "shape" not in meta:
                raise DataFormatError(f"{where}: a fixed-size dataset needs 'mode' and 'shape'")
            try:
                array_shape(meta["shape"], meta["mode"])
            except (ConfigError, TypeError, ValueError) as exc:
                raise DataFormatError(f"{where}: {exc}") from None
        return meta

    def _load_classes(self) -> dict[str, int]:
        try:
            data = self.store.get(CLASSES_KEY)
        except (FileNotFoundError, KeyError):
            return {}  # the seed writes it only when the input had classes
        try:
            mapping = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise DataFormatError(f"{self.store.describe(CLASSES_KEY)}: not valid JSON ({str(exc)[:200]})") from None
        return mapping if isinstance(mapping, dict) else {}

    def _setup(self) -> None:
        """Subclass hook after metadata is loaded (cheap, no I/O on data files)."""

    # ----------------------------------------------------------------- keys & indices

    def image_key(self, n: int) -> str:
        return f"images/images_{n}.{self.image_ext}"

    def label_key(self, n: int) -> str:
        return f"labels/labels_{n}.{self.label_ext}"

    def file_len(self, n: int) -> int:
        return self.layout.file_len(n)

    def locate(self, index: int) -> tuple[int, int]:
        """``index`` -> (file number, position in that file)."""
        index = int(index)
        if index < 0:
            index += self.len
        if not 0 <= index < self.len:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {self.len}")
        return divmod(index, self.images_per_file)

    def __len__(self) -> int:
        return self.len

    def describe(self, index: int) -> str | None:
        try:
            n, j = self.locate(index)
        except IndexError:
            return None
        return f"{self.store.describe(self.image_key(n))} [sample {j}]"

    # ----------------------------------------------------------------- per-process state

    def _state(self) -> _ProcessState:
        st = self.__dict__.get("_proc")
        if st is None or st.pid != os.getpid():
            with _STATE_LOCK:
                st = self.__dict__.get("_proc")
                if st is None or st.pid != os.getpid():
                    st = _ProcessState()
                    self.__dict__["_proc"] = st
        return st

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_proc", None)
        return state

    def _reset_process_state(self) -> None:
        st = self.__dict__.pop("_proc", None)
        if st is not None:
            st.close()

    @staticmethod
    def worker_init_fn(worker_id: int) -> None:
        """Kept for the seed's callers; state is already per process, so this only resets it."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        ds = getattr(info, "dataset", None)
        while ds is not None and not isinstance(ds, ConvertedReader) and hasattr(ds, "dataset"):
            ds = ds.dataset
        if isinstance(ds, ConvertedReader):
            ds._reset_process_state()

    def close_fetch_resources(self) -> None:
        self.close()

    async def aclose_fetch_resources(self) -> None:
        await self.store.aclose()

    def close(self) -> None:
        """Close this process's file handles and store clients (they reopen on next use)."""
        st = self.__dict__.get("_proc")
        if st is not None and st.pid == os.getpid():
            st.close()
        self.store.close()

    def __enter__(self) -> "ConvertedReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- byte access

    @property
    def is_local(self) -> bool:
        return isinstance(self.store, LocalStore)

    def _cached(self, table: str, n: int, load: Callable[[int], Any]) -> Any:
        st = self._state()
        cache = st.files if table == "files" else st.labels
        value = cache.get(n)
        if value is None:
            with st.locks((table, n)):
                value = cache.get(n)
                if value is None:
                    value = load(n)
                    cache[n] = value
        return value

    def file_info(self, n: int) -> Any:
        """Per-file layout (offsets, header size...), loaded once per process."""
        return self._cached("files", n, self._load_file_info)

    def labels_of(self, n: int) -> Any:
        """All labels of file ``n``, loaded once per process."""
        return self._cached("labels", n, self._load_labels)

    async def _acached(self, table: str, n: int, load: Callable[[int], Any]) -> Any:
        st = self._state()
        cache = st.files if table == "files" else st.labels
        value = cache.get(n)
        if value is None:
            # NOTE: the one-time per-file load is blocking; run it off the event loop.
            value = await asyncio.get_running_loop().run_in_executor(None, self._cached, table, n, load)
        return value

    def _load_file_info(self, n: int) -> Any:
        return None

    def _load_labels(self, n: int) -> Any:
        raise NotImplementedError

    def size_of(self, key: str) -> int:
        try:
            return self.store.size(key)
        except (FileNotFoundError, KeyError):
            raise FileNotFoundError(f"{self.store.describe(key)} is missing, but {self.store.describe(METADATA_KEY)} "
                                    f"lists {self.total_num_arrays} files: the dataset copy or conversion is incomplete") from None

    def read(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``: ``os.pread`` on a per-process descriptor locally
        (thread-safe, no seek), a ranged GET otherwise."""
        if self.is_local and hasattr(os, "pread"):
            st = self._state()
            fd = st.fds.get(key)
            if fd is None:
                with st.locks(("fd", key)):
                    fd = st.fds.get(key)
                    if fd is None:
                        try:
                            fd = os.open(self.store.path(key), os.O_RDONLY | getattr(os, "O_BINARY", 0))
                        except FileNotFoundError:
                            self.size_of(key)  # raises the explanatory error
                            raise
                        st.fds[key] = fd
            data = os.pread(fd, length, offset)
        else:
            data = self.store.get(key, (offset, length))
        if len(data) != length:
            raise DataFormatError(f"{self.store.describe(key)}: wanted {length} bytes at offset {offset}, got {len(data)}: "
                                  "the file is shorter than its metadata says (truncated or corrupt)")
        return data

    async def aread(self, key: str, offset: int, length: int) -> bytes:
        if self.is_local:
            return await asyncio.get_running_loop().run_in_executor(None, self.read, key, offset, length)
        data = await self.store.aget(key, (offset, length))
        if len(data) != length:
            raise DataFormatError(f"{self.store.describe(key)}: wanted {length} bytes at offset {offset}, got {len(data)}: "
                                  "the file is shorter than its metadata says (truncated or corrupt)")
        return data

    def read_all(self, key: str) -> bytes:
        try:
            return self.store.get(key)
        except (FileNotFoundError, KeyError):
            self.size_of(key)
            raise

    def check_files(self) -> None:
        """Check that every data file exists and is as long as the metadata requires."""
        for n in range(self.total_num_arrays):
            self.file_info(n)
            self.labels_of(n)

    # ----------------------------------------------------------------- fetch / decode

    def fetch_raw(self, index: int) -> Any:
        n, j = self.locate(index)
        return self._fetch(n, j)

    async def fetch_raw_async(self, index: int) -> Any:
        n, j = self.locate(index)
        return await self._afetch(n, j)

    def decode(self, index: int, raw: Any) -> tuple[Any, Any]:
        image, label = self._decode(raw)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def _fetch(self, n: int, j: int) -> Any:
        """Blocking I/O for sample ``j`` of file ``n``: its raw bytes (and label)."""
        raise NotImplementedError

    async def _afetch(self, n: int, j: int) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, self._fetch, n, j)

    def _decode(self, raw: Any) -> tuple[Any, Any]:
        """CPU: raw bytes -> (PIL image, label) before transforms."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset_path!r}, len={self.len}, files={self.total_num_arrays})"


def _open_store(url: str, options: dict[str, Any]) -> ByteStore:
    if url.startswith("s3://"):
        from ...storage import s3  # noqa: F401  (registers the "s3" scheme)
    return open_store(url, **options)


# ============================================================================ registry


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
    store = kwargs.pop("store", None) or _open_store(str(dataset_path), kwargs.pop("storage_options", None) or {})
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
