"""Per-process state: the one place that compares against ``os.getpid()``.

NOTE [ Per-process state ]
    Datasets and stores are built in the main process and reach DataLoader workers either by
    fork (the object is inherited, with everything it references) or by pickling (spawn,
    forkserver, torch's own pickling of the dataset). What they open or start (file
    descriptors, sockets, HTTP clients, thread pools, event loops, locks) must belong to the
    process that uses it:

    * it is created lazily, on first use, in the process that uses it;
    * it is keyed on the process id: a forked child that finds its parent's value creates its
      own instead of using it (the parent's threads do not exist in the child, its locks may be
      held forever, its sockets are shared with the parent);
    * it is never pickled: an unpickled copy starts empty;
    * a value inherited through fork is never closed or finalized in the child (closing could
      touch the parent's event loop or shut a socket the parent still uses); it is kept
      referenced in :data:`_FORK_ORPHANS` so no finalizer runs there either;
    * the lock that guards lazy creation is replaced in a forked child, because another thread
      of the parent may have held it at the moment of the fork.

    :class:`ProcessLocal` (a descriptor, for state owned by an object), :class:`ProcessLocalValue`
    (for module-level state) and :class:`ProcessLock` (a module-level lock) implement these rules;
    code elsewhere uses them instead of checking ``os.getpid()`` itself.

Example::

    class Store:
        _conn = ProcessLocal(lambda self: connect(self.url), close=lambda c: c.close())

        def get(self, key):
            return self._conn.get(key)          # this process's connection, created on first use

        def close(self):
            type(self)._conn.reset(self)        # closes it if this process created it

        def __getstate__(self):
            return drop_process_local(self.__dict__)
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, Generic, TypeVar, overload

__all__ = ["ProcessLocal", "ProcessLocalValue", "ProcessLock", "drop_process_local"]

T = TypeVar("T")

# Guards lazy creation. Reentrant: a factory may itself use another ProcessLocal (e.g. a fetcher
# created for a dataset that opens its own per-process state).
_CREATE_LOCK = threading.RLock()
# Values inherited through fork: referenced forever in the child, never closed there.
_FORK_ORPHANS: list[Any] = []


def _after_fork_in_child() -> None:
    global _CREATE_LOCK
    _CREATE_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Slot:
    """One object's value in the process ``pid`` that created it."""

    __slots__ = ("pid", "value", "finalizer")

    def __init__(self, pid: int, value: Any, finalizer: weakref.finalize | None) -> None:
        self.pid = pid
        self.value = value
        self.finalizer = finalizer

    def __reduce__(self) -> tuple:
        # Never pickle a value (a safety net for owners whose __getstate__ keeps the slot):
        # the slot unpickles as None, i.e. "not created yet".
        return (type(None), ())

    def __copy__(self) -> None:
        return None

    def __deepcopy__(self, memo: dict) -> None:
        return None


def _close_if_owner(pid: int, value: Any, close: Callable[[Any], None]) -> None:
    if os.getpid() == pid:
        close(value)


class ProcessLocal(Generic[T]):
    """A descriptor: ``obj.attr`` is this process's value, made by ``factory(obj)`` on first use.

    The value is stored in ``obj.__dict__[key]`` (``key`` defaults to ``"_<name>_state"``) with
    the id of the process that created it; see NOTE [ Per-process state ] for the rules.

    close
        Called with the value by :meth:`reset` (and, with ``close_with_owner``, when ``obj`` is
        garbage-collected), only in the process that created it.
    close_with_owner
        Register a ``weakref.finalize`` on ``obj`` so the value (e.g. a thread pool) is closed
        when its owner goes away without ``close()``.
    """

    def __init__(self, factory: Callable[[Any], T], *, close: Callable[[T], None] | None = None,
                 close_with_owner: bool = False, key: str | None = None) -> None:
        if close_with_owner and close is None:
            raise ValueError("close_with_owner needs close")
        self.factory = factory
        self.close = close
        self.close_with_owner = close_with_owner
        self.key = key
        self.name = key or "<unnamed>"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        if self.key is None:
            self.key = f"_{name.lstrip('_')}_state"

    @overload
    def __get__(self, obj: None, owner: type) -> "ProcessLocal[T]": ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return self.get(obj)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is per-process state; it cannot be assigned")

    def get(self, obj: Any) -> T:
        """This process's value for ``obj``, created on first use."""
        slot = obj.__dict__.get(self.key)
        pid = os.getpid()
        if slot is not None and slot.pid == pid:
            return slot.value
        with _CREATE_LOCK:
            slot = obj.__dict__.get(self.key)
            if slot is not None and slot.pid == pid:
                return slot.value
            if slot is not None:  # inherited through fork
                _orphan(slot)
            value = self.factory(obj)
            finalizer = None
            if self.close_with_owner:
                finalizer = weakref.finalize(obj, _close_if_owner, pid, value, self.close)
            obj.__dict__[self.key] = _Slot(pid, value, finalizer)
            return value

    def peek(self, obj: Any) -> T | None:
        """This process's value, or None when this process has not created one (no creation)."""
        slot = obj.__dict__.get(self.key)
        if slot is not None and slot.pid == os.getpid():
            return slot.value
        return None

    def reset(self, obj: Any) -> None:
        """Forget the value (the next use creates a new one); close it if this process made it."""
        with _CREATE_LOCK:
            slot = obj.__dict__.pop(self.key, None)
        if slot is None:
            return
        if slot.pid != os.getpid():
            _orphan(slot)
            return
        if slot.finalizer is not None:
            slot.finalizer.detach()
        if self.close is not None:
            self.close(slot.value)


def _orphan(slot: _Slot) -> None:
    if slot.finalizer is not None:
        slot.finalizer.detach()
    _FORK_ORPHANS.append(slot.value)


def drop_process_local(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an object's ``__dict__`` without its per-process values, for ``__getstate__``."""
    return {k: v for k, v in state.items() if not isinstance(v, _Slot)}


class ProcessLocalValue(Generic[T]):
    """Module-level per-process state: ``.get()`` is this process's ``factory()`` result."""

    _value: ProcessLocal[Any] = ProcessLocal(lambda self: self._factory())

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory

    def get(self) -> T:
        return self._value

    def __getstate__(self) -> dict[str, Any]:
        return drop_process_local(self.__dict__)


class ProcessLock(ProcessLocalValue[threading.Lock]):
    """A module-level lock that a forked child never inherits locked: each process has its own."""

    def __init__(self) -> None:
        super().__init__(threading.Lock)

    def __enter__(self) -> bool:
        return self.get().acquire()

    def __exit__(self, *exc: object) -> None:
        self.get().release()
