"""No hang, no leak: every way an epoch can end early raises within a bounded time, and afterwards no
thread, child process, fd, client socket, event loop or temp file of the loader remains.

All scenarios read real S3 objects (both S3 clients) from the in-process fault-injecting server,
so open sockets are part of what is counted.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import time

import pytest
import torch.utils.data

from concurrent_dataloader import DataLoader
from tests.reliability.helpers import IMPLS, ChecksumDataset, Objects, Resources, make_store, put_images

N = 64


class KillWorkerDataset(ChecksumDataset):
    """SIGKILLs the worker process that decodes ``kill_at`` (never the main process)."""

    kill_at = 20

    def decode(self, index, raw):
        if index == self.kill_at and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().decode(index, raw)


class FailingTransform:
    """Raises on its third call in each process: a transform bug partway into the epoch."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        if self.calls == 3:
            raise ValueError("transform exploded")
        return image


def bad_collate(batch):
    if any(int(item[0]) >= 16 for item in batch):
        raise RuntimeError("collate exploded")
    return torch.utils.data.default_collate(batch)


def bad_worker_init(worker_id):
    raise RuntimeError(f"worker_init_fn exploded in worker {worker_id}")


def _dataset(cls, store, server, objs: Objects, **store_options):
    return cls(make_store(store, server.endpoint_url, objs.bucket, **store_options), objs.keys, objs.labels)


@pytest.fixture
def env(fault_srv, private_tmp):
    objs = put_images(fault_srv, "bkt", N)
    res = Resources(fault_srv, private_tmp)
    return fault_srv, objs, res


def _drain(loader):
    for _ in loader:
        pass


def _raises(exc_type, pattern, fn, *args, bound=60.0):
    """Run ``fn``; it must raise ``exc_type`` matching ``pattern`` within ``bound`` seconds. Returns
    the message (with notes) and drops the exception, as a training script that handles it would;
    keeping it would keep its frames, and so the iterator, alive."""
    start = time.monotonic()
    try:
        fn(*args)
    except exc_type as exc:
        text = str(exc) + "\n" + "\n".join(getattr(exc, "__notes__", []))
    else:
        raise AssertionError(f"{fn.__name__} did not raise {exc_type.__name__}")
    elapsed = time.monotonic() - start
    assert re.search(pattern, text), text
    assert elapsed < bound, f"raised only after {elapsed:.1f} s"
    return text


@pytest.mark.parametrize("store,fetch_impl", [("s3", "threaded"), ("s3lean", "asyncio"),
                                              pytest.param("s3", "asyncio", marks=pytest.mark.slow),
                                              pytest.param("s3lean", "threaded", marks=pytest.mark.slow)])
def test_worker_sigkill_mid_epoch(env, store, fetch_impl):
    server, objs, res = env
    before = res.snapshot()
    loader = DataLoader(_dataset(KillWorkerDataset, store, server, objs), batch_size=4, num_workers=2,
                        fetch_impl=fetch_impl, num_fetch_workers=4)
    _raises(RuntimeError, "killed by signal|exited unexpectedly", _drain, loader)
    del loader
    res.wait_back(before, timeout=5)
    res.reap_torch_probe_files()  # torch's own race on worker death, not ours (see tests/reliability/helpers.py)
    res.assert_back(before)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_collate_fn_exception(env, fetch_impl, num_workers):
    server, objs, res = env
    before = res.snapshot()
    loader = DataLoader(_dataset(ChecksumDataset, "s3lean", server, objs), batch_size=4, num_workers=num_workers,
                        fetch_impl=fetch_impl, num_fetch_workers=4, collate_fn=bad_collate)
    _raises(RuntimeError, "collate exploded", _drain, loader)
    del loader
    res.assert_back(before)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_transform_exception_names_index(env, fetch_impl, num_workers):
    server, objs, res = env
    before = res.snapshot()
    ds = _dataset(ChecksumDataset, "s3", server, objs)
    ds.set_transform(FailingTransform())
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, fetch_impl=fetch_impl, num_fetch_workers=1)
    text = _raises(ValueError, "transform exploded", _drain, loader)
    assert "dataset index" in text and "s3://bkt/train/" in text
    del loader, ds
    res.assert_back(before)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_close_releases_everything_while_the_error_is_kept(env, num_workers):
    """``with DataLoader(...)`` (or close()) stops workers, threads, sockets and event loops at once,
    even while the caller still holds the exception. (Its frames keep the last batch and the
    iterator's queue pipes: those fds go when the exception does.)"""
    server, objs, res = env
    before = res.snapshot()
    ds = _dataset(ChecksumDataset, "s3", server, objs)
    ds.set_transform(FailingTransform())
    with pytest.raises(ValueError, match="transform exploded") as kept:
        with DataLoader(ds, batch_size=4, num_workers=num_workers, fetch_impl="asyncio") as loader:
            _drain(loader)
    res.assert_back(before, ignore=("fds",))
    assert kept.value is not None
    del kept, loader, ds
    res.assert_back(before)


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_worker_init_fn_exception(env, fetch_impl):
    server, objs, res = env
    before = res.snapshot()
    loader = DataLoader(_dataset(ChecksumDataset, "s3lean", server, objs), batch_size=4, num_workers=2,
                        fetch_impl=fetch_impl, worker_init_fn=bad_worker_init)
    _raises(RuntimeError, "worker_init_fn exploded", _drain, loader)
    del loader
    res.assert_back(before)


