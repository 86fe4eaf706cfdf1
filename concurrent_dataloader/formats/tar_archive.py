"""``ImageArchive``: a map-style dataset over one TAR archive, read by (offset, size).

One archive instead of millions of small files: opening a file per image is what makes
network filesystems and object stores slow. An **index table** records where each image's
bytes start and how long they are, so every sample is one positioned read (``os.pread`` on a
local file, a ranged GET on an S3 object), which the concurrent fetchers overlap.

Index table files (built once, next to the archive by default)::

    <stem>.idx.npy    float64 array, one row per image: index, offset, size, labels...
    <stem>.idx.json   build record: format/version, the archive's size/mtime/member count,
                      the options it was built with (root, extensions, labels file hash),
                      class names, member names, and the SHA-256 of the .npy file

The ``.npy`` is saved without pickle and loaded with ``allow_pickle=False``. When the archive
(or an option) no longer matches the build record, the index is rebuilt with a warning; a
stale index is never used silently. Both files are written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import tarfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from .._closing import ClosesStore
from ..errors import ConfigError, DataFormatError
from ..decoding import check_decoder, decode_image
from ..loader.protocol import ConcurrentDataset
from ..storage.base import ByteStore, open_store
from ..storage.local import LocalStore
from ..storage.mapped import MmapStore
from ..storage.memory import MemoryStore
from ..storage.pread import PreadStore
from ..storage.url import is_remote_url, local_path, split_object_url
from ._tarutil import (CONVERT_HINT, SkippedMembers, StoreReader, check_end_of_archive, decompress_all,
                       detect_compression, iter_tar_members, safe_member_name)

__all__ = ["ImageArchive", "default_loader", "load_labels_file", "INDEX_FORMAT", "INDEX_VERSION"]

INDEX_FORMAT = "concurrent_dataloader.ImageArchive.index"
INDEX_VERSION = 1
_COLUMNS = 3  # index, offset, size; labels follow
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tgz", ".tbz2", ".txz", ".tar")


try:  # PIL's refusal of an image over MAX_IMAGE_PIXELS (kept at PIL's default, never disabled)
    from PIL.Image import DecompressionBombError as _DecompressionBomb
except ImportError:  # pragma: no cover
    class _DecompressionBomb(Exception):  # type: ignore[no-redef]
        pass


def default_loader(f: BinaryIO) -> Any:
    """PIL open of a file object, converted to RGB (as torchvision's loader does), so that
    grayscale/CMYK images batch with the rest. Pass ``loader=`` to keep the original mode."""
    from PIL import Image

    img = Image.open(f)
    return img.convert("RGB")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _archive_stem(name: str) -> str:
    lower = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name else name


# --------------------------------------------------------------------------- labels files
def load_labels_file(path: str | os.PathLike) -> dict[str, list[float]]:
    """Read a labels file mapping member path -> list of numbers (e.g. a bounding box).

    JSON: ``{"cat/1.jpg": [x0, y0, x1, y1], "cat/2.jpg": 3, ...}``.
    CSV (``.csv``): ``path,v1,v2,...`` per line; a first line whose values are not numbers
    is taken as a header. Every entry must have the same number of values.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return _parse_labels(path, text)
    except (csv.Error, OverflowError, RecursionError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path}: unreadable labels file ({type(exc).__name__}: {str(exc)[:200]})") from None


def _parse_labels(path: Path, text: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    if path.suffix.lower() == ".csv":
        for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row or not any(c.strip() for c in row):
                continue
            try:
                values = [float(c) for c in row[1:]]
            except ValueError:
                if lineno == 1 and not out:
                    continue  # header
                raise DataFormatError(f"{path}:{lineno}: labels must be numbers, got {row[1:]!r}") from None
            if not values:
                raise DataFormatError(f"{path}:{lineno}: no labels for {row[0]!r}")
            out[row[0].strip()] = values
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc}); labels files are JSON or .csv") from exc
        if not isinstance(data, dict):
            raise DataFormatError(f"{path}: expected a JSON object mapping member path to labels")
        for key, value in data.items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise DataFormatError(f"{path}: labels for {key!r} must be a number or a list of numbers, got {value!r}")
            out[key] = [float(v) for v in values]
    widths = {len(v) for v in out.values()}
    if len(widths) > 1:
        raise DataFormatError(f"{path}: every entry needs the same number of labels, found lengths {sorted(widths)}")
    if not out:
        raise DataFormatError(f"{path}: the labels file is empty")
    return {safe_member_name(k) or k: v for k, v in out.items()}


