"""Store URLs: the one parser for ``<scheme>://<bucket>/<key>`` URLs and local paths.

Every place that takes "a directory or a URL" goes through here, so the rules are the same
everywhere: a string with ``://`` names a store by its scheme (``s3``, ``s3lean``, any
registered one); ``file://...`` and anything without ``://`` are local paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["StoreURL", "parse_store_url", "is_remote_url", "local_path", "split_object_url"]

_FILE = "file://"


@dataclass(frozen=True)
class StoreURL:
    """A parsed store location.

    scheme
        ``"file"`` for local paths and ``file://`` URLs.
    bucket
        The first component after ``scheme://`` (an S3 bucket); ``""`` for local paths.
    key
        The rest, without the separating ``/`` (an object key or prefix, kept as written);
        for local paths, the path itself.
    """

    scheme: str
    bucket: str
    key: str

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def rest(self) -> str:
        """Everything after ``scheme://`` (the path itself for local paths)."""
        return self.key if self.is_local else f"{self.bucket}/{self.key}"

    def __str__(self) -> str:
        if self.is_local:
            return self.key
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"


def parse_store_url(url: str | os.PathLike) -> StoreURL:
    """``s3://bucket/some/prefix`` -> ``StoreURL("s3", "bucket", "some/prefix")``;
    ``/data/x`` or ``file:///data/x`` -> ``StoreURL("file", "", "/data/x")``."""
    s = os.fspath(url)
    if s.startswith(_FILE):
        return StoreURL("file", "", s[len(_FILE):])
    if "://" not in s:
        return StoreURL("file", "", s)
    scheme, rest = s.split("://", 1)
    bucket, _, key = rest.partition("/")
    return StoreURL(scheme, bucket, key)


def is_remote_url(location: Any) -> bool:
    """A string naming a store other than the local filesystem."""
    return isinstance(location, str) and not parse_store_url(location).is_local


def local_path(location: str | os.PathLike) -> Path:
    """A local path, ``file://`` URL, or the path in a local store's URL (``mmap:///data``), as a :class:`Path`."""
    return Path(parse_store_url(location).rest)


def split_object_url(location: str | os.PathLike, example: str = "path/to/object") -> tuple[str, str]:
    """The store base and key of one object: ``s3://b/dir/x.tar`` -> (``s3://b/dir``, ``x.tar``);
    a local path -> (its directory, its name). ``example`` completes the error message."""
    u = parse_store_url(location)
    if u.is_local:
        path = Path(u.key)
        return str(path.parent), path.name
    head, _, key = u.rest.rpartition("/")
    if not u.bucket or not key:
        raise ConfigError(f"{os.fspath(location)!r} names no object (expected {u.scheme}://bucket/{example})")
    return f"{u.scheme}://{head}", key
