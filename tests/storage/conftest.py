"""Fixtures for the deployment tests of the S3 stores: a real local S3 server that records what it
was sent (host, path, the signing key id and region of each request) and can answer with scripted
errors, an isolated AWS configuration (environment and config files in a temporary home), and a
certificate authority for TLS made in the test (trustme)."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import uuid
from pathlib import Path

import pytest

from benchmarking.s3_server import RequestHook, S3Server, s3_error

_CRED = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/")


class Recorder(RequestHook):
    """Records every request; ``fail(predicate, status, code)`` answers matching requests with an
    S3 error (``times`` of them); virtual-hosted requests (``Host: bucket.localhost``) are served
    as path-style ones, so the server speaks both addressing styles."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.seen: list[dict] = []
        self.faults: list[list] = []

    def fail(self, predicate, status: int, code: str, times: int = 1_000_000) -> None:
        self.faults.append([predicate, status, code, times])

    def before(self, request):
        auth = request.headers.get("authorization", "")
        m = _CRED.search(auth)
        host = request.headers.get("host", "")
        entry = {"method": request.method, "path": request.path, "host": host,
                 "key_id": m.group(1) if m else None, "region": m.group(2) if m else None}
        with self.lock:
            self.seen.append(entry)
            for fault in self.faults:
                if fault[3] > 0 and fault[0](entry):
                    fault[3] -= 1
                    return s3_error(fault[1], fault[2], "scripted by the test", request.path,
                                    request.method == "HEAD")
        name = host.split(":", 1)[0]
        if name.endswith(".localhost"):  # virtual-hosted style: the bucket is in the host name
            bucket = name[: -len(".localhost")]
            key = request.path.lstrip("/") or None
            return self.server.handle(dataclasses.replace(request, path=f"/{bucket}{request.path}".rstrip("/"),
                                                          bucket=bucket, key=key))
        return None


@pytest.fixture
def recording_server():
    """``(server, recorder)``: our S3 server on 127.0.0.1 with a :class:`Recorder` hook."""
    server = S3Server()
    recorder = Recorder(server)
    server.hooks.append(recorder)
    with server:
        yield server, recorder


@pytest.fixture
def bucket(recording_server):
    server, _ = recording_server
    name = f"b-{uuid.uuid4().hex[:10]}"
    server.create_bucket(name)
    server.put_object(name, "k", b"payload")
    return name


class AwsHome:
    """An empty AWS configuration: no AWS_* variables, config and credentials files in ``root``."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.config_file = root / "config"
        self.credentials_file = root / "credentials"
        monkeypatch.setenv("AWS_CONFIG_FILE", str(self.config_file))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(self.credentials_file))

    def config(self, text: str) -> None:
        self.config_file.write_text(text)

    def credentials(self, text: str) -> None:
        self.credentials_file.write_text(text)


@pytest.fixture
def aws_home(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probing in tests
    return AwsHome(home, monkeypatch)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory):
    """A CA and a server certificate for 127.0.0.1/localhost, made here; files on disk."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    ca_path, cert_path, key_path = d / "ca.pem", d / "server.pem", d / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return {"ca": str(ca_path), "cert": str(cert_path), "key": str(key_path)}