# --------------------------------------------------------------------------- archive bytes
class _StoreSource:
    """The archive's bytes: ranged reads of one object of a store.

    The store is chosen by :meth:`ImageArchive._make_source`: :class:`PreadStore` (a local
    archive), :class:`MmapStore` (a local archive with ``data_in_memory``), :class:`MemoryStore`
    (compressed archives, and remote ones with ``data_in_memory``), or the archive's own remote
    store (one ranged GET per member). Each store keeps its handles per process.
    """

    def __init__(self, store: ByteStore, key: str) -> None:
        self.store = store
        self.key = key

    def read(self, offset: int, size: int) -> bytes:
        return self.store.get(self.key, (offset, size))

    async def aread(self, offset: int, size: int) -> bytes:
        return await self.store.aget(self.key, (offset, size))

    def warm(self) -> None:
        warm = getattr(self.store, "warm", None)
        if warm is not None:
            warm(self.key)


class _FetchAll:
    """Picklable 'read the whole archive and decompress it' (the MemoryStore's loader, for spawn)."""

    def __init__(self, archive: "ImageArchive") -> None:
        self.local = archive._local_path
        self.store, self.key = archive._store, archive._key
        self.kind, self.name = archive.compression, archive.archive_name

    def __call__(self, key: str = "") -> bytes:
        raw = self.local.read_bytes() if self.local is not None else self.store.get(self.key)
        return decompress_all(raw, self.kind, self.name)


def _check_index(table: Any, names: Any, classes: Any, members: Any, archive_size: int, bounded: bool) -> str | None:
    """Why a loaded index table and its record are unusable, or None."""
    if not isinstance(table, np.ndarray) or table.dtype.kind not in "fiu" or table.ndim != 2 \
            or table.shape[1] < _COLUMNS + 1:
        return f"the table has an unexpected type or shape {getattr(table, 'dtype', '?')} {getattr(table, 'shape', '?')}"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "its member names are not a list of strings"
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "its class names are not a list of strings"
    if isinstance(members, bool) or not isinstance(members, int):
        return "its member count is not an integer"
    if table.shape[0] != len(names) or len(names) == 0:
        return f"the table has {table.shape[0]} rows for {len(names)} names"
    with np.errstate(all="ignore"):
        data = table.astype(np.float64)
        if not np.isfinite(data).all():
            return "the table has non-finite values"
        offsets, sizes = data[:, 1], data[:, 2]
        if (offsets < 0).any() or (sizes < 0).any() or (offsets != np.floor(offsets)).any() \
                or (sizes != np.floor(sizes)).any():
            return "the table has negative or fractional offsets/sizes"
        if bounded and float((offsets + sizes).max()) > archive_size:
            return "it points past the end of the archive"
        if (data[:, 0] != np.arange(len(names))).any():
            return "its row numbers are not 0, 1, 2, ..."
    return None


