"""Offline conversion: the converter base classes (plan, resume, distributed, write loop).

A format subclasses :class:`ConverterFixedSize` or :class:`ConverterFlexibleSize` and
declares its ``writer`` (a :class:`~.writers.FileWriter`) and the ``_writer_args`` it needs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import numpy as np

from ..._atomic import TEMP_MARKER, atomic_write_bytes, is_temp_name
from ...errors import ConfigError, DataFormatError
from ...loader.config import FetchImpl
from ...loader.protocol import ConcurrentDataset
from ._dist import DistContext, resolve_dist, split_files
from .encoders import LOSSY_FORMATS, FixedImageEncoder, FlexibleImageEncoder, int_label
from .layout import FORMAT_VERSION, METADATA_KEY, PLAN_KEY, Layout, array_shape, mode_channels, normalize_shape
from .sources import DatasetSource, FolderSource, check_dataset, collate_arrays, collate_lists
from .writers import FileWriter

__all__ = ["Converter", "ConverterFixedSize", "ConverterFlexibleSize", "ConversionResult", "OutputExistsError"]

class OutputExistsError(ConfigError):
    """The output path already holds a different dataset and ``overwrite`` was not asked for."""


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


class Converter(ABC):
    """Common part of all converters. Subclass :class:`ConverterFixedSize` or
    :class:`ConverterFlexibleSize`, and declare ``writer`` (and ``_writer_args``).

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
                 num_fetch_workers: int = 8, fetch_impl: FetchImpl = "threaded",
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
    def _image_encoder(self, from_folder: bool) -> Callable[[Any, str], Any]:
        """Checks/converts one input image; ``from_folder``: the input is a folder's file bytes."""

    def _label_encoder(self) -> Callable[[Any, str], Any]:
        return int_label

    def _build_source(self, input_data: Any) -> ConcurrentDataset:
        if isinstance(input_data, (str, os.PathLike)):
            if self.dense:
                raise ConfigError(f"{type(self).__name__} needs a Dataset yielding (image, label_map); a folder has no label maps")
            return FolderSource(input_data, self._image_encoder(True))
        check_dataset(input_data)
        return DatasetSource(input_data, self._image_encoder(False), self._label_encoder())

    # The format's writer: file group n is written by writer(output_files(n), n_items, *_writer_args()).
    writer: ClassVar[type[FileWriter]]

    def _writer_args(self) -> tuple[Any, ...]:
        return ()

    def _open_writer(self, n: int, n_items: int) -> FileWriter:
        """A writer for file group ``n`` holding ``n_items`` samples."""
        return self.writer(self.output_files(n), n_items, *self._writer_args())

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
                if is_temp_name(entry.name) and entry.name[1:].split(TEMP_MARKER)[0] in names:
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

    def _writer_args(self) -> tuple[Any, ...]:
        return (self.sample_shape,)

    def _image_encoder(self, from_folder: bool) -> FixedImageEncoder:
        resize = from_folder if self.resize is None else self.resize
        return FixedImageEncoder(self.shape, self.im_mode, resize, self.resample, type(self).__name__)

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
            if reencode is None or reencode.upper() not in LOSSY_FORMATS:
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

    def _image_encoder(self, from_folder: bool) -> FlexibleImageEncoder:
        return FlexibleImageEncoder(self.reencode, self.quality, self.verify_images)

    def _format_params(self) -> dict[str, Any]:
        return {"reencode": self.reencode, "quality": self.quality}

    def _metadata_extra(self) -> dict[str, Any]:
        return {"image_encoding": self.reencode or "original"}
