"""The training hot path: :class:`ConvertedReader`, the base of every format's reader.

It imports nothing of the offline conversion (encoders, sources, converters).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Any, Callable, ClassVar

from ..._closing import Closing
from ..._process_local import ProcessLocal, drop_process_local
from ...decoding import check_decoder
from ...errors import ConfigError, DataFormatError
from ...loader.protocol import ConcurrentDataset
from ...storage.base import ByteStore, open_store
from ...storage.local import LocalStore
from ...storage.pread import PreadStore
from ._io import KeyedLocks
from .layout import CLASSES_KEY, METADATA_KEY, Layout, array_shape, parse_metadata

__all__ = ["ConvertedReader", "open_dataset_store"]

class _ProcessState:
    """Everything a reader opens or caches in one process (see NOTE [ Per-process state ])."""

    def __init__(self) -> None:
        self.locks = KeyedLocks()
        self.files: dict[int, Any] = {}
        self.labels: dict[int, Any] = {}
        self.handles: list[Any] = []
        self.extra: dict[str, Any] = {}

    def close(self) -> None:
        for h in self.handles:
            try:
                h.close()
            except Exception:
                pass
        self.handles.clear()
        self.files.clear()


class ConvertedReader(Closing, ConcurrentDataset):
    """Map-style dataset over a converted dataset, on local disk or any :class:`ByteStore`.

    ``dataset_path`` is a directory or a URL (``s3://bucket/prefix``; ``storage_options`` go to
    :func:`open_store`, e.g. ``endpoint_url`` and credentials); or pass ``store=`` directly.
    Items are ``(image, label)`` with ``transform``/``target_transform`` applied.
    ``decoder`` (readers of encoded bytes: parquet, ipc, tar): ``"pil"`` (a ``PIL.Image`` in the
    stored mode) or ``"torchvision"`` (a uint8 CHW RGB tensor, see :mod:`concurrent_dataloader.decoding`).

    It implements the fetch/decode protocol: ``fetch_raw`` reads only one sample's bytes
    (a ranged read for memmap/HDF5, one row group's column chunk for Parquet, one record
    batch for IPC, one member for tar), ``decode`` builds the image. Per-file details (headers,
    footers, label arrays) are read once per process, on first use.

    File descriptors, h5py handles and caches live in a per-process state (NOTE [ Per-process
    state ] in ``_process_local.py``), so the dataset can be handed to workers under fork and
    spawn; ``worker_init_fn`` is kept for the seed's callers.
    """

    format_name: ClassVar[str] = ""
    image_ext: ClassVar[str] = ""
    label_ext: ClassVar[str] = ""
    # Formats whose metadata.json may name another (compatible) format.
    accepts_formats: ClassVar[tuple[str, ...]] = ()
    fixed_size: ClassVar[bool] = True
    # Readers whose samples are encoded image bytes (the decoder registry applies to them).
    accepts_decoder: ClassVar[bool] = False

    def __init__(self, dataset_path: str | os.PathLike | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None, *, store: ByteStore | None = None,
                 storage_options: dict[str, Any] | None = None, check_files: bool = False,
                 decoder: str = "pil") -> None:
        check_decoder(decoder)
        if decoder != "pil" and not self.accepts_decoder:
            raise ConfigError(f"{type(self).__name__} does not decode encoded images; decoder={decoder!r} applies to "
                              "the readers of encoded bytes (parquet, ipc, tar)")
        self.decoder = decoder
        if store is None:
            if dataset_path is None:
                raise ConfigError(f"{type(self).__name__} needs dataset_path (a directory or s3:// URL) or store=")
            store = open_dataset_store(str(dataset_path), storage_options or {})
        elif storage_options:
            raise ConfigError("pass storage_options only with dataset_path, not with store=")
        self.dataset_path = str(dataset_path) if dataset_path is not None else store.describe("")
        self.store = store
        # Local ranged reads: os.pread on this process's descriptor per file (thread-safe, no seek).
        self._pread = PreadStore(store.root) if isinstance(store, LocalStore) and hasattr(os, "pread") else None
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
        if self.fixed_size:  # one stored sample: uint8 pixels of this shape
            self.sample_shape = array_shape(self.shape, self.mode)
            self.sample_bytes = math.prod(self.sample_shape)
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
            from .registry import FORMATS

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

    # Closed by close()/worker_init_fn in this process, or when the reader is garbage-collected.
    _proc_state = ProcessLocal(lambda self: _ProcessState(), close=_ProcessState.close, close_with_owner=True,
                               key="_proc")

    def _state(self) -> _ProcessState:
        return self._proc_state

    def __getstate__(self) -> dict[str, Any]:
        return drop_process_local(self.__dict__)

    def _reset_process_state(self) -> None:
        ConvertedReader._proc_state.reset(self)
        if self._pread is not None:
            self._pread.close()

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
        st = ConvertedReader._proc_state.peek(self)
        if st is not None:
            st.close()  # keeps the labels already loaded; handles reopen on next use
        if self._pread is not None:
            self._pread.close()
        self.store.close()

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
        if self._pread is not None:
            try:
                data = self._pread.read_at(key, offset, length)
            except FileNotFoundError:
                self.size_of(key)  # raises the explanatory error
                raise
        else:
            data = self.store.get(key, (offset, length))
        return self._check_length(data, key, offset, length)

    def _check_length(self, data: bytes, key: str, offset: int, length: int) -> bytes:
        if len(data) != length:
            raise DataFormatError(f"{self.store.describe(key)}: wanted {length} bytes at offset {offset}, got {len(data)}: "
                                  "the file is shorter than its metadata says (truncated or corrupt)")
        return data

    async def aread(self, key: str, offset: int, length: int) -> bytes:
        if self.is_local:
            return await asyncio.get_running_loop().run_in_executor(None, self.read, key, offset, length)
        data = await self.store.aget(key, (offset, length))
        return self._check_length(data, key, offset, length)

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


def open_dataset_store(url: str, options: dict[str, Any]) -> ByteStore:
    return open_store(url, **options)  # importing storage registered every scheme
