"""Peers of the head-to-head benchmark, each run in its own venv and process (see README.md here).

This module is imported both by the harness (our lock's interpreter) and by the peers' venvs, so it
uses the standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PEERS", "LOCKED", "NOT_INSTALLED", "VENVS", "peer_python", "peer_command", "run_peer", "parse_result"]

PEERS = ("webdataset", "litdata", "mosaic", "s3torch_map", "s3torch_iterable")
# Peers whose package is in requirements-lock.txt: without a venv they run on the harness's interpreter.
LOCKED = frozenset({"s3torch_map", "s3torch_iterable"})
NOT_INSTALLED = 3  # exit code of a runner whose package does not import
VENVS = Path(__file__).resolve().parent / ".venvs"
REPO_ROOT = Path(__file__).resolve().parents[2]


def peer_python(name: str) -> str | None:
    """The interpreter that runs peer ``name``, or None when it is not installed."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")
    venv = VENVS / name / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable if name in LOCKED else None


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The runner's answer: the last stdout line that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def peer_command(name: str, action: str, spec_path: str | os.PathLike,
                 python: str | None = None) -> tuple[list[str], dict[str, str]] | None:
    """(argv, env) that runs ``action`` of peer ``name`` (for a harness that starts and watches the
    process itself, e.g. to poll its memory), or None when the peer is not installed."""
    python = python or peer_python(name)
    if python is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return [python, "-m", f"benchmarking.peers.{name}", action, "--spec", str(spec_path)], env


def run_peer(name: str, action: str, spec: dict[str, Any], *, timeout: float = 900.0,
             python: str | None = None, stderr: Any = None) -> tuple[int, dict[str, Any]]:
    """Run ``python -m benchmarking.peers.<name> <action> --spec`` and return (exit code, its JSON).

    Not installed -> (NOT_INSTALLED, {"error": "not installed"}) without starting anything.
    ``stderr`` goes where the runner's logs should (default: inherited).
    """
    if (python or peer_python(name)) is None:
        return NOT_INSTALLED, {"error": "not installed", "peer": name}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"peer-{name}-", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    try:
        command = peer_command(name, action, path, python)
        assert command is not None
        argv, env = command
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout, env=env,
                              cwd=str(REPO_ROOT))
    finally:
        os.unlink(path)
    result = parse_result(proc.stdout)
    if result is None:
        result = {"error": f"no JSON result (exit code {proc.returncode})"}
    return proc.returncode, result
