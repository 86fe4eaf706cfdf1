"""Worker pools: batches in order, work starts at iterator creation, errors reach the consumer
and shut the pool down, and closing leaves no threads or child processes behind."""

from __future__ import annotations

import concurrent.futures.process
import os
import time
import traceback
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.batchup.helpers import LeakCheck
from concurrent_dataloader.batchup import data_source, work_pool

# Accessors and functions live at module level so worker processes can unpickle them.


class Identity:
    """Returns the indices it is given; can log each call to a folder and sleep per call.

    With ``ramp``, later batches (bigger first index) sleep less and finish sooner, so the
    completion order differs from the batch order.
    """

    def __init__(self, n, delay=0.0, log_dir=None, ramp=False):
        self.n, self.delay, self.log_dir, self.ramp = n, delay, log_dir, ramp

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        if self.log_dir is not None:
            Path(self.log_dir, f"{os.getpid()}-{int(idx[0])}-{uuid.uuid4().hex}").touch()
        if self.delay:
            time.sleep(self.delay * (1.0 - idx[0] / self.n) if self.ramp else self.delay)
        return idx


class Square(Identity):
    def __getitem__(self, idx):
        return np.asarray(idx) ** 2


class Failing(Identity):
    def __getitem__(self, idx):
        raise ValueError(f"cannot load samples {list(np.asarray(idx)[:3])}")


class ExitsProcess(Identity):
    def __getitem__(self, idx):
        os._exit(3)


def add_one(x, y):
    return x + 1, y


def task(a, b=0, *, c=0):
    time.sleep(0.02)
    return a + b + c, os.getpid()


def random_and_pid(x):
    time.sleep(0.05)
    return x, np.full(len(x), np.random.randint(1 << 30)), np.full(len(x), os.getpid())


def _calls(log_dir):
    return len(os.listdir(log_dir))


def _wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _resource_tracker_pids():
    return {p.pid for p in psutil.Process().children(recursive=True)
            if any("resource_tracker" in part for part in p.cmdline())}


def make_pool(kind, processes=2):
    return work_pool.WorkerThreadPool(processes) if kind == "thread" else work_pool.WorkerProcessPool(processes)


POOLS = ["thread", "process"]


@pytest.mark.parametrize("kind", POOLS)
def test_parallel_batches_match_serial_in_order(kind):
    ds = data_source.ArrayDataSource([Identity(100, delay=0.01, ramp=True), Square(100)])
    subset = data_source.ArrayDataSource([Identity(100), Square(100)], indices=np.arange(100)[::3], repeats=2)
    with make_pool(kind) as pool:
        for source in (ds, subset, ds.map(add_one)):
            pds = pool.parallel_data_source(source, batch_buffer_size=4)
            assert pds.num_samples() == source.num_samples()
            got = list(pds.batch_iterator(batch_size=7, shuffle=np.random.RandomState(12345)))
            expected = list(source.batch_iterator(batch_size=7, shuffle=np.random.RandomState(12345)))
            assert len(got) == len(expected) > 5
            for g, e in zip(got, expected):
                assert isinstance(g, tuple) and len(g) == 2
                np.testing.assert_array_equal(g[0], e[0])
                np.testing.assert_array_equal(g[1], e[1])
        # in order without shuffling too
        got = list(pool.parallel_data_source(ds, 3).batch_iterator(10))
        assert [b[0][0] for b in got] == list(range(0, 100, 10))


@pytest.mark.parametrize("kind", POOLS)
def test_work_starts_when_the_iterator_is_created(kind, tmp_path):
    ds = data_source.ArrayDataSource([Identity(50, log_dir=str(tmp_path))])
    with make_pool(kind) as pool:
        it = pool.parallel_data_source(ds, batch_buffer_size=3).batch_iterator(5)
        # No next() yet: the buffer fills in the background, and only up to its size.
        assert _wait_for(lambda: _calls(tmp_path) >= 3)
        time.sleep(0.2)
        assert _calls(tmp_path) == 3
        assert len(list(it)) == 10
        assert _calls(tmp_path) == 10


@pytest.mark.parametrize("kind", POOLS)
def test_closing_the_iterator_cancels_queued_work(kind, tmp_path):
    ds = data_source.ArrayDataSource([Identity(300, delay=0.1, log_dir=str(tmp_path))])
    with make_pool(kind) as pool:
        pds = pool.parallel_data_source(ds, batch_buffer_size=20)
        it = pds.batch_iterator(10)
        first = next(it)
        np.testing.assert_array_equal(first[0], np.arange(10))
        it.close()
        with pytest.raises(StopIteration):
            next(it)
        time.sleep(0.5)
        # Beyond the ~2 batches done when we closed, only tasks already running (2 workers) or, for
        # processes, already handed to the workers' call queue (workers + 1) ran on; not the buffer.
        assert _calls(tmp_path) <= 2 + 2 + 3 + 1 < 20
        # The pool is still usable by other iterators, and a `with` block closes one too.
        with pds.batch_iterator(50) as it2:
            assert next(it2)[0].tolist() == list(range(50))
        seen = _calls(tmp_path)
        time.sleep(0.4)
        # Only tasks already running (2 workers) or in the process pool's call queue (workers + 1)
        # may finish after the block; the buffered rest never starts.
        assert _calls(tmp_path) <= seen + 2 + 3


