"""Permanent failures (missing object, access denied, corrupt image, oversized object) end the epoch
at once with an error that names the key and the dataset index. Nothing is skipped."""

from __future__ import annotations

import time

import pytest

from concurrent_dataloader import DataLoader
from concurrent_dataloader.errors import ObjectTooLargeError, SampleLoadError
from concurrent_dataloader.storage.s3 import ObjectNotFoundError, S3AccessDeniedError
from tests.reliability.helpers import IMPLS, STORES, checksum_dataset, collect, put_images

BAD = 13


def _text(exc: BaseException) -> str:
    return str(exc) + "\n" + "\n".join(getattr(exc, "__notes__", []))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("fault,exc_type", [("missing", ObjectNotFoundError), ("access_denied", S3AccessDeniedError),
                                            ("corrupt_image", SampleLoadError)])
def test_permanent_failure_raises_naming_key_and_index(fault_srv, injector, store, fetch_impl, num_workers, fault,
                                                       exc_type):
    objs = put_images(fault_srv, "bkt", 24)
    key = objs.keys[BAD]
    if fault == "corrupt_image":
        fault_srv.put_object("bkt", key, b"\xff\xd8\xff\xe0 this is not a JPEG at all" * 10)
    else:
        injector.on_key(key, fault)
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs)
    delivered: list[int] = []
    start = time.monotonic()
    with pytest.raises(exc_type) as info, DataLoader(ds, batch_size=4, num_workers=num_workers,
                                                     fetch_impl=fetch_impl, num_fetch_workers=4) as loader:
        for idx, _sums, _labels in loader:
            delivered += [int(i) for i in idx]
    assert time.monotonic() - start < 60
    text = _text(info.value)
    assert f"s3://bkt/{key}" in text
    assert f"dataset index {BAD}" in text or f"index {BAD})" in text
    # Nothing was skipped: the batches before the bad one arrived whole, in order; then it stopped.
    assert delivered == list(range(len(delivered))) and BAD not in delivered
    if fault != "corrupt_image":
        # permanent: one attempt, no retries
        assert injector.counts()["by_key"] == {key: 1}
        assert "gave up" not in text
    if fault == "access_denied":
        assert "****" in text and "AKIARELIABILITY0001" not in text


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("store", STORES)
def test_oversized_object_is_refused_naming_key(fault_srv, injector, store, fetch_impl):
    objs = put_images(fault_srv, "bkt", 8)
    big_key = objs.keys[5]
    fault_srv.put_object("bkt", big_key, b"\0" * 300_000)
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs, max_object_bytes=100_000)
    with pytest.raises(ObjectTooLargeError) as info, DataLoader(ds, batch_size=2, num_workers=0,
                                                                fetch_impl=fetch_impl) as loader:
        collect(loader)
    text = _text(info.value)
    assert f"s3://bkt/{big_key}" in text and "300000 bytes" in text and "max_object_bytes=100000" in text
    assert "dataset index 5" in text
    assert injector.counts()["requests_by_key"][big_key] == 1  # refused at once, not retried


def test_oversized_local_file_is_refused(tmp_path):
    from concurrent_dataloader.storage.local import LocalStore

    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    (tmp_path / "ok.bin").write_bytes(b"x" * 10)
    store = LocalStore(tmp_path, max_object_bytes=1000)
    assert store.get("ok.bin") == b"x" * 10
    assert store.get("big.bin", (0, 100)) == b"x" * 100  # a range is bounded by its length
    with pytest.raises(ObjectTooLargeError, match=r"big\.bin: file of 5000 bytes is larger than max_object_bytes"):
        store.get("big.bin")
