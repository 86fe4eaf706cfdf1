"""Helpers for the batchup-compatible API tests: a latency-injecting S3 proxy, a test-local S3
dataset and a thread/child-process leak check.

The proxy sits between a real botocore client and the moto S3 server (both on 127.0.0.1),
sleeps a fixed time per request and records how many requests were in flight at once, so a
test can show on the server side that the fetches of one batch overlap.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import psutil

from concurrent_dataloader import ConcurrentDataset

# Long enough that a busy 2-core machine can sign and send a whole batch of requests before
# the first answer comes back (the overlap tests count requests in flight at the server).
PROXY_LATENCY_S = 0.1

class RequestStats:
    """In-flight request counter shared by the proxy's handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.total = 0

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.total += 1
            self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def reset(self) -> None:
        with self._lock:
            self.peak = self.in_flight
            self.total = 0


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many simultaneous connects must not wait in the SYN backlog


def make_proxy_handler(upstream: str, latency: float, stats: RequestStats):
    up = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint

        def log_message(self, *args):  # keep test output clean
            pass

        def _forward(self) -> None:
            stats.enter()
            try:
                time.sleep(latency)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                stats.leave()

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

    return Handler


class S3BytesDataset(ConcurrentDataset):
    """Test-local S3 dataset: one object per sample, decoded as a uint8 array.

    NOTE: the botocore client is created lazily per process (keyed on the pid) and never pickled.
    """

    def __init__(self, bucket: str, keys: list[str], endpoint_url: str, options: dict) -> None:
        self.bucket = bucket
        self.keys = list(keys)
        self.endpoint_url = endpoint_url
        self.options = {k: v for k, v in options.items() if k != "endpoint_url"}
        self._client_state = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def _client(self):
        state = self._client_state
        if state is not None and state[0] == os.getpid():
            return state[1]
        with self._lock:
            if self._client_state is None or self._client_state[0] != os.getpid():
                import botocore.session
                from botocore.config import Config

                client = botocore.session.get_session().create_client(
                    "s3", endpoint_url=self.endpoint_url,
                    config=Config(max_pool_connections=64, s3={"addressing_style": "path"},
                                  retries={"max_attempts": 1}),
                    **self.options)
                self._client_state = (os.getpid(), client)
            return self._client_state[1]

    def fetch_raw(self, index: int) -> bytes:
        return self._client().get_object(Bucket=self.bucket, Key=self.keys[index])["Body"].read()

    def decode(self, index: int, raw: bytes) -> np.ndarray:
        return np.frombuffer(raw, dtype=np.uint8).copy()

    def describe(self, index: int) -> str:
        return f"s3://{self.bucket}/{self.keys[index]}"

    def close_fetch_resources(self) -> None:
        state, self._client_state = self._client_state, None
        if state is not None and state[0] == os.getpid():
            state[1].close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client_state"] = None
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _python_threads() -> set[int]:
    return {t.ident for t in threading.enumerate()}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


class LeakCheck:
    """Threads and child processes before/after; ``assert_clean`` waits briefly for them to go."""

    def __init__(self, ignore_children: set[int] | None = None) -> None:
        self.threads = _python_threads()
        self.children = _children()
        self.ignore = set(ignore_children or ())

    def extra(self) -> tuple[list[str], set[int]]:
        threads = [t.name for t in threading.enumerate() if t.ident not in self.threads]
        return threads, _children() - self.children - self.ignore

    def assert_clean(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            threads, children = self.extra()
            if not threads and not children:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"leaked threads {threads} / child processes {sorted(children)}")
            time.sleep(0.05)


def write_images(folder, names_and_sizes, seed: int = 0) -> list[str]:
    """Write small deterministic RGB images; returns their paths in the order given.

    ``names_and_sizes``: (file name, (width, height)) pairs; the extension picks the format.
    """
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for k, (name, (w, h)) in enumerate(names_and_sizes):
        rng = np.random.default_rng(seed * 100003 + k)
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        path = os.path.join(folder, name)
        Image.fromarray(arr, "RGB").save(path, quality=90)
        paths.append(path)
    return paths


class FileImageDataset(ConcurrentDataset):
    """Test-local fetch/decode dataset over image files: bytes in fetch_raw, PIL decode in decode."""

    def __init__(self, paths, labels=None) -> None:
        self.paths = list(paths)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.paths)

    def fetch_raw(self, index: int) -> bytes:
        with open(self.paths[index], "rb") as f:
            return f.read()

    def decode(self, index: int, raw: bytes):
        import io

        from PIL import Image

        img = np.array(Image.open(io.BytesIO(raw)).convert("RGB"))
        return img if self.labels is None else (img, self.labels[index])

    def describe(self, index: int) -> str:
        return self.paths[index]
