"""Exception types. Each subclasses the builtin a caller would already catch."""

from __future__ import annotations

__all__ = [
    "ConcurrentDataLoaderError",
    "ConfigError",
    "DataFormatError",
    "SampleLoadError",
    "ObjectTooLargeError",
    "WorkersStoppedError",
    "annotate_sample_error",
]


class ConcurrentDataLoaderError(Exception):
    """Marker base so callers can catch everything this library raises on purpose."""


class ConfigError(ConcurrentDataLoaderError, ValueError):
    """A bad argument or configuration value."""


class DataFormatError(ConcurrentDataLoaderError, ValueError):
    """A file we parse (index, classes, metadata, archive) is malformed; the message names it."""


class SampleLoadError(ConcurrentDataLoaderError, OSError):
    """Loading one sample failed; ``index`` and ``key`` say which."""

    def __init__(self, message: str, index: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.key = key

    def __reduce__(self):  # keep index/key across pickling (worker -> main)
        return (type(self), (self.args[0] if self.args else "", self.index, self.key))


class ObjectTooLargeError(SampleLoadError):
    """An object is larger than the store's ``max_object_bytes``; refused before its body is read."""


class WorkersStoppedError(ConcurrentDataLoaderError, RuntimeError):
    """An iterator was asked for a batch after its loader stopped the workers (or fetch threads)
    that owed it: the epoch cannot go on, and ending it quietly would lose data."""


_NOTE_PREFIX = "[concurrent_dataloader] while loading dataset index"


def annotate_sample_error(exc: BaseException, index: object, key: str | None = None) -> BaseException:
    """Attach the dataset index (and key/path when known) to ``exc`` as a PEP 678 note.

    Why a note instead of wrapping: the caller keeps the original exception type (so an
    ``except FileNotFoundError`` in user code still works) and the original traceback, and
    torch's ExceptionWrapper formats notes into the message it re-raises in the main process.
    """
    notes = getattr(exc, "__notes__", None) or []
    if not any(n.startswith(_NOTE_PREFIX) for n in notes):
        where = f" ({key})" if key else ""
        exc.add_note(f"{_NOTE_PREFIX} {index}{where}")
    return exc
