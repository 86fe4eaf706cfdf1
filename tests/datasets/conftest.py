"""Fixtures for the S3/scratch dataset tests.

``s3_proxy``: a small HTTP reverse proxy in front of the moto server. It counts every request
that reaches S3 (so tests can prove the cache works) and can inject real faults on the wire
(503 SlowDown, 500, a reset connection, a body cut short), so retries are tested with the real
botocore/aiobotocore clients.

``auth_s3``: a second moto server, in a subprocess, with authentication switched on
(``INITIAL_NO_AUTH_ACTION_COUNT``), so wrong credentials are really rejected.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.datasets.helpers import free_port, make_jpeg

_ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message>'
              '<RequestId>proxy</RequestId></Error>')
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class S3Proxy:
    """Forwards to ``upstream``; records ``(method, path)`` of every request; injects faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[str, object]] = []  # (kind, predicate)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests.append((self.command, self.path))
                    fault = proxy._take_fault(self.command, self.path)
                if fault == "reset":
                    # SO_LINGER 0 makes close() send a TCP RST: a real "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in ("slowdown", "internal"):
                    code, status, msg = (("SlowDown", 503, "Please reduce your request rate.") if fault == "slowdown"
                                         else ("InternalError", 500, "We encountered an internal error."))
                    payload = _ERROR_XML.format(code=code, msg=msg).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS | {"expect"}}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_HEADERS | {"content-length"}:
                        self.send_header(k, v)
                if fault == "truncate" and self.command == "GET" and len(data) > 1:
                    # Promise the full body, send half, then drop the connection.
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take_fault(self, method: str, path: str) -> str | None:
        for i, (kind, pred) in enumerate(self.faults):
            if pred(method, path):
                del self.faults[i]
                return kind
        return None

    def inject(self, kind: str, times: int = 1, method: str = "GET", path_contains: str = "") -> None:
        """The next ``times`` matching requests get fault ``kind``: slowdown|internal|reset|truncate."""
        pred = lambda m, p: m == method and path_contains in p  # noqa: E731
        with self.lock:
            self.faults.extend([(kind, pred)] * times)

    def count(self, method: str = "GET", path_contains: str = "") -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and path_contains in p)

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_proxy(s3_server):
    proxy = S3Proxy(s3_server)
    yield proxy
    proxy.close()


@pytest.fixture
def proxy_options(s3_options, s3_proxy):
    """Like ``s3_options`` but through the counting/fault-injecting proxy."""
    return dict(s3_options, endpoint_url=s3_proxy.url)


@pytest.fixture(scope="session")
def auth_s3():
    """A moto server that checks credentials. Yields (endpoint, valid access key, valid secret, bucket)."""
    import boto3

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("auth moto server did not start")
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        base = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                    aws_secret_access_key="bootstrap")
        iam = boto3.client("iam", **base)
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        bucket = f"auth-{uuid.uuid4().hex[:8]}"
        s3 = boto3.client("s3", **dict(base, aws_access_key_id=key["AccessKeyId"],
                                       aws_secret_access_key=key["SecretAccessKey"]))
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="img/n00000000_0.JPEG", Body=make_jpeg(1))
        s3.close()
        iam.close()
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"], bucket
    finally:
        proc.terminate()
        proc.wait(10)
