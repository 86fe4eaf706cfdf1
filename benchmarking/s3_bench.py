"""Micro-benchmarks of the S3 request path: the server's GET/s ceiling and each client's CPU per GET.

Why: a loader benchmark on a local S3 endpoint is only meaningful if the reader knows which
side limits it. The ceiling says how many GET/s the server can answer at zero latency; the
client figures say how much CPU each S3 client burns per GET (CPU that a DataLoader worker
then cannot spend decoding).

Each client runs in a fresh subprocess, so its CPU time (``time.process_time``) counts only
that client: botocore (threads), aiobotocore (asyncio), and the lean client
(:mod:`concurrent_dataloader.storage.s3_http`) in both modes. Each is measured over plain HTTP
and over HTTPS (real S3 is HTTPS): a :class:`TLSFront` with a certificate made for the run
(``trustme``) terminates TLS in front of the server, and the clients verify it against that CA.

    python -m benchmarking.s3_bench --gets 2000 --concurrency 16 [--protocols http,https]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["CLIENTS", "measure_ceiling", "measure_client_cpu", "client_cpu_subprocess", "ceiling_subprocesses",
           "server_ceiling", "main"]

CLIENTS = ("botocore", "aiobotocore", "lean-sync", "lean-async")
# Measured only when asked for (``--clients``) and importable: obstore is not in the lock (not
# fork-safe, see docs/datasets.md); install it into a throwaway venv to compare.
OPTIONAL_CLIENTS = ("obstore-sync", "obstore-async")
_CREDS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret", "region_name": "us-east-1"}


class TLSFront:
    """HTTPS on ``127.0.0.1`` in front of a plain-HTTP server: TLS is terminated here and the bytes
    are piped to ``upstream`` (``http://host:port``). Real S3 is HTTPS, so the clients' CPU per GET
    is measured over TLS too; the front runs in its own thread (in the parent process of the
    client being measured, so its CPU is not counted for the client).

    ``certfile``/``keyfile``: the server certificate (tests and the benchmark make one with
    ``trustme``); ``endpoint_url`` is ``https://127.0.0.1:PORT``.
    """

    def __init__(self, upstream: str, certfile: str, keyfile: str, host: str = "127.0.0.1") -> None:
        import ssl
        import threading
        from urllib.parse import urlsplit

        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(certfile, keyfile)
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-front", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._pipe, host, 0, ssl=self._ctx), self._loop).result(30)
        self.port = self._server.sockets[0].getsockname()[1]
        self.endpoint_url = f"https://{host}:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(256 * 1024):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> "TLSFront":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_certificate(directory: str) -> dict[str, str]:
    """A CA and a certificate for 127.0.0.1 made for this run (never a real key): file paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: os.path.join(directory, f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_and_cert_chain_pem.write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


def _obstore(endpoint: str, bucket: str, verify: Any) -> Any:
    """An obstore S3Store for the comparison (same endpoint, keys and CA as the other clients)."""
    from obstore.store import S3Store as ObS3Store

    options: dict[str, Any] = {"allow_http": endpoint.startswith("http://")}
    if isinstance(verify, str):
        options["root_certificate"] = Path(verify).read_text()
    elif verify is False:
        options["allow_invalid_certificates"] = True
    return ObS3Store(bucket, endpoint=endpoint, access_key_id=_CREDS["aws_access_key_id"],
                     secret_access_key=_CREDS["aws_secret_access_key"], region=_CREDS["region_name"],
                     client_options=options)


def _lean_store(endpoint: str, bucket: str, concurrency: int, verify: Any = None):
    from concurrent_dataloader.storage.s3_http import LeanS3Store

    return LeanS3Store(bucket, endpoint_url=endpoint, max_pool_connections=max(64, concurrency), verify=verify,
                       **_CREDS)


async def _lean_async_run(store: Any, keys: list[str], n: int, concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            return len(await store.aget(keys[i % len(keys)]))

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


def measure_ceiling(endpoint: str, bucket: str, keys: list[str], seconds: float = 2.0, concurrency: int = 64) -> float:
    """GET/s the server sustains at high concurrency, driven by the (cheapest) lean async client.

    NOTE: call it with the server's latency at 0; the caller reads the server's own CPU use from
    its stats to tell whether the server (~100% of a core) or the client was the limit.
    """
    import uvloop

    store = _lean_store(endpoint, bucket, concurrency)

    async def run() -> int:
        await _lean_async_run(store, keys, concurrency, concurrency)  # warm the connections
        sem = asyncio.Semaphore(concurrency)
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < deadline:
                async with sem:
                    await store.aget(keys[i % len(keys)])
                done += 1
                i += 7

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return int(done / (time.perf_counter() - start))

    try:
        return float(uvloop.run(run()))
    finally:
        store.close()


def measure_client_cpu(client: str, endpoint: str, bucket: str, keys: list[str], n: int = 1000,
                       concurrency: int = 16, verify: Any = None) -> dict[str, float]:
    """CPU ms per GET and GET/s for one client in *this* process (run it in a fresh one).
    ``verify``: for an https endpoint, the CA bundle (or ``False``), as every client takes it."""
    if client not in CLIENTS + OPTIONAL_CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS + OPTIONAL_CLIENTS}, got {client!r}")
    warm = min(n, 2 * concurrency)
    if client.startswith("obstore"):
        obstore = _obstore(endpoint, bucket, verify)
    if client in ("botocore", "lean-sync", "obstore-sync"):
        if client == "botocore":
            import boto3
            from botocore.config import Config

            s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=max(64, concurrency)),
                              verify=verify, **_CREDS)

            def get(key: str) -> int:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                try:
                    return len(body.read())
                finally:
                    body.close()
        elif client == "obstore-sync":
            import obstore as obs

            def get(key: str) -> int:
                return len(obs.get(obstore, key).bytes())
        else:
            store = _lean_store(endpoint, bucket, concurrency, verify)

            def get(key: str) -> int:
                return len(store.get(key))

        with cf.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(get, (keys[i % len(keys)] for i in range(warm))))
            cpu0, t0 = time.process_time(), time.perf_counter()
            nbytes = sum(pool.map(get, (keys[i % len(keys)] for i in range(n))))
            cpu1, t1 = time.process_time(), time.perf_counter()
    else:
        import uvloop

        async def run() -> tuple[float, float, float, float, int]:
            if client == "aiobotocore":
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                async with get_session().create_client(
                        "s3", endpoint_url=endpoint, config=AioConfig(max_pool_connections=max(64, concurrency)),
                        verify=verify, **_CREDS) as s3:
                    sem = asyncio.Semaphore(concurrency)

                    async def one(key: str) -> int:
                        async with sem:
                            r = await s3.get_object(Bucket=bucket, Key=key)
                            async with r["Body"] as stream:
                                return len(await stream.read())

                    await asyncio.gather(*(one(keys[i % len(keys)]) for i in range(warm)))
                    c0, w0 = time.process_time(), time.perf_counter()
                    sizes = await asyncio.gather(*(one(keys[i % len(keys)]) for i in range(n)))
                    return c0, w0, time.process_time(), time.perf_counter(), sum(sizes)
            if client == "obstore-async":
                import obstore as obs

                sem = asyncio.Semaphore(concurrency)

                async def one_ob(key: str) -> int:
                    async with sem:
                        r = await obs.get_async(obstore, key)
                        return len(await r.bytes_async())

                await asyncio.gather(*(one_ob(keys[i % len(keys)]) for i in range(warm)))
                c0, w0 = time.process_time(), time.perf_counter()
                sizes = await asyncio.gather(*(one_ob(keys[i % len(keys)]) for i in range(n)))
                return c0, w0, time.process_time(), time.perf_counter(), sum(sizes)
            store = _lean_store(endpoint, bucket, concurrency, verify)
            await _lean_async_run(store, keys, warm, concurrency)
            c0, w0 = time.process_time(), time.perf_counter()
            total = await _lean_async_run(store, keys, n, concurrency)
            c1, w1 = time.process_time(), time.perf_counter()
            await store.aclose()
            return c0, w0, c1, w1, total

        cpu0, t0, cpu1, t1, nbytes = uvloop.run(run())
    return {"client": client, "protocol": endpoint.split("://", 1)[0], "gets": n, "concurrency": concurrency,
            "cpu_ms_per_get": (cpu1 - cpu0) / n * 1e3, "gets_per_s": n / (t1 - t0), "mb_per_get": nbytes / n / 1e6}


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _start_child(payload: dict[str, Any]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "benchmarking.s3_bench", "--child"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(payload))
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return proc