@pytest.mark.parametrize("store,fetch_impl", [("s3lean", "asyncio"),
                                              pytest.param("s3", "threaded", marks=pytest.mark.slow),
                                              pytest.param("s3", "asyncio", marks=pytest.mark.slow),
                                              pytest.param("s3lean", "threaded", marks=pytest.mark.slow)])
def test_loader_timeout_on_stalled_server(env, injector, store, fetch_impl):
    """The server stalls mid-body for a minute; the client's read timeout is longer still, so only the
    DataLoader's ``timeout=`` can end the wait."""
    server, objs, res = env
    injector.stall_s = 60.0
    injector.on_key(objs.keys[9], "stall")
    before = res.snapshot()
    loader = DataLoader(_dataset(ChecksumDataset, store, server, objs, read_timeout=120), batch_size=4,
                        num_workers=2, fetch_impl=fetch_impl, num_fetch_workers=4, timeout=3)
    _raises(RuntimeError, "timed out after 3 seconds", _drain, loader, bound=40)
    del loader
    res.assert_back(before, timeout=30)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_keyboard_interrupt_in_main_loop(env, fetch_impl, num_workers):
    """A real SIGINT (Ctrl-C) to the training process between batches."""
    server, objs, res = env
    before = res.snapshot()
    loader = DataLoader(_dataset(ChecksumDataset, "s3", server, objs), batch_size=4, num_workers=num_workers,
                        fetch_impl=fetch_impl, num_fetch_workers=8, batch_pool=3, persistent_workers=num_workers > 0)


    def train():
        for i, _batch in enumerate(loader):
            if i == 2:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the signal interrupts this

    _raises(KeyboardInterrupt, "", train, bound=30)
    del loader
    gc.collect()
    res.assert_back(before)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_del_loader_mid_epoch_fork(env, fetch_impl, persistent):
    server, objs, res = env
    before = res.snapshot()
    loader = DataLoader(_dataset(ChecksumDataset, "s3lean", server, objs), batch_size=4, num_workers=2,
                        multiprocessing_context="fork", persistent_workers=persistent, fetch_impl=fetch_impl,
                        num_fetch_workers=8, batch_pool=3)
    it = iter(loader)
    next(it)
    next(it)
    del it, loader
    gc.collect()
    res.assert_back(before)


@pytest.mark.parametrize("fetch_impl", ["asyncio", pytest.param("threaded", marks=pytest.mark.slow)])
def test_del_loader_mid_epoch_spawn(env, fetch_impl):
    server, objs, res = env
    before = res.snapshot()
    loader = DataLoader(_dataset(ChecksumDataset, "s3" if fetch_impl == "asyncio" else "s3lean", server, objs),
                        batch_size=4, num_workers=2, multiprocessing_context="spawn", persistent_workers=True,
                        fetch_impl=fetch_impl, num_fetch_workers=8, batch_pool=3)
    it = iter(loader)
    next(it)
    next(it)
    del it, loader
    gc.collect()
    res.assert_back(before, timeout=30)


class KillOnceDataset(ChecksumDataset):
    """SIGKILLs the worker decoding index 20, once (a flag file remembers it across processes)."""

    flag = ""

    def decode(self, index, raw):
        if index == 20 and torch.utils.data.get_worker_info() is not None and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().decode(index, raw)


def test_persistent_workers_restart_after_a_worker_died(env, tmp_path):
    """The epoch after a worker death starts fresh workers instead of resuming dead ones (which
    would wait forever); with ``timeout=`` as a guard, a hang here fails instead of blocking."""
    server, objs, res = env
    before = res.snapshot()
    ds = _dataset(KillOnceDataset, "s3lean", server, objs)
    ds.flag = str(tmp_path / "killed")
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, fetch_impl="threaded",
                        num_fetch_workers=4, timeout=30)
    _raises(RuntimeError, "killed by signal|exited unexpectedly", _drain, loader)
    res.reap_torch_probe_files()  # torch's own race on worker death, not ours (see tests/reliability/helpers.py)
    indices = [int(i) for idx, _sums, _labels in loader for i in idx]
    assert indices == list(range(N))
    loader.close()
    del loader, ds
    res.assert_back(before)
