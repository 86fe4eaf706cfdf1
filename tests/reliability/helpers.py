"""Shared pieces of the reliability suite: test data with checksums, datasets that report what they
read, stores over the fault-injecting server, and resource accounting for leak checks."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from concurrent_dataloader.datasets.image import ImageDataset
from concurrent_dataloader.storage.retry import RetryPolicy
from concurrent_dataloader.storage.s3 import S3Store
from concurrent_dataloader.storage.s3_http import LeanS3Store

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "AKIARELIABILITY0001",
         "aws_secret_access_key": "rel-secret-DO-NOT-LEAK-5e8d1b"}
SECRET = CREDS["aws_secret_access_key"]
STORES = ("s3", "s3lean")
IMPLS = ("threaded", "asyncio")
# Fast backoff so retries do not dominate test time; the bounds are still exercised.
FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.005, max_delay=0.05)


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Objects:
    """Test objects in a bucket, with the checksums computed when they were made."""

    bucket: str
    keys: list[str]
    labels: list[int]
    checksums: dict[str, str] = field(default_factory=dict)


def put_images(server: Any, bucket: str, n: int, classes: int = 4, seed: int = 0) -> Objects:
    server.create_bucket(bucket)
    objs = Objects(bucket, [], [])
    for i in range(n):
        key = f"train/n{i % classes:08d}/img_{i:05d}.jpg"
        data = jpeg(seed * 100_000 + i)
        server.put_object(bucket, key, data)
        objs.keys.append(key)
        objs.labels.append(i % classes)
        objs.checksums[key] = sha(data)
    return objs


def make_store(kind: str, endpoint: str, bucket: str, **options: Any):
    opts = dict(CREDS, endpoint_url=endpoint, max_pool_connections=64)
    opts.setdefault("retry", FAST_RETRY)
    opts.update(options)
    if kind == "s3":
        return S3Store(bucket, **opts)
    if kind == "s3lean":
        return LeanS3Store(bucket, **opts)
    raise ValueError(kind)


class ChecksumDataset(ImageDataset):
    """Decodes each image (so corrupt bytes fail as in real use) and returns
    ``(index, sha256 of the raw bytes, label)`` so a test can check every byte it was given."""

    def decode(self, index: int, raw: bytes) -> tuple[int, str, int]:
        _image, label = super().decode(index, raw)
        return index, sha(raw), label


def checksum_dataset(kind: str, endpoint: str, objs: Objects, **store_options: Any) -> ChecksumDataset:
    return ChecksumDataset(make_store(kind, endpoint, objs.bucket, **store_options), objs.keys, objs.labels)


def collect(loader: Any) -> tuple[list[int], list[str], list[int]]:
    indices: list[int] = []
    sums: list[str] = []
    labels: list[int] = []
    for idx, digests, lab in loader:
        indices += [int(i) for i in idx]
        sums += list(digests)
        labels += [int(v) for v in lab]
    return indices, sums, labels


# ----------------------------------------------------------------------------------- leak accounting
def _fd_kinds() -> tuple[int, list[int]]:
    """(non-socket fds, socket inodes) of this process."""
    other = 0
    sockets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.append(int(target[8:-1]))
        else:
            other += 1
    return other, sockets


def _fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sorted(t for t in out if not t.startswith("socket:["))


def _open_loops(exclude: tuple = ()) -> int:
    # type() rather than isinstance(): isinstance can run __class__ properties of odd objects.
    return sum(1 for o in gc.get_objects()
               if issubclass(type(o), asyncio.AbstractEventLoop) and not o.is_closed() and o not in exclude)


def warm_up_multiprocessing() -> None:
    """Create the per-process multiprocessing helpers that live until exit, so a baseline taken
    afterwards does not count them: the shared-memory heap arena (it keeps an fd open for reuse;
    the loader's telemetry block is allocated from it) and the ``pymp-*`` temp directory."""
    import multiprocessing
    from multiprocessing import util

    arr = multiprocessing.get_context("fork").Array("d", 8192, lock=False)
    del arr
    util.get_temp_dir()


class Resources:
    """What this process owns, for before/after comparisons.

    Sockets of the in-process fault server (its listener and the server side of each
    connection) are excluded: they belong to the test's server, not to the loader. Everything
    else counts: threads, child processes, other fds, client sockets, temp files in ``tmpdir``,
    event loops that were never closed.
    """

    def __init__(self, server: Any = None, tmpdir: str | None = None) -> None:
        self.server = server
        self.tmpdir = tmpdir

    def _server_socket_count(self) -> int:
        if self.server is None:
            return 0
        port = self.server.port
        n = 0
        for c in psutil.Process().net_connections("inet"):
            if c.laddr and c.laddr.port == port:
                n += 1
        return n

    def snapshot(self) -> dict[str, int]:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()  # a per-interpreter helper, started once: not a leak
        gc.collect()
        other_fds, sockets = _fd_kinds()
        server_loop = getattr(self.server, "_loop", None)
        return {
            "threads": threading.active_count(),
            "children": len(psutil.Process().children(recursive=True)),
            "fds": other_fds,
            "sockets": len(sockets) - self._server_socket_count(),
            "temp_files": len(os.listdir(self.tmpdir)) if self.tmpdir else 0,
            "event_loops": _open_loops((server_loop,) if server_loop is not None else ()),
        }

    def reap_torch_probe_files(self) -> int:
        """Close and delete what torch's open-files probe leaks when a worker dies; return how many.

        Known torch race (``_MultiProcessingDataLoaderIter._try_get_data``): after a failed queue
        read it opens ten ``NamedTemporaryFile`` to test the fd limit; if the SIGCHLD handler
        raises "worker killed" while one is being opened, that file's fd and name are lost. Only
        empty ``tmp*`` files in this test's private ``TMPDIR`` that this process holds open qualify.
        """
        if not self.tmpdir:
            return 0
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if os.path.dirname(target) == self.tmpdir and os.path.basename(target).startswith("tmp") \
                    and os.path.getsize(target) == 0:
                os.close(int(fd))
                os.unlink(target)
                n += 1
        FIGURES["torch_probe_files"] += n
        return n

    def wait_back(self, before: dict[str, int], timeout: float = 20.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            now = self.snapshot()
            if all(now[k] <= before[k] for k in before) or time.monotonic() > deadline:
                return {k: now[k] for k in before}
            time.sleep(0.1)

    def assert_back(self, before: dict[str, int], timeout: float = 20.0, ignore: tuple = ()) -> dict[str, int]:
        before = {k: v for k, v in before.items() if k not in ignore}
        after = self.wait_back(before, timeout)
        leaked = {k: (before[k], after[k]) for k in before if after[k] > before[k]}
        assert not leaked, (f"leaked (before, after): {leaked}; threads: {[t.name for t in threading.enumerate()]}; "
                            f"children: {[p.cmdline()[:3] for p in psutil.Process().children(recursive=True)]}; "
                            f"fds: {_fd_targets()}; temp files: {os.listdir(self.tmpdir) if self.tmpdir else []}")
        LEAK_LOG.append(after)
        return after


LEAK_LOG: list[dict[str, int]] = []  # every clean check, for the summary figures

# Totals over the session, printed at the end of the run (the report's figures).
FIGURES: dict[str, float] = {"faults_injected": 0, "retries": 0, "samples_checked": 0, "epochs": 0,
                             "torch_probe_files": 0, "fuzz_inputs": 0, "fuzz_parsed": 0, "fuzz_rejected": 0}


def record(faults: int = 0, retries: int = 0, samples: int = 0, epochs: int = 0) -> None:
    FIGURES["faults_injected"] += faults
    FIGURES["retries"] += retries
    FIGURES["samples_checked"] += samples
    FIGURES["epochs"] += epochs
