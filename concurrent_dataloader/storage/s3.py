"""S3 (and any S3-compatible store: MinIO, Ceph, moto...): botocore for threads, aiobotocore for asyncio.

One GET per object and never a HEAD on the read path; a byte range becomes an HTTP ``Range``
header. Transient failures are retried by :class:`~.retry.RetryPolicy` (botocore's own
retries are switched off so the counts are real).

See NOTE [ Fork safety ] (``concurrent_dataloader/__init__.py``): clients, counters and the lock
guarding their creation are per-process state (NOTE [ Per-process state ] in
``_process_local.py``), so a forked worker never touches its parent's sockets, and a spawned
worker builds its own clients on first use. Async clients are also keyed on the running event
loop, because an aiohttp session is bound to the loop it was created on; :meth:`S3Store.aclose`
closes the one of the running loop. Error answers become the exceptions of :mod:`.s3_errors`
(one translator for both S3 clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import warnings
from typing import Any, Iterator, NoReturn

from .._process_local import ProcessLocal, drop_process_local
from .aws_config import CredentialSource
from .base import ByteRange, ByteStore, register_store
from .retry import RetryCounters, RetryPolicy
from .s3_errors import (BucketNotFoundError, ChecksumMismatchError, ObjectNotFoundError, S3AccessDeniedError,
                        S3Error, S3HTTPError, botocore_error_fields, check_etag, mask_access_key, translate_s3_error)
from .url import parse_store_url

__all__ = [
    "S3Store",
    "S3Error",
    "S3HTTPError",
    "ObjectNotFoundError",
    "BucketNotFoundError",
    "S3AccessDeniedError",
    "ChecksumMismatchError",
    "check_etag",
    "check_max_object_bytes",
    "parse_s3_url",
    "mask_access_key",
    "DEFAULT_MAX_POOL_CONNECTIONS",
]

DEFAULT_MAX_POOL_CONNECTIONS = 64


def check_max_object_bytes(value: int | None) -> int | None:
    from ..errors import ConfigError

    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"max_object_bytes must be None or an int >= 0, got {value!r}")
    return value


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    u = parse_store_url(url)
    if u.scheme != "s3":
        raise ValueError(f"not an s3:// URL: {url!r}")
    if not u.bucket:
        raise ValueError(f"s3 URL has no bucket: {url!r}")
    return u.bucket, u.key


class _S3ProcessState:
    """This process's clients and counters for one store (never pickled, never inherited)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards lazy client creation (botocore sessions are not thread-safe)
        self.sync_client: Any = None
        self.aio_session: Any = None
        # id(loop) -> (loop, task creating the client); a task so concurrent first calls share one client.
        self.aio_clients: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Task]] = {}
        self.retired_aio: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []  # replaced after ExpiredToken
        self.retry_counters = RetryCounters()
        self.stats_lock = threading.Lock()
        self.stats = {"requests": 0, "bytes": 0}
        self.in_flight = 0
        self.pool_warned = False


