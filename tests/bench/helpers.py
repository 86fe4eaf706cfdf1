"""Constants shared by the tests/bench modules (a uniquely named module: no ``from conftest import``,
which would be ambiguous with several conftest.py files in one session)."""

from __future__ import annotations

import socket

BENCH_CREDS = {"region_name": "us-east-1", "aws_access_key_id": "bench-key-AKIA1234",
               "aws_secret_access_key": "bench-secret-DO-NOT-LEAK-91c2"}


def free_port_for_test() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