def _finish_child(proc: subprocess.Popen, what: str, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{what} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def client_cpu_subprocess(client: str, endpoint: str, bucket: str, keys: list[str], n: int = 1000,
                          concurrency: int = 16, timeout: float = 300.0, verify: Any = None) -> dict[str, Any]:
    """:func:`measure_client_cpu` in a fresh Python process (clean CPU accounting)."""
    proc = _start_child({"what": "client", "client": client, "endpoint": endpoint, "bucket": bucket, "keys": keys,
                         "n": n, "concurrency": concurrency, "verify": verify})
    return _finish_child(proc, f"client benchmark {client!r}", timeout)


def ceiling_subprocesses(endpoint: str, bucket: str, keys: list[str], seconds: float = 2.0, concurrency: int = 64,
                         processes: int = 2) -> float:
    """Total GET/s of ``processes`` lean-async client processes hammering the server at once.

    Several processes, because one Python client process tops out before the server does.
    """
    procs = [_start_child({"what": "ceiling", "endpoint": endpoint, "bucket": bucket, "keys": keys,
                           "seconds": seconds, "concurrency": concurrency}) for _ in range(processes)]
    return float(sum(_finish_child(p, "ceiling client", seconds + 60)["gets_per_s"] for p in procs))


def _child() -> int:
    a = json.loads(sys.stdin.read())
    if a["what"] == "ceiling":
        result: dict[str, Any] = {"gets_per_s": measure_ceiling(a["endpoint"], a["bucket"], a["keys"], a["seconds"],
                                                                a["concurrency"])}
    else:
        result = measure_client_cpu(a["client"], a["endpoint"], a["bucket"], a["keys"], a["n"], a["concurrency"],
                                    a.get("verify"))
    print(json.dumps(result))
    return 0


def server_ceiling(server: Any, bucket: str, keys: list[str], seconds: float = 2.0, concurrency: int = 64,
                   processes: int = 2) -> dict[str, float]:
    """Measure a running :class:`~benchmarking.s3_server.ServerProcess` at zero latency.

    Returns the GET/s reached, the server's CPU ms per GET and the share of one core it used;
    ``cpu_bound_gets_per_s`` (1 / CPU per GET) is what one core could answer if the clients
    kept up. The server's latency setting is restored afterwards.
    """
    config = server.stats()["config"]
    server.configure(latency_ms=0, jitter_ms=0, bandwidth_mb_s=None)
    try:
        server.reset_stats()
        gets_per_s = ceiling_subprocesses(server.endpoint_url, bucket, keys, seconds, concurrency, processes)
        st = server.stats()
    finally:
        server.configure(**config)
    cpu_ms = st["server_cpu_s"] / max(1, st["gets"]) * 1e3
    return {"gets_per_s": gets_per_s, "server_cpu_ms_per_get": cpu_ms,
            # the clients' start-up is idle time for the server: divide by the measured window
            "server_core_utilisation": st["server_cpu_s"] / seconds,
            "cpu_bound_gets_per_s": 1e3 / cpu_ms if cpu_ms > 0 else float("inf")}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and min-max of CPU ms per GET (and median GET/s) per client and protocol."""
    import statistics

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["client"], r["protocol"]), []).append(r)
    out = []
    for (client, protocol), rs in groups.items():
        cpu = [r["cpu_ms_per_get"] for r in rs]
        out.append({"client": client, "protocol": protocol, "runs": len(rs), "cpu_ms_per_get": statistics.median(cpu),
                    "cpu_ms_min": min(cpu), "cpu_ms_max": max(cpu),
                    "gets_per_s": statistics.median(r["gets_per_s"] for r in rs)})
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per client, HTTP and HTTPS side by side."""
    by = {(s["client"], s["protocol"]): s for s in summary}
    clients = list(dict.fromkeys(s["client"] for s in summary))
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    head = "| client | " + " | ".join(f"{p.upper()} CPU ms/GET (min-max) | {p.upper()} GET/s" for p in protocols) + " |"
    lines = [head, "|---" * (1 + 2 * len(protocols)) + "|"]
    for c in clients:
        cells = []
        for p in protocols:
            s = by.get((c, p))
            cells += ["-", "-"] if s is None else [
                f"{s['cpu_ms_per_get']:.3f} ({s['cpu_ms_min']:.3f}-{s['cpu_ms_max']:.3f})", f"{s['gets_per_s']:,.0f}"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_lean_share(summary: list[dict[str, Any]], max_share: float) -> list[str]:
    """The target: lean threads vs botocore, lean asyncio vs aiobotocore, per protocol (medians)."""
    by = {(s["client"], s["protocol"]): s["cpu_ms_per_get"] for s in summary}
    failures = []
    for lean, ref in (("lean-sync", "botocore"), ("lean-async", "aiobotocore")):
        for proto in sorted({s["protocol"] for s in summary}):
            if (lean, proto) in by and (ref, proto) in by:
                share = by[(lean, proto)] / by[(ref, proto)]
                if share > max_share:
                    failures.append(f"{lean} over {proto}: {share:.2f} of {ref}'s CPU per GET (target <= {max_share})")
    return failures


def plot_cpu(results: dict[str, Any], path: str) -> None:
    """Bars of CPU ms per GET (median, min-max whiskers) per client, HTTP and HTTPS side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from concurrent_dataloader._atomic import atomic_open

    summary = results["summary"]
    clients = list(dict.fromkeys(s["client"] for s in summary))
    protocols = list(dict.fromkeys(s["protocol"] for s in summary))
    by = {(s["client"], s["protocol"]): s for s in summary}
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(protocols)
    for j, proto in enumerate(protocols):
        rows = [by.get((c, proto)) for c in clients]
        xs = [i + (j - (len(protocols) - 1) / 2) * width for i in range(len(clients))]
        med = [r["cpu_ms_per_get"] if r else 0 for r in rows]
        err = [[(r["cpu_ms_per_get"] - r["cpu_ms_min"]) if r else 0 for r in rows],
               [(r["cpu_ms_max"] - r["cpu_ms_per_get"]) if r else 0 for r in rows]]
        ax.bar(xs, med, width, yerr=err, capsize=3, label=proto.upper())
    ax.set_xticks(range(len(clients)))
    ax.set_xticklabels(clients, rotation=20, ha="right")
    ax.set_ylabel("client CPU ms per GET")
    ax.set_title(f"CPU per {results.get('size_kb', '?')} KB GET, {results.get('concurrency', '?')} in flight "
                 f"(median of {results.get('repeats', 1)}, min-max)")
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


_FORK_CHILD = """
import multiprocessing as mp, sys
import obstore as obs
from obstore.store import S3Store
from benchmarking.s3_server import S3Server

with S3Server(buckets={"b": None}) as srv:
    srv.put_object("b", "k", b"x" * 1000)
    st = S3Store("b", endpoint=srv.endpoint_url, access_key_id="a", secret_access_key="s", region="us-east-1",
                 client_options={"allow_http": True})
    assert len(obs.get(st, "k").bytes()) == 1000  # the parent uses the store first, as a training script would

    def child(q):
        q.put(len(obs.get(st, "k").bytes()))

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(15)
    hung = p.is_alive()
    if hung:
        p.kill()
        p.join()
    print("HUNG" if hung else f"OK exitcode={p.exitcode}")
"""


def obstore_fork_check() -> int:
    """Does obstore answer in a forked child (a DataLoader worker) after the parent used it?
    Prints ``HUNG`` or ``OK``; exits 0 either way (it reports, it does not judge)."""
    out = subprocess.run([sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, env=_child_env(),
                         timeout=120)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return out.returncode
    print(f"obstore GET in a forked child after the parent used the store: {out.stdout.strip()} "
          "(waited 15 s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.s3_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--gets", type=int, default=2000, help="GETs per client (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent GETs per client (default 16)")
    p.add_argument("--objects", type=int, default=64, help="distinct objects (default 64)")
    p.add_argument("--size-kb", type=int, default=110, help="object size in KB (default 110, like an ImageNet JPEG)")
    p.add_argument("--clients", default=",".join(CLIENTS),
                   help=f"comma-separated subset of {','.join(CLIENTS + OPTIONAL_CLIENTS)} (obstore: if installed)")
    p.add_argument("--protocols", default="http,https", help="comma-separated subset of http,https (default both)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per client and protocol, interleaved; the table gives the median and min-max")
    p.add_argument("--ceiling-seconds", type=float, default=3.0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--plot", default=None, help="also save a bar chart (PNG) of CPU per GET")
    p.add_argument("--max-lean-share", type=float, default=None, metavar="F",
                   help="exit 1 unless the lean client's median CPU per GET is at most F times botocore's "
                        "(threads) and aiobotocore's (asyncio), per protocol (e.g. 0.35)")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="only draw --plot from an earlier --json result file (no measuring)")
    p.add_argument("--obstore-fork-check", action="store_true",
                   help="only check whether obstore works in a forked child once the parent used it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child()
    if args.obstore_fork_check:
        return obstore_fork_check()
    if args.replot:
        if not args.plot:
            p.error("--replot needs --plot")
        results = json.loads(Path(args.replot).read_text())
        print(format_table(results["summary"]))
        plot_cpu(results, args.plot)
        failures = check_lean_share(results["summary"], args.max_lean_share) if args.max_lean_share else []
        for line in failures:
            print(f"TARGET MISSED: {line}", file=sys.stderr)
        return 1 if failures else 0

    from .s3_server import ServerProcess

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    with ServerProcess(buckets={"bench": None}) as server:
        store = _lean_store(server.endpoint_url, "bench", 16)
        payload = os.urandom(args.size_kb * 1000)
        keys = [f"obj/{i:05d}.bin" for i in range(args.objects)]
        for k in keys:
            store.put(k, payload)
        store.close()
        ceiling = server_ceiling(server, "bench", keys, args.ceiling_seconds)
        print(f"server ceiling: {ceiling['gets_per_s']:,.0f} GET/s of {args.size_kb} KB from 2 client processes x 64 "
              f"concurrent (server CPU {ceiling['server_cpu_ms_per_get']:.3f} ms/GET, "
              f"{ceiling['server_core_utilisation']:.0%} of a core; CPU-bound limit "
              f"{ceiling['cpu_bound_gets_per_s']:,.0f} GET/s)")
        results: dict[str, Any] = {"ceiling": ceiling, "clients": [], "size_kb": args.size_kb,
                                   "concurrency": args.concurrency, "gets": args.gets}
        protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
        results["repeats"] = args.repeats
        from tqdm import tqdm

        runs = [(r, proto, c) for r in range(args.repeats) for proto in protocols for c in clients]
        with contextlib.ExitStack() as stack:
            endpoints = {"http": (server.endpoint_url, None)}
            if "https" in protocols:
                tls = _make_certificate(stack.enter_context(tempfile.TemporaryDirectory()))
                front = stack.enter_context(TLSFront(server.endpoint_url, tls["cert"], tls["key"]))
                endpoints["https"] = (front.endpoint_url, tls["ca"])
            for repeat, protocol, client in tqdm(runs, desc="client CPU", unit="run", disable=args.no_progress):
                endpoint, verify = endpoints[protocol]
                server.reset_stats()
                r = client_cpu_subprocess(client, endpoint, "bench", keys, args.gets, args.concurrency, verify=verify)
                st = server.stats()
                r["server_cpu_ms_per_get"] = st["server_cpu_s"] / max(1, st["gets"]) * 1e3
                r["repeat"] = repeat
                results["clients"].append(r)
        results["summary"] = summarize(results["clients"])
        print(format_table(results["summary"]))
    if args.json:
        from concurrent_dataloader._atomic import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(results, indent=2) + "\n").encode())
    if args.plot:
        plot_cpu(results, args.plot)
    if args.max_lean_share is not None:
        failures = check_lean_share(results["summary"], args.max_lean_share)
        for line in failures:
            print(f"TARGET MISSED: {line}", file=sys.stderr)
        return 1 if failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
