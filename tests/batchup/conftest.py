"""Fixtures for the batchup-compatible API tests (helpers live in helpers.py)."""

from __future__ import annotations

import threading

import pytest

from tests.batchup.helpers import PROXY_LATENCY_S, ProxyServer, RequestStats, make_proxy_handler


@pytest.fixture
def latency_s3(s3_server):
    """``(endpoint_url, stats)``: S3 through a proxy adding PROXY_LATENCY_S per request and counting concurrency."""
    stats = RequestStats()
    server = ProxyServer(("127.0.0.1", 0), make_proxy_handler(s3_server, PROXY_LATENCY_S, stats))
    thread = threading.Thread(target=server.serve_forever, name="latency-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