# --------------------------------------------------------------------------- the dataset
class ImageArchive(ClosesStore, ConcurrentDataset):
    """Images (and labels) stored in one TAR archive, local or as one object in S3.

    Arguments (the seed's, plus keyword-only extras):

    apath
        The archive: a local path, or a store URL such as ``s3://bucket/dir/train.tar``
        (then pass ``storage_options`` with the endpoint/credentials), or a key in ``store``.
    ipath
        Index table location (local path or store URL). Default: ``<stem>.idx.npy`` next to
        the archive (in the same store for S3 archives).
    root
        Only members under this folder of the archive are used (``'images/train/'``).
    transform, target_transform
        ``target_transform(img, labels)`` runs **before** ``transform(img)``, so it sees the
        original image (e.g. to rescale a bounding box by the source size).
    loader
        Turns a binary file object into an image (default: PIL, converted to RGB).
    decoder (keyword)
        ``"pil"`` (default: ``loader`` decodes) or ``"torchvision"``: the registry's fast decoder
        (:mod:`concurrent_dataloader.decoding`), a uint8 CHW RGB tensor straight from the member's
        bytes, for :mod:`concurrent_dataloader.transforms` (then ``loader`` must stay the default;
        ``target_transform`` sees the tensor).
    extensions
        Keep only members whose name ends with one of these (case-insensitive).
    data_in_memory
        Local archive: a shared read-only mmap. Compressed or S3 archive: read fully into memory.
    open_after_fork, worker_open_archive
        Kept for seed compatibility; each process opens its own handle lazily anyway.
    labels_file (keyword)
        JSON or CSV mapping member path (relative to ``root``, or the full member name) to a
        list of numbers. Only members listed there are used. Without it, the label is the
        class index: classes are the first directory level under ``root``, sorted, from 0.
    store, storage_options (keyword)
        A :class:`ByteStore` holding the archive (``apath`` is then its key), or options for
        ``open_store`` when ``apath``/``ipath`` is a URL (``endpoint_url``, credentials...).
    rebuild_index, progress (keyword)
        Force an index rebuild; show a tqdm bar while building.

    Sample: ``(image, target)``. ``target`` is ``target_transform(img, labels)`` when given;
    otherwise the class index (``int``) without a labels file, or a float32 tensor of the
    labels with one.
    """

    def __init__(self, apath: str | os.PathLike, ipath: str | os.PathLike | None = None, root: str = "",
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 loader: Callable[[BinaryIO], Any] = default_loader,
                 extensions: Iterable[str] | str | None = None, data_in_memory: bool = False,
                 open_after_fork: bool = False, *, labels_file: str | os.PathLike | None = None,
                 store: ByteStore | None = None, storage_options: dict | None = None,
                 rebuild_index: bool = False, progress: bool = True, decoder: str = "pil") -> None:
        self.decoder = check_decoder(decoder)
        if decoder != "pil" and loader is not default_loader:
            raise ConfigError(f"decoder={decoder!r} replaces the loader; pass either loader=... or decoder=..., not both")
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader
        self.data_in_memory = bool(data_in_memory)
        self.progress = progress
        storage_options = dict(storage_options or {})
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.extensions = (tuple(sorted({e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}))
                           if extensions else None)
        root_norm = safe_member_name(str(root or ""))
        if root_norm is None:
            raise ConfigError(f"root={root!r} must be a relative folder inside the archive")
        self.root = (root_norm.rstrip("/") + "/") if root_norm else ""
        self.labels_file = Path(labels_file) if labels_file is not None else None

        # Where the archive lives.
        self._local_path: Path | None = None
        self._store: ByteStore | None = None
        self._key = ""
        if store is not None:
            self._store, self._key = store, os.fspath(apath)
            self.archive_name = store.describe(self._key)
        elif is_remote_url(apath):
            base, self._key = split_object_url(apath, "path/to/archive.tar")
            self._store = open_store(base, **storage_options)
            self.archive_name = self._store.describe(self._key)
        else:
            self._local_path = local_path(apath)
            self.archive_name = str(self._local_path)
            if not self._local_path.is_file():
                raise FileNotFoundError(f"archive not found: {self._local_path}")
        self.apath = apath

        # Where the index lives: (store, key).
        archive_key_name = self._local_path.name if self._local_path is not None else posixpath.basename(self._key)
        stem = _archive_stem(archive_key_name)
        if ipath is None:
            if self._local_path is not None:
                self._index_store, self._index_key = LocalStore(self._local_path.parent), f"{stem}.idx.npy"
            else:
                assert self._store is not None
                parent = posixpath.dirname(self._key)
                self._index_store = self._store
                self._index_key = posixpath.join(parent, f"{stem}.idx.npy") if parent else f"{stem}.idx.npy"
        elif is_remote_url(ipath):
            base, key = split_object_url(ipath, "path/to/archive.idx.npy")
            self._index_store, self._index_key = open_store(base, **storage_options), key
        else:
            p = local_path(ipath)
            self._index_store, self._index_key = LocalStore(p.parent), p.name
        key = self._index_key
        self._meta_key = (key[:-4] if key.endswith(".npy") else key) + ".json"
        self.ipath = ipath if ipath is not None else self._index_store.describe(self._index_key)

        # Compression, by magic bytes.
        head = self._read_head()
        self.compression = detect_compression(head)
        if self.compression is not None and not self.data_in_memory:
            hint_path = self.archive_name
            out = _archive_stem(archive_key_name) + ".tar"
            hint = CONVERT_HINT[self.compression].format(path=hint_path, out=out)
            raise DataFormatError(
                f"{self.archive_name} is {self.compression}-compressed, and a compressed archive cannot be read "
                f"at random offsets. Either pass data_in_memory=True (decompresses the whole archive into "
                f"memory in each process), or convert it once to a plain tar: {hint}")

        self._memory_data: bytes | None = None  # decompressed archive, only while building
        self._load_or_build_index(rebuild_index)
        self._source = self._make_source()
        self._memory_data = None

    # ------------------------------------------------------------------ locations
    def _read_head(self) -> bytes:
        if self._local_path is not None:
            with open(self._local_path, "rb") as f:
                return f.read(8)
        assert self._store is not None
        size = self._store.size(self._key)
        return self._store.get(self._key, (0, min(8, size))) if size else b""

    def _fingerprint(self) -> dict:
        """What the index must have been built from. Cheap: a stat / HEAD, never a scan."""
        if self._local_path is not None:
            st = self._local_path.stat()
            return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        assert self._store is not None
        return {"size": self._store.size(self._key)}

    def _options_record(self) -> dict:
        labels = None
        if self.labels_file is not None:
            labels = {"sha256": _sha256(self.labels_file.read_bytes())}
        return {"root": self.root, "extensions": list(self.extensions) if self.extensions else None,
                "labels_file": labels}

    # ------------------------------------------------------------------ index table
    def _load_or_build_index(self, rebuild: bool) -> None:
        fingerprint = self._fingerprint()
        options = self._options_record()
        if not rebuild:
            reason = self._try_load_index(fingerprint, options)
            if reason is None:
                return
            if reason != "missing":
                warnings.warn(f"{self.archive_name}: rebuilding index {self.ipath}: {reason}", RuntimeWarning,
                              stacklevel=3)
        table, names, classes, members = self._build_index()
        self._set_index(table, names, classes)
        self._save_index(table, names, classes, members, fingerprint, options)

    def _try_load_index(self, fingerprint: dict, options: dict) -> str | None:
        """Load a valid index; return None, or why it cannot be used ('missing' if absent).

        Everything read here is checked before use (types, shape, finite non-negative offsets
        and sizes inside the archive): a damaged or hostile index file means a rebuild, never an
        unexpected exception, an out-of-bounds read or a huge allocation.
        """
        store = self._index_store
        try:
            meta_raw = store.get(self._meta_key)
        except (FileNotFoundError, KeyError):
            try:
                store.size(self._index_key)
            except (FileNotFoundError, KeyError, NotImplementedError):
                return "missing"
            return "it has no build record (.json), so it cannot be checked against the archive"
        try:
            meta = json.loads(meta_raw)
            if not isinstance(meta, dict):
                return "its build record is not a JSON object"
            if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
                return f"unknown index format {str(meta.get('format'))[:80]!r} version {str(meta.get('version'))[:20]!r}"
            built = meta["archive"]
            if not isinstance(built, dict):
                return "its build record has no archive fingerprint"
            for k, v in fingerprint.items():
                if built.get(k) != v:
                    return f"the archive changed since the index was built ({k}: {str(built.get(k))[:40]} -> {v})"
            if meta["options"] != options:
                return ("it was built with different options (root, extensions or labels file); "
                        "give each configuration its own ipath= to keep both")
            npy = store.get(self._index_key)
            if _sha256(npy) != meta["npy_sha256"]:
                return "the .npy file does not match its build record"
            try:
                table = np.load(io.BytesIO(npy), allow_pickle=False)
            except Exception as exc:  # numpy's header parser raises many types (TokenError, SyntaxError...)
                return f"its .npy file is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
            names, classes = meta["names"], meta["classes"]
            members = meta["archive"].get("members", -1)
        except (FileNotFoundError, KeyError):
            return "the .npy file is missing"
        except (ValueError, TypeError, OSError, EOFError, RecursionError) as exc:
            return f"it is unreadable ({type(exc).__name__}: {str(exc)[:200]})"
        reason = _check_index(table, names, classes, members, fingerprint["size"], self.compression is None)
        if reason is not None:
            return reason
        self._set_index(table, names, classes)
        self.index_members = int(members)
        return None

    def _set_index(self, table: np.ndarray, names: list[str], classes: list[str]) -> None:
        self.index_table = table
        self.names = list(names)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self._offsets = table[:, 1].astype(np.int64)
        self._sizes = table[:, 2].astype(np.int64)

    def _save_index(self, table: np.ndarray, names: list[str], classes: list[str], members: int,
                    fingerprint: dict, options: dict) -> None:
        buf = io.BytesIO()
        np.save(buf, table, allow_pickle=False)
        npy = buf.getvalue()
        meta = {"format": INDEX_FORMAT, "version": INDEX_VERSION,
                "archive": {**fingerprint, "members": members, "name": self.archive_name},
                "options": options, "columns": ["index", "offset", "size"] + [f"label{i}" for i in range(table.shape[1] - _COLUMNS)],
                "npy_sha256": _sha256(npy), "classes": classes, "names": names}
        self.index_members = members
        try:
            # NOTE: .npy first, then the record that vouches for it; each put is atomic, so a
            # crash in between leaves a record/hash mismatch, which triggers a rebuild.
            self._index_store.put(self._index_key, npy)
            self._index_store.put(self._meta_key, json.dumps(meta).encode("utf-8"))
        except (OSError, NotImplementedError) as exc:
            warnings.warn(f"{self.archive_name}: could not save the index to {self.ipath} ({exc}); it will be "
                          "rebuilt next time. Pass ipath= a writable location.", RuntimeWarning, stacklevel=4)

    def _open_for_scan(self) -> tuple[tarfile.TarFile, int, Callable[[], None], Callable[[int, int], bytes]]:
        """A TarFile at the start, the byte total (progress bar), a closer, and read_at(offset, n)."""
        if self.compression is not None:
            raw = (self._local_path.read_bytes() if self._local_path is not None
                   else self._store.get(self._key))  # type: ignore[union-attr]
            data = self._memory_data = decompress_all(raw, self.compression, self.archive_name)
            fobj: BinaryIO = io.BytesIO(data)
            return tarfile.open(fileobj=fobj, mode="r:"), len(data), fobj.close, lambda o, n: data[o:o + n]
        if self._local_path is not None:
            f = open(self._local_path, "rb")
            try:
                # Seekable: tarfile jumps over member data instead of reading it.
                tar = tarfile.open(fileobj=f, mode="r:")
            except BaseException:
                f.close()
                raise
            return tar, os.fstat(f.fileno()).st_size, f.close, lambda o, n: os.pread(f.fileno(), n, o)
        store, key = self._store, self._key
        assert store is not None
        size = store.size(key)
        reader = io.BufferedReader(StoreReader(lambda off, n: store.get(key, (off, n)), size), 1 << 20)
        try:
            tar = tarfile.open(fileobj=reader, mode="r|")
        except BaseException:
            reader.close()
            raise
        return tar, size, reader.close, lambda o, n: store.get(key, (o, min(n, size - o))) if o < size else b""

    def _build_index(self) -> tuple[np.ndarray, list[str], list[str], int]:
        """Stream the archive once; returns (table, names, classes, member count)."""
        from tqdm.auto import tqdm

        labels_map = load_labels_file(self.labels_file) if self.labels_file is not None else None
        try:
            tar, total, closer, read_at = self._open_for_scan()
        except (tarfile.TarError, EOFError) as exc:
            raise DataFormatError(f"{self.archive_name}: not a tar archive ({exc})") from exc
        skipped = SkippedMembers(self.archive_name)
        found: list[tuple[str, int, int]] = []  # (name, offset, size)
        members = 0
        last_member = ""
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"indexing {posixpath.basename(self.archive_name)}",
                   disable=not self.progress, leave=False)

        def on_member(info: tarfile.TarInfo) -> None:
            nonlocal members, last_member
            members += 1
            last_member = info.name
            end = info.offset_data + info.size
            if end > total:
                raise DataFormatError(f"{self.archive_name}: member {info.name!r} needs bytes up to {end} but the "
                                      f"archive has only {total} (truncated archive)")
            if end > bar.n:
                bar.update(end - bar.n)

        try:
            with tar:
                for name, info in iter_tar_members(tar, self.archive_name, skipped, on_member):
                    if self.root and not name.startswith(self.root):
                        continue
                    if self.extensions and not name.lower().endswith(self.extensions):
                        continue
                    found.append((name, info.offset_data, info.size))
                check_end_of_archive(read_at, tar.offset, self.archive_name, last_member)
        finally:
            bar.close()
            closer()
        skipped.warn(stacklevel=5)

        rel = [(name[len(self.root):], name, off, size) for name, off, size in found]
        classes = sorted({r.split("/", 1)[0] for r, *_ in rel if "/" in r})
        class_to_idx = {c: i for i, c in enumerate(classes)}
        rows: list[list[float]] = []
        names: list[str] = []
        if labels_map is None:
            for r, name, off, size in rel:
                if "/" not in r:
                    continue  # a file directly under root belongs to no class
                names.append(name)
                rows.append([len(rows), off, size, class_to_idx[r.split("/", 1)[0]]])
        else:
            used = set()
            for r, name, off, size in rel:
                key = r if r in labels_map else name if name in labels_map else None
                if key is None:
                    continue
                used.add(key)
                names.append(name)
                rows.append([len(rows), off, size, *labels_map[key]])
            missing = sorted(set(labels_map) - used)
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
                raise DataFormatError(f"{self.labels_file}: {len(missing)} labelled member(s) are not images under "
                                      f"root {self.root!r} in {self.archive_name}: {shown}")
        if not rows:
            what = f" with extensions {list(self.extensions)}" if self.extensions else ""
            where = "in a class folder " if labels_map is None else ""
            raise DataFormatError(f"{self.archive_name}: no images {where}under root {self.root!r}{what} "
                                  f"({members} members scanned)")
        return np.asarray(rows, dtype=np.float64), names, classes, members

    # ------------------------------------------------------------------ reading
    def _make_source(self) -> _StoreSource:
        local = self._local_path
        key = local.name if local is not None else self._key
        if self.compression is not None or (local is None and self.data_in_memory):
            objects = {key: self._memory_data} if self._memory_data is not None else None
            return _StoreSource(MemoryStore(objects, loader=_FetchAll(self)), key)
        if local is not None:
            return _StoreSource(MmapStore(local.parent) if self.data_in_memory else PreadStore(local.parent), key)
        assert self._store is not None
        return _StoreSource(self._store, key)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def targets(self) -> list[int]:
        """Class index per image (labels column 0), as torchvision's ImageFolder has it."""
        return [int(v) for v in self.index_table[:, _COLUMNS]]

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.names, self.targets))

    def labels(self, index: int) -> list[float]:
        return [float(v) for v in self.index_table[index, _COLUMNS:]]

    def describe(self, index: int) -> str:
        return f"{self.archive_name}::{self.names[index]}"

    def _past_end(self, index: int, got: str) -> DataFormatError:
        size = int(self._sizes[index])
        return DataFormatError(
            f"{self.archive_name}: member {self.names[index]!r} (offset {int(self._offsets[index])}, {size} bytes) "
            f"reaches past the end of the archive ({got}): the archive is truncated or changed after the index "
            f"{self.ipath} was built; rebuild it with rebuild_index=True")

    def fetch_raw(self, index: int) -> bytes:
        size = int(self._sizes[index])
        try:
            data = self._source.read(int(self._offsets[index]), size)
        except EOFError as exc:
            raise self._past_end(index, str(exc)) from exc
        if len(data) != size:
            raise self._past_end(index, f"got {len(data)} bytes")
        return data

    async def fetch_raw_async(self, index: int) -> bytes:
        size = int(self._sizes[index])
        try:
            data = await self._source.aread(int(self._offsets[index]), size)
        except EOFError as exc:
            raise self._past_end(index, str(exc)) from exc
        if len(data) != size:
            raise self._past_end(index, f"got {len(data)} bytes")
        return data

    def decode(self, index: int, raw: bytes) -> tuple[Any, Any]:
        try:
            img = self.loader(io.BytesIO(raw)) if self.decoder == "pil" else decode_image(raw, self.decoder)
        except (OSError, SyntaxError, ValueError, _DecompressionBomb) as exc:  # UnidentifiedImageError: OSError
            raise DataFormatError(f"{self.archive_name}: member {self.names[index]!r} is not a readable image "
                                  f"({type(exc).__name__}: {exc})") from exc
        labels = self.labels(index)
        if self.target_transform is not None:
            target = self.target_transform(img, labels)  # before transform, on the original image
        elif self.labels_file is None:
            target = int(labels[0])
        else:
            import torch

            target = torch.tensor(labels, dtype=torch.float32)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def worker_open_archive(self, worker_id: int = 0) -> None:
        """Seed-compatible ``worker_init_fn``: open this process's handle now (optional: every
        process opens its own on first use)."""
        self._source.warm()

    @property
    def _fetch_store(self) -> ByteStore:
        """What ``close()`` releases: this process's file handle / mapping / store clients."""
        return self._source.store

    def __repr__(self) -> str:
        return (f"ImageArchive({self.archive_name!r}, images={len(self)}, classes={len(self.classes)}, "
                f"root={self.root!r}, data_in_memory={self.data_in_memory})")
