"""The server in its own process (what benchmarks use: it must not share the client's GIL), and the
``python -m benchmarking.s3_server`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .server import S3Server

__all__ = ["ServerProcess", "main"]

# ---------------------------------------------------------------------------------------------
# Running it as a separate process (what the benchmarks do: the server must not share the GIL)
# ---------------------------------------------------------------------------------------------

class ServerProcess:
    """Starts ``python -m benchmarking.s3_server`` as a child process and talks to its admin API.

    Benchmarks use this rather than :class:`S3Server` in a thread, so the server's CPU does not
    compete for the client's GIL and its CPU time is measured on its own.
    """

    def __init__(self, *, latency_ms: float = 0.0, jitter_ms: float = 0.0, bandwidth_mb_s: float | None = None,
                 data_dir: str | os.PathLike | None = None, buckets: dict[str, str | os.PathLike | None] | None = None,
                 port: int = 0, seed: int | None = None, startup_timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "benchmarking.s3_server", "--port", str(port), "--latency-ms", str(latency_ms),
               "--jitter-ms", str(jitter_ms)]
        if bandwidth_mb_s:
            cmd += ["--bandwidth-mb-s", str(bandwidth_mb_s)]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        for name, where in (buckets or {}).items():
            cmd += ["--bucket", name if where is None else f"{name}={where}"]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # stderr goes to a file: a pipe nobody reads could fill up and block the server.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        deadline = time.monotonic() + startup_timeout
        line = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith("listening on "):
                break
        if not line.startswith("listening on "):
            self.stop()
            self._stderr.seek(0)
            err = self._stderr.read()
            raise RuntimeError(f"s3 server did not start: {line.strip()!r} {err.strip()[-2000:]}")
        self.endpoint_url = line.split()[-1]
        self.port = int(self.endpoint_url.rsplit(":", 1)[1])

    def _admin(self, method: str, what: str, payload: dict | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{self.endpoint_url}/_admin/{what}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "stats")

    def reset_stats(self) -> dict[str, Any]:
        return self._admin("POST", "reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._admin("PUT", "config", changes)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    close = stop

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_bucket_arg(value: str) -> tuple[str, str | None]:
    name, sep, where = value.partition("=")
    return name, (where if sep else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.s3_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; keep it on loopback)")
    p.add_argument("--port", type=int, default=9000, help="0 picks a free port (default 9000)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay before every response")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="uniform jitter added to the delay (+/-)")
    p.add_argument("--bandwidth-mb-s", type=float, default=None, help="cap on bytes sent, in MB/s (10^6)")
    p.add_argument("--data-dir", default=None, help="serve each subdirectory of DIR as a bucket")
    p.add_argument("--bucket", action="append", default=[], metavar="NAME[=DIR]",
                   help="add a bucket: in memory, or backed by DIR (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed for the jitter")
    args = p.parse_args(argv)
    buckets = dict(_parse_bucket_arg(b) for b in args.bucket)
    server = S3Server(args.host, args.port, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                      bandwidth_mb_s=args.bandwidth_mb_s, data_dir=args.data_dir, buckets=buckets, seed=args.seed)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def run() -> None:
        task = asyncio.ensure_future(server.serve_forever(stop))
        while server._server is None and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        print(f"buckets: {', '.join(sorted(server._buckets)) or '(none)'}", file=sys.stderr, flush=True)
        print(f"listening on {server.endpoint_url}", flush=True)
        await task

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
