"""Fixtures for the benchmark tooling tests: our fast S3 server, in-process, with real clients."""

from __future__ import annotations

import uuid

import pytest

from benchmarking.s3_server import S3Server

from tests.bench.helpers import BENCH_CREDS


@pytest.fixture(scope="session")
def fast_server():
    """One zero-latency server for the session (tests that change settings use their own)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def fast_bucket(fast_server):
    name = f"b-{uuid.uuid4().hex[:12]}"
    fast_server.create_bucket(name)
    return name


@pytest.fixture
def fast_options(fast_server):
    return {"endpoint_url": fast_server.endpoint_url, **BENCH_CREDS}


@pytest.fixture
def fast_boto3(fast_options):
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(max_pool_connections=32, retries={"total_max_attempts": 1}), **fast_options)
    yield client
    client.close()
