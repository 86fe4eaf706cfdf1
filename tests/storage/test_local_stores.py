"""The stores for a few large local files (pread, mmap) and for in-memory objects."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import pickle

import pytest

from concurrent_dataloader.storage import MemoryStore, MmapStore, PreadStore, open_store

DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def root(tmp_path):
    (tmp_path / "a.bin").write_bytes(DATA)
    return tmp_path


def _loader(key: str) -> bytes:
    return DATA if key == "a.bin" else b""


def _stores(root):
    return [PreadStore(root), MmapStore(root), MemoryStore({"a.bin": DATA}), MemoryStore(loader=_loader)]


@pytest.mark.parametrize("kind", range(4))
def test_ranged_reads_short_reads_pickle_and_close(root, kind):
    store = _stores(root)[kind]
    assert store.get("a.bin") == DATA and store.size("a.bin") == len(DATA)
    assert store.get("a.bin", (1000, 300)) == DATA[1000:1300]
    assert asyncio.run(store.aget("a.bin", (5, 7))) == DATA[5:12]
    with pytest.raises(EOFError, match="wanted 100 bytes at offset 16340"):
        store.get("a.bin", (len(DATA) - 44, 100))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get("a.bin", (0, 10)) == DATA[:10]
    store.close()
    assert store.get("a.bin", (10, 10)) == DATA[10:20]  # reopens after close
    store.close()


def test_handles_are_not_pickled(root):
    pread, mapped = PreadStore(root), MmapStore(root)
    pread.warm("a.bin")
    mapped.warm("a.bin")
    fd = pread.fd("a.bin")
    assert pickle.loads(pickle.dumps(pread)).fd("a.bin") != fd  # the copy opened its own
    assert pickle.loads(pickle.dumps(mapped))._maps == {}
    loaded = MemoryStore(loader=_loader)
    loaded.get("a.bin")
    assert pickle.loads(pickle.dumps(loaded))._objects == {}  # reloads rather than pickling the bytes
    given = MemoryStore({"x": b"kept"})
    assert pickle.loads(pickle.dumps(given)).get("x") == b"kept"
    pread.close()
    mapped.close()


def _child_reads(store: PreadStore, parent_fd: int, q) -> None:
    fd = store.fd("a.bin")
    q.put((fd != parent_fd, store.get("a.bin", (3, 4))))
    store.close()


def test_forked_child_opens_its_own_descriptor(root):
    store = PreadStore(root)
    parent_fd = store.fd("a.bin")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_reads, args=(store, parent_fd, q))
    p.start()
    ok, data = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0 and ok and data == DATA[3:7]
    # the child's close() did not close the parent's descriptor
    assert store.get("a.bin", (0, 4)) == DATA[:4] and os.fstat(parent_fd)
    store.close()


def test_schemes(root):
    assert isinstance(open_store(f"pread://{root}"), PreadStore)
    assert isinstance(open_store(f"mmap://{root}"), MmapStore)
    assert open_store(f"mmap://{root}").get("a.bin", (0, 2)) == DATA[:2]


def test_memory_store_missing_key():
    with pytest.raises(FileNotFoundError, match="nope"):
        MemoryStore().get("nope")