@pytest.mark.parametrize("kind", POOLS)
def test_worker_exception_reaches_consumer_and_pool_shuts_down(kind):
    leaks = LeakCheck()
    pool = make_pool(kind)
    other = pool.parallel_data_source(data_source.ArrayDataSource([Identity(1000, delay=0.05)]), 2).batch_iterator(10)
    it = pool.parallel_data_source(data_source.ArrayDataSource([Failing(100)]), 4).batch_iterator(
        batch_size=10, shuffle=np.random.RandomState(12345))
    with pytest.raises(ValueError, match="cannot load samples") as info:
        next(it)
    exc = info.value
    if kind == "thread":
        frames = traceback.extract_tb(exc.__traceback__)
        assert any(f.name == "__getitem__" and f.filename == __file__ for f in frames)
    else:  # the worker's traceback travels as the cause
        remote = str(exc.__cause__)
        assert "Failing" in remote or "__getitem__" in remote
        assert "cannot load samples" in remote
    assert any("pool has been shut down" in note for note in getattr(exc, "__notes__", []))
    assert pool.closed
    # Another stream on the same pool must not look like it simply ended.
    with pytest.raises(RuntimeError, match="stopped before it finished"):
        for _ in other:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        pool.parallel_data_source(data_source.ArrayDataSource([Identity(10)])).batch_iterator(5)
    leaks.assert_clean()


def test_dead_worker_process_raises_instead_of_hanging():
    leaks = LeakCheck()
    pool = work_pool.WorkerProcessPool(2)
    it = pool.parallel_data_source(data_source.ArrayDataSource([ExitsProcess(20)])).batch_iterator(5)
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        next(it)
    assert pool.closed
    leaks.assert_clean()


@pytest.mark.parametrize("kind", POOLS)
def test_no_threads_or_processes_left_after_close(kind):
    leaks = LeakCheck()
    pool = make_pool(kind, processes=3)
    stream = pool.work_stream((task, (i,)) for i in range(30))
    pids = {stream.retrieve()[1] for _ in range(10)}  # stop half-way through
    pool.close()
    leaks.assert_clean()
    if kind == "process":
        assert all(not psutil.pid_exists(pid) for pid in pids)
    assert pool.closed
    pool.close()  # idempotent


def test_dropped_thread_pool_stops_its_threads():
    leaks = LeakCheck()
    pool = work_pool.WorkerThreadPool(3)
    assert [b[0].tolist() for b in pool.parallel_data_source(data_source.ArrayDataSource([Identity(6)])).batch_iterator(3)] \
        == [[0, 1, 2], [3, 4, 5]]
    del pool
    leaks.assert_clean()


@pytest.mark.parametrize("kind", POOLS)
def test_work_stream(kind):
    with make_pool(kind, processes=2) as pool:
        tasks = [(task, (1,)), (task, (1, 2)), (task, (1,), {"c": 5}), (os.getpid,)]
        stream = pool.work_stream(iter(tasks), task_buffer_size=2)
        assert stream.retrieve()[0] == 1
        assert stream.retrieve()[0] == 3
        assert stream.retrieve()[0] == 6
        assert isinstance(stream.retrieve(), int)
        assert stream.retrieve() is None
        stream = pool.work_stream(((task, (i, i, ), {"c": i}) for i in range(40)))
        results = list(stream.retrieve_iter())
        assert [r[0] for r in results] == [3 * i for i in range(40)]
        if kind == "process":
            assert len({r[1] for r in results}) == 2 and os.getpid() not in {r[1] for r in results}
        with pytest.raises(TypeError, match="task should be"):
            pool.work_stream(iter([("not callable",)]))


@pytest.mark.parametrize("kind", POOLS)
def test_parallel_data_source_rejects_non_random_access(kind):
    with make_pool(kind, processes=1) as pool:
        with pytest.raises(TypeError):
            pool.parallel_data_source(Identity(100))
        with pytest.raises(TypeError):
            pool.parallel_data_source(data_source.CallableDataSource(lambda batch_size: iter([])))
    with pytest.raises(ValueError):
        work_pool.WorkerThreadPool(0)


def test_process_pool_shares_the_source_once_and_removes_it_on_close():
    pool = work_pool.WorkerProcessPool(1)
    tmpdir = pool._tmpdir
    ds = data_source.ArrayDataSource([np.arange(1000)])
    pds = pool.parallel_data_source(ds)
    assert len(os.listdir(tmpdir)) == 1
    assert sum(len(b[0]) for b in pds.batch_iterator(100)) == 1000
    pool.close()
    assert not os.path.exists(tmpdir)


def test_process_workers_do_not_repeat_random_numbers():
    with work_pool.WorkerProcessPool(2) as pool:
        pds = pool.parallel_data_source(data_source.ArrayDataSource([np.arange(40)]).map(random_and_pid), 8)
        by_pid = {}
        for _, r, pid in pds.batch_iterator(4):
            by_pid.setdefault(int(pid[0]), []).append(int(r[0]))
    assert len(by_pid) == 2
    first = [vals[0] for vals in by_pid.values()]
    assert first[0] != first[1]


def test_spawn_start_method():
    leaks = LeakCheck(ignore_children=_resource_tracker_pids())
    with work_pool.WorkerProcessPool(1, start_method="spawn") as pool:
        assert pool.start_method == "spawn"
        ds = data_source.ArrayDataSource([Identity(30), Square(30)])
        got = list(pool.parallel_data_source(ds).batch_iterator(8, shuffle=np.random.RandomState(1)))
    expected = list(ds.batch_iterator(8, shuffle=np.random.RandomState(1)))
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g[1], e[1])
    leaks.ignore |= _resource_tracker_pids()  # spawn's semaphore tracker lives as long as this process
    leaks.assert_clean()
