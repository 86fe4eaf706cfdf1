"""Opt-in skip policy: samples that fail *permanently* are left out of their batch and reported,
instead of ending the epoch.

By default every failure ends the epoch with an error naming the key and index: a loader must
never lose data silently. Some datasets do contain a few unreadable files (a truncated JPEG, an
object deleted since the index was built); wrapping the dataset in :class:`SkipErrors` and
collating with :func:`skip_collate` turns those into reported gaps::

    ds = SkipErrors(get_dataset("s3", ...), report_file="skipped.jsonl", max_skipped=100)
    loader = DataLoader(ds, batch_size=256, num_workers=8, collate_fn=skip_collate())
    for batch in loader:
        if batch is None:      # every sample of this batch was skipped
            continue
        ...
    print(ds.skipped())        # [{"index": 17, "key": "s3://bucket/...", "error": "..."}, ...]

What is skipped: errors that mean "this sample cannot be read", by default missing objects
(``FileNotFoundError``), refused access (``PermissionError``), undecodable or oversized data
(``SampleLoadError``, ``DataFormatError``). Transient failures (throttling, 5xx, resets,
timeouts) are never skipped: the store retries them, and when its retries run out the epoch
still fails, because a flaky network is not a property of the sample.

Each skip is logged (``logging.WARNING``, logger ``concurrent_dataloader.skip``), counted as a
``fetch_errors`` in ``loader.stats()``, and appended as one JSON line to the report file, which
every worker process writes to (``O_APPEND``) and :meth:`SkipErrors.skipped` reads back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import uuid
import weakref
from typing import Any, Callable, Sequence

from . import telemetry
from ._atomic import atomic_write_bytes
from ._process_local import ProcessLocal, drop_process_local
from .errors import ConfigError, DataFormatError, SampleLoadError
from .loader.protocol import DatasetWrapper, describe_index, is_fetch_decode

__all__ = ["SkipErrors", "SkippedSample", "skip_collate", "DEFAULT_SKIP_ERRORS"]

log = logging.getLogger(__name__)

DEFAULT_SKIP_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, PermissionError, SampleLoadError,
                                                         DataFormatError)


class SkippedSample:
    """Stands in for a sample that was skipped; :func:`skip_collate` drops it from the batch."""

    __slots__ = ("index", "key", "error")

    def __init__(self, index: int, key: str | None, error: str) -> None:
        self.index = index
        self.key = key
        self.error = error

    def __reduce__(self):
        return (SkippedSample, (self.index, self.key, self.error))

    def __repr__(self) -> str:
        return f"SkippedSample(index={self.index}, key={self.key!r})"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _SkipCount:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0


class SkipErrors(DatasetWrapper):
    """Wraps a dataset (ours or any map-style one) so that permanently failing samples become
    :class:`SkippedSample` markers, each reported; see the module docstring.

    errors
        Exception types that mean "skip this sample" (default :data:`DEFAULT_SKIP_ERRORS`).
    report_file
        JSON-lines file the skips are appended to, from every process. Default: a private temp
        file, removed when this object (in the process that made it) is closed or collected.
    max_skipped
        Raise instead of skipping once a process has skipped this many samples (``None``: no
        limit), so a wrong prefix or expired credentials cannot quietly empty an epoch.
    """

    def __init__(self, dataset: Any, errors: Sequence[type[BaseException]] = DEFAULT_SKIP_ERRORS, *,
                 report_file: str | os.PathLike | None = None, max_skipped: int | None = None) -> None:
        errors = tuple(errors)
        if not errors or not all(isinstance(e, type) and issubclass(e, BaseException) for e in errors):
            raise ConfigError(f"errors must be exception types, got {errors!r}")
        if max_skipped is not None and (isinstance(max_skipped, bool) or not isinstance(max_skipped, int)
                                        or max_skipped < 0):
            raise ConfigError(f"max_skipped must be None or an int >= 0, got {max_skipped!r}")
        self.dataset = dataset
        self.errors = errors
        self.max_skipped = max_skipped
        if report_file is None:
            # A fresh file that follows the umask like every file we write (never mkstemp's 0o600).
            path = os.path.join(tempfile.gettempdir(), f"cdl-skipped-{uuid.uuid4().hex}.jsonl")
            atomic_write_bytes(path, b"")
            self.report_file = path
            # NOTE: only the creating process removes its temp file (workers get pickled copies).
            self._finalizer = weakref.finalize(self, _remove, path)
        else:
            self.report_file = os.fspath(report_file)
            self._finalizer = None

    # -- the wrapped dataset ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str | None:
        return describe_index(self.dataset, index)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # during unpickling
            raise AttributeError(name)
        return getattr(self.dataset, name)

    # Samples skipped in this process (NOTE [ Per-process state ] in _process_local.py).
    _skips = ProcessLocal(lambda self: _SkipCount())

    def __getstate__(self) -> dict[str, Any]:
        state = drop_process_local(self.__dict__)
        state["_finalizer"] = None
        return state

    # -- fetch / decode with the policy ----------------------------------------------------------
    def _inner_fetch_decode(self) -> bool:
        # NOTE: only when the loader itself could use the split (no __getitem__ override below
        # it, see is_fetch_decode); otherwise the wrapped dataset's own __getitem__ is called.
        known = self.__dict__.get("_inner_fd")
        if known is None:
            known = self.__dict__["_inner_fd"] = is_fetch_decode(self.dataset)
        return known

    def fetch_raw(self, index: int) -> Any:
        try:
            return self.dataset.fetch_raw(index) if self._inner_fetch_decode() else self.dataset[index]
        except self.errors as exc:
            return self._skip(index, exc)

    async def fetch_raw_async(self, index: int) -> Any:
        if not self._inner_fetch_decode():
            return await super().fetch_raw_async(index)
        try:
            return await self.dataset.fetch_raw_async(index)
        except self.errors as exc:
            return self._skip(index, exc)

    def decode(self, index: int, raw: Any) -> Any:
        if isinstance(raw, SkippedSample):
            return raw
        if not self._inner_fetch_decode():  # a plain dataset: fetch_raw already produced the sample
            return raw
        try:
            return self.dataset.decode(index, raw)
        except self.errors as exc:
            return self._skip(index, exc)

    def _skip(self, index: int, exc: BaseException) -> SkippedSample:
        counter = self._skips  # a fresh count per worker process
        with counter.lock:
            counter.n += 1
            count = counter.n
        key = self.describe(index)
        if self.max_skipped is not None and count > self.max_skipped:
            exc.add_note(f"SkipErrors: more than max_skipped={self.max_skipped} samples failed in this process; "
                         f"see {self.report_file} for the ones skipped so far")
            raise exc
        error = f"{type(exc).__name__}: {exc}"
        log.warning("skipped dataset index %s (%s): %s", index, key, error)
        telemetry.count("fetch_errors")
        line = json.dumps({"index": index, "key": key, "error": error[:2000], "pid": os.getpid()}) + "\n"
        fd = os.open(self.report_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))  # NOTE: one O_APPEND write per line: lines never interleave
        finally:
            os.close(fd)
        return SkippedSample(index, key, error)

    def skipped(self) -> list[dict[str, Any]]:
        """Every skip reported so far, by any process, in the order they were written."""
        try:
            with open(self.report_file, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    # -- resources ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the wrapped dataset and remove the private report file (if this object made one)."""
        close = getattr(self.dataset, "close", None)
        if callable(close):
            close()
        if self._finalizer is not None:
            self._finalizer()

    def __repr__(self) -> str:
        return f"SkipErrors({self.dataset!r}, report_file={self.report_file!r})"


def skip_collate(collate_fn: Callable[[list], Any] | None = None) -> Callable[[list], Any]:
    """A collate function that drops :class:`SkippedSample` markers, then calls ``collate_fn``
    (torch's ``default_collate`` by default). A batch with nothing left becomes ``None``."""
    if collate_fn is None:
        from torch.utils.data import default_collate as collate_fn  # type: ignore[assignment]
    return _SkipCollate(collate_fn)


class _SkipCollate:
    """Picklable (spawned workers receive the collate function)."""

    def __init__(self, collate_fn: Callable[[list], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, SkippedSample):  # batch_size=None: one sample at a time
            return None
        kept = [s for s in batch if not isinstance(s, SkippedSample)]
        return self.collate_fn(kept) if kept else None
