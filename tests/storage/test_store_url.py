"""Store URLs (storage/url.py) and the scheme registry (storage/base.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from concurrent_dataloader.errors import ConfigError
from concurrent_dataloader.storage import STORE_REGISTRY, LocalStore, open_store, register_store
from concurrent_dataloader.storage.url import StoreURL, is_remote_url, local_path, parse_store_url, split_object_url


@pytest.mark.parametrize("url, expected", [
    ("s3://bucket/some/prefix", StoreURL("s3", "bucket", "some/prefix")),
    ("s3://bucket", StoreURL("s3", "bucket", "")),
    ("s3://bucket/dir/", StoreURL("s3", "bucket", "dir/")),
    ("s3lean://b/k.tar", StoreURL("s3lean", "b", "k.tar")),
    ("/data/train", StoreURL("file", "", "/data/train")),
    ("relative/dir", StoreURL("file", "", "relative/dir")),
    ("file:///data/train", StoreURL("file", "", "/data/train")),
    (Path("/data/x.tar"), StoreURL("file", "", "/data/x.tar")),
])
def test_parse(url, expected):
    u = parse_store_url(url)
    assert u == expected
    assert u.is_local == (expected.scheme == "file")
    assert is_remote_url(str(url)) == (not u.is_local)


def test_str_round_trips():
    for url in ("s3://bucket/some/prefix", "s3://bucket", "/data/train"):
        assert str(parse_store_url(url)) == url
    assert local_path("file:///data/x") == Path("/data/x") == local_path("mmap:///data/x")
    assert local_path("pread://rel/dir") == Path("rel/dir")
    assert not is_remote_url(Path("/data/x"))  # only strings name stores


def test_split_object_url():
    assert split_object_url("s3://b/dir/train.tar") == ("s3://b/dir", "train.tar")
    assert split_object_url("s3://b/train.tar") == ("s3://b", "train.tar")
    assert split_object_url("/data/dir/train.tar") == ("/data/dir", "train.tar")
    assert split_object_url("file:///data/train.tar") == ("/data", "train.tar")
    for bad in ("s3://bucket", "s3://bucket/", "s3://b/dir/", "s3:///x.tar"):
        with pytest.raises(ConfigError, match="names no object.*s3://bucket/path/shard.tar"):
            split_object_url(bad, "path/shard.tar")


def test_open_store_by_scheme(tmp_path):
    (tmp_path / "k").write_bytes(b"v")
    for url in (str(tmp_path), f"file://{tmp_path}"):
        store = open_store(url)
        assert isinstance(store, LocalStore) and store.get("k") == b"v"
    with pytest.raises(ValueError, match="no store registered for 'nosuch'"):
        open_store("nosuch://b/k")


def test_register_store_refuses_a_scheme_twice():
    assert {"file", "s3", "s3lean"} <= set(STORE_REGISTRY)
    original = STORE_REGISTRY["s3"]
    with pytest.raises(ValueError, match="already registered for 's3'"):
        register_store("s3", lambda url, **kw: LocalStore("."))
    assert STORE_REGISTRY["s3"] is original

    def factory(url, **options):
        return LocalStore(parse_store_url(url).key, **options)

    register_store("cdltest", factory)
    try:
        assert isinstance(open_store("cdltest://x"), LocalStore)
        with pytest.raises(ValueError, match="already registered for 'cdltest'"):
            register_store("cdltest", factory)
    finally:
        del STORE_REGISTRY["cdltest"]
