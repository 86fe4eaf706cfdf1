"""Fixtures for the reliability suite: a fault-injecting S3 server per test, a private temp dir."""

from __future__ import annotations

import tempfile

import pytest

from benchmarking.faults import FaultInjector, fault_server
from tests.reliability.helpers import FIGURES, LEAK_LOG, warm_up_multiprocessing


@pytest.fixture(scope="session", autouse=True)
def _warm_multiprocessing():
    warm_up_multiprocessing()


@pytest.fixture
def injector():
    return FaultInjector(seed=1234)


@pytest.fixture
def fault_srv(injector):
    """An in-process benchmark S3 server with ``injector`` installed; one per test."""
    with fault_server(injector) as server:
        yield server


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """TMPDIR for this test (inherited by forked and spawned workers), to count leftover temp files."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return str(d)


def pytest_terminal_summary(terminalreporter):
    if FIGURES["epochs"] or LEAK_LOG or FIGURES["fuzz_inputs"]:
        terminalreporter.write_sep("-", "reliability figures")
        terminalreporter.write_line(
            f"faults injected: {FIGURES['faults_injected']:.0f}, retries: {FIGURES['retries']:.0f}, "
            f"samples checked: {FIGURES['samples_checked']:.0f} over {FIGURES['epochs']:.0f} epochs, "
            f"leak checks passed: {len(LEAK_LOG)}; torch fd-probe temp files reaped after worker SIGKILL: "
            f"{FIGURES['torch_probe_files']:.0f}")
        terminalreporter.write_line(
            f"fuzz inputs: {FIGURES['fuzz_inputs']:.0f} (parsed {FIGURES['fuzz_parsed']:.0f}, rejected with our "
            f"error types {FIGURES['fuzz_rejected']:.0f}; any other outcome fails the test)")
        for impl in ("threaded", "asyncio"):
            if f"soak_rss_start_{impl}" in FIGURES:
                terminalreporter.write_line(
                    f"soak ({impl}): RSS of main + workers {FIGURES[f'soak_rss_start_{impl}']:.1f} MiB after warm-up, "
                    f"{FIGURES[f'soak_rss_end_{impl}']:.1f} MiB at the end")
