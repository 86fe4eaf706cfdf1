"""The per-process state helper (concurrent_dataloader/_process_local.py), under fork and spawn."""

from __future__ import annotations

import copy
import gc
import multiprocessing as mp
import os
import pickle
import threading

import pytest

from concurrent_dataloader import _process_local
from concurrent_dataloader._process_local import ProcessLocal, ProcessLocalValue, ProcessLock, drop_process_local


class Resource:
    """Stands for a file descriptor or a thread pool: remembers who made it and whether it was closed."""

    made = 0

    def __init__(self, owner_name: str) -> None:
        Resource.made += 1
        self.owner_name = owner_name
        self.pid = os.getpid()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Owner:
    res = ProcessLocal(lambda self: Resource(self.name), close=Resource.close)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getstate__(self) -> dict:
        return drop_process_local(self.__dict__)


class FinalizedOwner:
    res = ProcessLocal(lambda self: Resource("fin"), close=Resource.close, close_with_owner=True)


class CarelessOwner:
    """No __getstate__: the slot itself must refuse to be pickled with its value."""

    res = ProcessLocal(lambda self: Resource("careless"), close=Resource.close)


def _child_report(obj: Owner, parent_res_id: int | None, q) -> None:
    res = obj.res
    q.put((res.pid == os.getpid(), res.owner_name, id(res) != parent_res_id, obj.res is res))


def _use_in(context: str, obj: Owner, parent_res_id: int | None) -> tuple:
    ctx = mp.get_context(context)
    q = ctx.Queue()
    p = ctx.Process(target=_child_report, args=(obj, parent_res_id, q))
    p.start()
    try:
        return q.get(timeout=60)
    finally:
        p.join(60)
        assert p.exitcode == 0


def test_lazy_and_stable_in_one_process():
    o = Owner("a")
    assert "_res_state" not in o.__dict__ and Owner.res.peek(o) is None
    r = o.res
    assert o.res is r and Owner.res.peek(o) is r and r.pid == os.getpid()
    with pytest.raises(AttributeError):
        o.res = Resource("x")


def test_threads_race_to_create_one_value():
    o = Owner("race")
    barrier = threading.Barrier(8)
    seen = []

    def use():
        barrier.wait()
        seen.append(o.res)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in seen}) == 1


def test_reset_closes_and_recreates():
    o = Owner("r")
    first = o.res
    Owner.res.reset(o)
    assert first.closed and Owner.res.peek(o) is None
    assert o.res is not first and not o.res.closed
    Owner.res.reset(Owner("never used"))  # nothing to close: no error


def test_pickle_drops_the_value():
    o = Owner("p")
    r = o.res
    clone = pickle.loads(pickle.dumps(o))
    assert "_res_state" not in clone.__dict__
    assert clone.res is not r and clone.res.owner_name == "p"
    careless = CarelessOwner()
    careless.res
    careless_clone = pickle.loads(pickle.dumps(careless))
    assert careless_clone.__dict__["_res_state"] is None  # the slot unpickled empty, not with a value
    assert isinstance(careless_clone.res, Resource) and careless_clone.res is not careless.res
    assert copy.deepcopy(careless).res is not careless.res


def test_close_with_owner_on_garbage_collection():
    o = FinalizedOwner()
    r = o.res
    del o
    gc.collect()
    assert r.closed


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_child_process_gets_its_own_value(context):
    o = Owner("shared")
    parent_res = o.res
    own_pid, name, new_object, stable = _use_in(context, o, id(parent_res))
    assert own_pid and name == "shared" and stable
    if context == "fork":
        assert new_object
    assert not parent_res.closed and o.res is parent_res  # the child never touched the parent's value


def _fork_child_resets(obj: FinalizedOwner, inherited, q) -> None:
    FinalizedOwner.res.reset(obj)  # inherited value: forgotten, not closed
    q.put((inherited.closed, inherited in _process_local._FORK_ORPHANS, obj.res.pid == os.getpid()))


def test_forked_child_never_closes_the_parents_value():
    o = FinalizedOwner()
    r = o.res
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_fork_child_resets, args=(o, r, q))
    p.start()
    closed_in_child, orphaned, own = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0 and not closed_in_child and orphaned and own
    assert not r.closed


def _fork_child_uses_locks(lock: ProcessLock, o: Owner, q) -> None:
    got = lock.get().acquire(timeout=5)
    q.put((got, o.res.pid == os.getpid()))


def test_locks_held_at_fork_are_fresh_in_the_child():
    lock = ProcessLock()
    o = Owner("locked")
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock, _process_local._CREATE_LOCK:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_fork_child_uses_locks, args=(lock, o, q))
        p.start()
        got, own = q.get(timeout=60)
        p.join(60)
    finally:
        release.set()
        t.join()
    assert p.exitcode == 0 and got and own


def _module_resource() -> Resource:
    return Resource("module")


def test_process_local_value_for_module_state():
    v = ProcessLocalValue(_module_resource)
    assert v.get() is v.get()
    clone = pickle.loads(pickle.dumps(v))
    assert clone.get() is not v.get()