class S3Store(ByteStore):
    """Objects of ``bucket`` under ``prefix``; keys passed to :meth:`get` are relative to the prefix.

    max_pool_connections
        HTTP connections per client. Must be at least the number of concurrent fetches
        (``num_fetch_workers``): botocore's default of 10 silently caps throughput. A one-time
        warning is emitted when more requests are in flight than connections.
    retry
        A :class:`RetryPolicy`; attempts and retries are counted in :attr:`retry_counters`.
    endpoint_url, region_name, addressing_style, verify
        botocore's own settings and defaults: ``endpoint_url`` else ``AWS_ENDPOINT_URL_S3``,
        ``AWS_ENDPOINT_URL`` or the profile's; ``addressing_style`` ``"path"``, ``"virtual"``,
        ``"auto"`` or ``None`` (botocore's choice); ``verify`` ``None`` (``AWS_CA_BUNDLE`` or the
        profile's ``ca_bundle``, else botocore's bundle), ``False``, or a CA-bundle path.
    aws_access_key_id, aws_secret_access_key, aws_session_token, credential_file, profile_name
        Keys given in code (they travel in the pickle sent to worker processes), or where each
        process finds them: the seed's JSON ``credential_file``, else botocore's chain for
        ``profile_name`` (environment, shared files, ``credential_process``, SSO, roles), which
        refreshes expiring keys itself. Only the file path or profile name is pickled.
    max_object_bytes
        Refuse (:class:`~concurrent_dataloader.errors.ObjectTooLargeError`, naming the key) any GET
        whose body would be larger, before reading it. ``None``: no cap.
    verify_etag
        Check each whole-object body against its MD5 ETag; a mismatch is retried like a broken
        connection (:class:`ChecksumMismatchError`). Off by default: it costs an MD5 per GET, and
        SSE-KMS/SSE-C objects have ETags that are not MD5s.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region_name: str | None = None, addressing_style: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, credential_file: str | os.PathLike | None = None,
                 profile_name: str | None = None,
                 max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
                 retry: RetryPolicy | None = None, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 verify: bool | str | None = None, list_page_size: int = 1000,
                 max_object_bytes: int | None = None, verify_etag: bool = False) -> None:
        from ..errors import ConfigError

        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        if addressing_style not in (None, "auto", "path", "virtual"):
            raise ConfigError(f"addressing_style must be 'path', 'virtual', 'auto' or None, got {addressing_style!r}")
        if isinstance(max_pool_connections, bool) or not isinstance(max_pool_connections, int) \
                or max_pool_connections < 1:
            raise ConfigError(f"max_pool_connections must be an int >= 1, got {max_pool_connections!r}")
        self.bucket = bucket
        self.prefix = prefix.lstrip("/")
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.addressing_style = addressing_style
        self.max_pool_connections = max_pool_connections
        self.retry = retry if retry is not None else RetryPolicy()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.verify = verify
        self.list_page_size = list_page_size
        self.max_object_bytes = check_max_object_bytes(max_object_bytes)
        self.verify_etag = bool(verify_etag)
        # NOTE: where the keys come from; repr/describe never show a key (see aws_config.py).
        self.credentials = CredentialSource(aws_access_key_id=aws_access_key_id,
                                            aws_secret_access_key=aws_secret_access_key,
                                            aws_session_token=aws_session_token, credential_file=credential_file,
                                            profile_name=profile_name)
        self.profile_name = profile_name

    # ------------------------------------------------------------------ process-local state
    # Clients, counters and the creation lock (NOTE [ Per-process state ] in _process_local.py).
    _proc = ProcessLocal(lambda self: _S3ProcessState())

    @property
    def retry_counters(self) -> RetryCounters:
        return self._proc.retry_counters

    def __getstate__(self) -> dict[str, Any]:
        # NOTE: the CredentialSource pickles only where keys come from, except keys given in code.
        return drop_process_local(self.__dict__)

    # ------------------------------------------------------------------ clients
    def _config_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_pool_connections": self.max_pool_connections,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            # Our RetryPolicy does the retrying, so every attempt is counted exactly once.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
        }
        if self.addressing_style:
            kwargs["s3"] = {"addressing_style": self.addressing_style}
        return kwargs

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self.credentials.botocore_kwargs()  # resolved in this process
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.region_name:
            kwargs["region_name"] = self.region_name
        if self.verify is not None:
            kwargs["verify"] = self.verify
        return kwargs

    @property
    def client(self) -> Any:
        """This process's botocore client (thread-safe; shared by all fetch threads)."""
        st = self._proc
        client = st.sync_client
        if client is None:
            with st.lock:
                if st.sync_client is None:
                    import botocore.session
                    from botocore.config import Config

                    session = botocore.session.Session(profile=self.profile_name)
                    st.sync_client = session.create_client("s3", config=Config(**self._config_kwargs()),
                                                           **self._client_kwargs())
                client = st.sync_client
        return client

    async def _new_aio_client(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        st = self._proc
        if st.aio_session is None:
            st.aio_session = get_session()
            if self.profile_name:
                st.aio_session.set_config_variable("profile", self.profile_name)
        ctx = st.aio_session.create_client("s3", config=AioConfig(**self._config_kwargs()), **self._client_kwargs())
        return await ctx.__aenter__()

    async def aclient(self) -> Any:
        """The aiobotocore client for this process and the running event loop."""
        clients = self._proc.aio_clients
        loop = asyncio.get_running_loop()
        entry = clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            # NOTE: all coroutines on this loop run on one thread, so check-then-set is atomic here.
            entry = (loop, loop.create_task(self._new_aio_client()))
            clients[id(loop)] = entry
        try:
            return await asyncio.shield(entry[1])
        except Exception:
            if clients.get(id(loop)) is entry:
                del clients[id(loop)]
            raise

    def _refresh_sync(self) -> bool:
        """After ``ExpiredToken``: the next attempt uses a new client, which resolves the keys
        again (credential file, profile, chain). ``False`` for keys given in code: nothing to renew."""
        if self.credentials.kind == "explicit":
            return False
        st = self._proc
        with st.lock:
            # NOTE: not closed: other fetch threads may still be using it; it goes with its last user.
            st.sync_client = None
        return True

    def _refresh_async(self) -> bool:
        """:meth:`_refresh_sync` for the running loop's aiobotocore client; the old one is closed
        by :meth:`aclose` (coroutines on this loop may still be using it)."""
        if self.credentials.kind == "explicit":
            return False
        st = self._proc
        loop = asyncio.get_running_loop()
        entry = st.aio_clients.pop(id(loop), None)
        if entry is not None and entry[0] is loop:
            st.retired_aio.append(entry)
        st.aio_session = None  # a session caches the keys it resolved: the next client gets a new one
        return True

    # ------------------------------------------------------------------ helpers
    def full_key(self, key: str) -> str:
        if not self.prefix:
            return key
        return self.prefix + key if self.prefix.endswith("/") else f"{self.prefix}/{key}"

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def _range_kwargs(self, byte_range: ByteRange | None) -> dict[str, str]:
        if byte_range is None:
            return {}
        offset, length = byte_range
        if offset < 0 or length < 0:
            raise ValueError(f"invalid byte range offset={offset}, length={length}")
        return {"Range": f"bytes={offset}-{offset + length - 1}"}

    def _check_length(self, key: str, data: bytes, byte_range: ByteRange | None) -> bytes:
        if byte_range is not None and len(data) != byte_range[1]:
            raise EOFError(f"{self.describe(key)}: wanted {byte_range[1]} bytes at offset {byte_range[0]}, "
                           f"got {len(data)} (object too short)")
        return data

    def _check_size(self, key: str, response: dict[str, Any]) -> None:
        cap = self.max_object_bytes
        size = response.get("ContentLength")
        if cap is not None and isinstance(size, int) and size > cap:
            from ..errors import ObjectTooLargeError

            where = self.describe(key)
            raise ObjectTooLargeError(f"{where}: object of {size} bytes is larger than max_object_bytes={cap}; "
                                      "refusing to read it", key=where)

    def _check_etag(self, key: str, data: bytes, response: dict[str, Any], byte_range: ByteRange | None) -> None:
        if self.verify_etag and byte_range is None:
            check_etag(data, response.get("ETag"), self.describe(key))

    def _translate(self, exc: Exception, key: str | None, byte_range: ByteRange | None = None,
                   method: str = "GET") -> Exception:
        """A botocore ClientError as our error naming s3://bucket/key (:func:`.s3_errors.translate_s3_error`),
        keeping its notes; any other exception unchanged."""
        fields = botocore_error_fields(exc)
        if fields is None:
            return exc
        status, code, message = fields
        translated = translate_s3_error(
            status, code, message, bucket=self.bucket, key=self.full_key(key) if key is not None else None,
            endpoint_url=self.endpoint_url, where=None if key is not None else f"s3://{self.bucket}/{self.prefix}",
            access_key=self.credentials.access_key_id(), credential_source=self.credentials.describe(),
            byte_range=byte_range, method=method)
        for note in getattr(exc, "__notes__", ()):  # e.g. the retry policy's "gave up after ..."
            translated.add_note(note)
        return translated

    def _reraise(self, exc: Exception, key: str | None, byte_range: ByteRange | None = None,
                 method: str = "GET") -> NoReturn:
        """Raise :meth:`_translate`'s error (from ``exc``), or ``exc`` itself when it is not an S3 answer."""
        translated = self._translate(exc, key, byte_range, method)
        if translated is exc:
            raise exc
        raise translated from exc

    def _begin(self) -> None:
        st = self._proc
        with st.stats_lock:
            st.in_flight += 1
            over = st.in_flight > self.max_pool_connections and not st.pool_warned
            if over:
                st.pool_warned = True
        if over:
            warnings.warn(f"more concurrent S3 requests than max_pool_connections={self.max_pool_connections} "
                          f"for {self!r}; requests queue for a connection. Raise max_pool_connections to at "
                          "least num_fetch_workers.", RuntimeWarning, stacklevel=6)  # the caller of get()/aget()

    @contextlib.contextmanager
    def _counted_get(self, key: str, byte_range: ByteRange | None) -> Iterator[list[bytes]]:
        """Counts one GET in flight (sync or async) and translates its error; the body goes into the list."""
        self._begin()
        got: list[bytes] = []
        try:
            yield got
        except Exception as exc:
            self._reraise(exc, key, byte_range)
        finally:
            self._end(len(got[0]) if got else None)

    def _end(self, nbytes: int | None) -> None:
        st = self._proc
        with st.stats_lock:
            st.in_flight -= 1
            if nbytes is not None:
                st.stats["requests"] += 1
                st.stats["bytes"] += nbytes

    def stats(self) -> dict[str, int]:
        """This process's successful GETs and bytes, plus retry counters."""
        st = self._proc
        with st.stats_lock:
            out = dict(st.stats)
        out.update(st.retry_counters.snapshot())
        return out

    # ------------------------------------------------------------------ ByteStore
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is not None and byte_range[1] == 0:
            return b""
        kwargs = dict(Bucket=self.bucket, Key=self.full_key(key), **self._range_kwargs(byte_range))
        _ = self.client  # NOTE: made before the retry clock starts (max_elapsed bounds requests, not set-up)

        def once() -> bytes:
            response = self.client.get_object(**kwargs)  # NOTE: self.client: a refresh replaces it
            body = response["Body"]
            try:
                self._check_size(key, response)
                data = body.read()
            finally:
                body.close()
            self._check_etag(key, data, response, byte_range)
            return data

        with self._counted_get(key, byte_range) as got:
            got.append(self.retry.call(once, self.retry_counters, refresh=self._refresh_sync))
        return self._check_length(key, got[0], byte_range)

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is not None and byte_range[1] == 0:
            return b""
        kwargs = dict(Bucket=self.bucket, Key=self.full_key(key), **self._range_kwargs(byte_range))
        _ = await self.aclient()  # made before the retry clock starts, as in get()

        async def once() -> bytes:
            response = await (await self.aclient()).get_object(**kwargs)  # a refresh replaces the client
            async with response["Body"] as stream:
                self._check_size(key, response)
                data = await stream.read()
            self._check_etag(key, data, response, byte_range)
            return data

        with self._counted_get(key, byte_range) as got:
            got.append(await self.retry.acall(once, self.retry_counters, refresh=self._refresh_async))
        return self._check_length(key, got[0], byte_range)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (relative to the store's prefix), sorted; ListObjectsV2 with pagination."""
        _ = self.client  # made before the retry clock starts, as in get()
        root = self.full_key("") if self.prefix else ""
        full = root + prefix
        keys: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": self.list_page_size}
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self.retry.call(lambda: self.client.list_objects_v2(**kwargs), self.retry_counters,
                                       refresh=self._refresh_sync)
            except Exception as exc:
                self._reraise(exc, None)
            keys.extend(obj["Key"][len(root):] for obj in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                break
        return iter(sorted(keys))

    def put(self, key: str, data: bytes) -> None:
        _ = self.client  # made before the retry clock starts, as in get()
        try:
            self.retry.call(lambda: self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data),
                            self.retry_counters, refresh=self._refresh_sync)
        except Exception as exc:
            self._reraise(exc, key, method="PUT")  # a 404 on PUT can only be the bucket

    def size(self, key: str) -> int:
        _ = self.client  # made before the retry clock starts, as in get()
        try:
            head = self.retry.call(lambda: self.client.head_object(Bucket=self.bucket, Key=self.full_key(key)),
                                   self.retry_counters, refresh=self._refresh_sync)
        except Exception as exc:
            self._reraise(exc, key)
        return int(head["ContentLength"])

    def check(self) -> None:
        """Fail early: one HeadBucket to confirm the bucket exists and the credentials are accepted."""
        _ = self.client  # made before the retry clock starts, as in get()
        try:
            self.retry.call(lambda: self.client.head_bucket(Bucket=self.bucket), self.retry_counters,
                            refresh=self._refresh_sync)
        except Exception as exc:
            self._reraise(exc, None)

    def close(self) -> None:
        """Close this process's sync client. Async clients are closed by :meth:`aclose` on their loop."""
        st = S3Store._proc.peek(self)
        if st is None:  # nothing was opened in this process
            return
        client, st.sync_client = st.sync_client, None
        if client is not None:
            client.close()
        # Async clients whose loop is gone cannot be closed any more; forget them.
        for loop_id, (loop, _task) in list(st.aio_clients.items()):
            if loop.is_closed():
                del st.aio_clients[loop_id]

    async def aclose(self) -> None:
        """Close the async client bound to the running loop (call it on that loop before it stops)."""
        st = S3Store._proc.peek(self)
        if st is None:
            return
        loop = asyncio.get_running_loop()
        entries = [e for e in st.retired_aio if e[0] is loop]
        st.retired_aio = [e for e in st.retired_aio if e[0] is not loop and not e[0].is_closed()]
        entry = st.aio_clients.pop(id(loop), None)
        if entry is not None and entry[0] is loop:
            entries.append(entry)
        for _loop, task in entries:
            try:
                client = await task
            except Exception:
                continue
            await client.__aexit__(None, None, None)

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Store('s3://{self.bucket}/{self.prefix}'{endpoint})"


def _from_url(url: str, **options: Any) -> S3Store:
    bucket, prefix = parse_s3_url(url)
    return S3Store(bucket, prefix, **options)


register_store("s3", _from_url)
