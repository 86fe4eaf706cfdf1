"""Benchmarks for hedged requests and adaptive concurrency, on the latency-injected S3 server.

    python -m benchmarking.bench_tail_throttle                 # both
    python -m benchmarking.bench_tail_throttle --only hedging
    python -m benchmarking.bench_tail_throttle --only adaptive

**hedging**: the server answers GETs in ``--latency-ms`` (20 ms) except a heavy tail: ``--tail-p``
(2%) of GETs wait ``--tail-s`` (1 s). Our loader (asyncio, 2 workers) reads the same dataset with
and without :class:`~concurrent_dataloader.storage.HedgedStore`; we print the p50/p99 time between
batches at the training loop and the GETs the server received (hedging must cost <= 5% extra).

**adaptive**: the server throttles: above ``--rate`` GET/s it answers ``503 SlowDown`` (a token
bucket). We sweep fixed ``num_fetch_workers`` and run ``num_fetch_workers="auto"``; we print img/s
and the 503s each run provoked, and the ratios the issue asks for: auto against the best fixed
setting (>= 0.9x), and the largest fixed setting's 503s against auto's (>= 5x).

Each benchmark runs ``--rounds`` times (default 3); the printed figures are the medians, and each
target gets a verdict as in the grid benchmark (NOTE [ Verdicts ] in benchmarking/harness/checks.py):
PASS when every round meets it, FAIL when none does, inconclusive otherwise. ``--check`` makes the
verdicts the exit code (1: a target failed; 3: none failed, some inconclusive; 0: all pass).

The server runs in a thread of this process; the loaders fetch in worker processes, so the two do
not share a GIL. Images are small (64x48 JPEGs) so that the client CPU does not hide the effect.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarking.s3_server import Request, RequestHook, Response, S3Server, s3_error
from concurrent_dataloader import DataLoader
from concurrent_dataloader.datasets.image import ImageDataset
from concurrent_dataloader.storage import HedgedStore, RetryPolicy
from concurrent_dataloader.storage.s3_http import LeanS3Store

__all__ = ["HeavyTail", "RateLimit503", "main"]

BUCKET = "bench"


class HeavyTail(RequestHook):
    """A seeded fraction ``p`` of GETs waits ``delay_s`` extra."""

    def __init__(self, p: float, delay_s: float, seed: int = 0) -> None:
        self.p, self.delay_s = p, delay_s
        self._rng = random.Random(seed)
        self.slowed = 0

    def after(self, request: Request, response: Response) -> None:
        if request.method == "GET" and request.key and self._rng.random() < self.p:
            response.delay_s += self.delay_s
            self.slowed += 1


class RateLimit503(RequestHook):
    """Token bucket: GETs above ``rate`` per second (burst ``burst``) get 503 SlowDown."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self.burst
        self._last = time.monotonic()
        self.throttled = 0

    def before(self, request: Request) -> Response | None:
        if request.method != "GET" or not request.key:
            return None
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        self.throttled += 1
        return s3_error(503, "SlowDown", "Please reduce your request rate.", request.path)


def _images(n: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _to_tensor(img: Any) -> Any:
    import torchvision.transforms.functional as F

    return F.pil_to_tensor(img)


def _dataset(server: S3Server, n: int, hedged: bool, retry: RetryPolicy | None = None) -> ImageDataset:
    store: Any = LeanS3Store(BUCKET, endpoint_url=server.endpoint_url, region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench-secret",
                             max_pool_connections=128, **({"retry": retry} if retry else {}))
    if hedged:
        store = HedgedStore(store)
    keys = [f"img/{i:06d}.jpg" for i in range(n)]
    return ImageDataset(store, keys, [i % 10 for i in range(n)], transform=_to_tensor)


def _run(loader: DataLoader) -> dict[str, Any]:
    gaps, start = [], time.perf_counter()
    last = start
    n = 0
    for images, _labels in loader:
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        n += len(images)
    elapsed = time.perf_counter() - start
    stats = loader.stats()
    loader.close()
    gaps = gaps[1:]  # the first includes worker start-up
    return {"images": n, "seconds": elapsed, "img_per_s": n / elapsed,
            "p50_batch_s": float(np.percentile(gaps, 50)), "p99_batch_s": float(np.percentile(gaps, 99)),
            "hedges": stats["hedges"], "retries": stats["retries"], "throttled_seen": stats["throttled"]}


def bench_hedging(args: argparse.Namespace) -> dict[str, Any]:
    tail = HeavyTail(args.tail_p, args.tail_s, seed=1)
    rows = {}
    with S3Server(latency_ms=args.latency_ms, jitter_ms=args.latency_ms / 10, buckets={BUCKET: None},
                  hooks=[tail], seed=1) as server:
        for i, data in enumerate(_images(args.samples)):
            server.put_object(BUCKET, f"img/{i:06d}.jpg", data)
        for hedged in (False, True):
            server.reset_stats()
            ds = _dataset(server, args.samples, hedged)
            loader = DataLoader(ds, batch_size=args.batch_size, num_workers=2, num_fetch_workers=16,
                                fetch_impl="asyncio", batch_pool=4)
            row = _run(loader)
            row["server_gets"] = server.stats()["gets"]
            rows["hedged" if hedged else "plain"] = row
    plain, hedged_row = rows["plain"], rows["hedged"]
    print(f"\nhedging: {args.samples} images, GET latency {args.latency_ms:g} ms, {args.tail_p:.0%} of GETs "
          f"+{args.tail_s:g} s; ours asyncio, 2 workers x 16 fetches, batch {args.batch_size}")
    print(f"{'':<10}{'img/s':>8}{'p50 batch':>11}{'p99 batch':>11}{'GETs':>7}{'hedges':>8}")
    for name, r in rows.items():
        print(f"{name:<10}{r['img_per_s']:>8.0f}{r['p50_batch_s'] * 1000:>9.0f}ms{r['p99_batch_s'] * 1000:>9.0f}ms"
              f"{r['server_gets']:>7}{r['hedges']:>8}")
    summary = {"p99_improvement": plain["p99_batch_s"] / hedged_row["p99_batch_s"],
               "extra_requests": hedged_row["server_gets"] / plain["server_gets"] - 1}
    print(f"p99 batch time improved {summary['p99_improvement']:.1f}x (target >= 3x) with "
          f"{summary['extra_requests']:+.1%} requests (target <= +5%)")
    return {"rows": rows, **summary}


def bench_adaptive(args: argparse.Namespace) -> dict[str, Any]:
    limiter = RateLimit503(args.rate)
    retry = RetryPolicy(max_attempts=12, base_delay=0.02, max_delay=0.5)
    rows: dict[str, Any] = {}
    settings: list[Any] = [int(x) for x in args.fixed.split(",")] + ["auto"]
    with S3Server(latency_ms=args.throttle_latency_ms, buckets={BUCKET: None}, hooks=[limiter]) as server:
        for i, data in enumerate(_images(args.samples)):
            server.put_object(BUCKET, f"img/{i:06d}.jpg", data)
        for nfw in settings:
            limiter.throttled = 0
            ds = _dataset(server, args.samples, hedged=False, retry=retry)
            loader = DataLoader(ds, batch_size=args.batch_size, num_workers=2, num_fetch_workers=nfw,
                                max_fetch_workers=max(s for s in settings if s != "auto"), fetch_impl="asyncio",
                                batch_pool=8)
            row = _run(loader)
            row["server_503s"] = limiter.throttled
            rows[str(nfw)] = row
    fixed = {k: v for k, v in rows.items() if k != "auto"}
    best_key = max(fixed, key=lambda k: fixed[k]["img_per_s"])
    largest_key = str(max(int(k) for k in fixed))
    auto = rows["auto"]
    print(f"\nadaptive: {args.samples} images, GET latency {args.throttle_latency_ms:g} ms, server throttles above "
          f"{args.rate:g} GET/s (503 SlowDown); ours asyncio, 2 workers")
    print(f"{'num_fetch_workers':<19}{'img/s':>8}{'503s':>8}{'retries':>9}")
    for k, r in rows.items():
        print(f"{k:<19}{r['img_per_s']:>8.0f}{r['server_503s']:>8}{r['retries']:>9}")
    summary = {"auto_vs_best_fixed": auto["img_per_s"] / fixed[best_key]["img_per_s"], "best_fixed": best_key,
               "503_reduction_vs_largest": fixed[largest_key]["server_503s"] / max(1, auto["server_503s"])}
    print(f"auto reaches {summary['auto_vs_best_fixed']:.2f}x the best fixed setting ({best_key}) (target >= 0.9x); "
          f"the largest fixed setting ({largest_key}) got {summary['503_reduction_vs_largest']:.1f}x more 503s than auto "
          f"(target >= 5x)")
    return {"rows": rows, **summary}


TARGETS = {  # name: (summary key, op, target)
    "hedging: p99 time between batches, plain / hedged": ("hedging", "p99_improvement", ">=", 3.0),
    "hedging: extra GETs at the server": ("hedging", "extra_requests", "<=", 0.05),
    "adaptive: auto img/s / best fixed setting": ("adaptive", "auto_vs_best_fixed", ">=", 0.9),
    "adaptive: 503s of the largest fixed setting / auto's": ("adaptive", "503_reduction_vs_largest", ">=", 5.0),
}


def evaluate(rounds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One check per target over the rounds' summaries: median value, spread min-max, verdict."""
    from benchmarking.harness.checks import verdict

    checks = []
    for name, (bench, key, op, target) in TARGETS.items():
        values = [r[key] for r in rounds.get(bench, [])]
        if not values:
            continue
        value, lo, hi = statistics.median(values), min(values), max(values)
        status = verdict(value, lo, hi, target, op)
        checks.append({"check": name, "value": value, "lo": lo, "hi": hi, "op": op, "target": target,
                       "status": status, "rounds": values})
    return checks


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["hedging", "adaptive"])
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--tail-p", type=float, default=0.02)
    p.add_argument("--tail-s", type=float, default=1.0)
    p.add_argument("--rate", type=float, default=300.0, help="GET/s above which the server answers 503")
    p.add_argument("--throttle-latency-ms", type=float, default=50.0)
    p.add_argument("--fixed", default="4,8,16,32,64", help="fixed num_fetch_workers settings to sweep")
    p.add_argument("--rounds", type=int, default=3, help="repeat each benchmark; figures are medians (default 3)")
    p.add_argument("--check", action="store_true", help="exit non-zero unless every target passes")
    p.add_argument("--out", type=Path, default=Path("benchmarking/results"))
    args = p.parse_args(argv)
    rounds: dict[str, list[dict[str, Any]]] = {}
    for i in range(max(1, args.rounds)):
        print(f"\n=== round {i + 1} of {args.rounds} ===")
        if args.only in (None, "hedging"):
            rounds.setdefault("hedging", []).append(bench_hedging(args))
        if args.only in (None, "adaptive"):
            rounds.setdefault("adaptive", []).append(bench_adaptive(args))
    checks = evaluate({k: [{kk: vv for kk, vv in r.items() if kk != "rows"} for r in v] for k, v in rounds.items()})
    print(f"\ntargets (median of {args.rounds} round(s), per-round min-max):")
    for c in checks:
        print(f"[{c['status']}] {c['check']}: {c['value']:.3f} ({c['lo']:.3f}-{c['hi']:.3f}) (target {c['op']} "
              f"{c['target']:g})")
    results: dict[str, Any] = {"rounds": rounds, "checks": checks,
                               "command": "python -m benchmarking.bench_tail_throttle " + " ".join(argv or [])}
    results.update({k: v[-1] for k, v in rounds.items()})  # the last round's rows, for the plot
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tail_throttle.json").write_text(json.dumps(results, indent=1, default=str))
    _plot({k: v[-1] for k, v in rounds.items()}, args.out / "tail_throttle.png")
    if args.check:
        statuses = {c["status"] for c in checks}
        results["exit_code"] = 1 if "FAIL" in statuses else (3 if "inconclusive" in statuses else 0)
    return results


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        rows = res["rows"]
        if name == "hedging":
            ax.bar(list(rows), [r["p99_batch_s"] * 1000 for r in rows.values()], color=["grey", "C0"])
            ax.set_ylabel("p99 time between batches (ms)")
        else:
            ax.bar(list(rows), [r["img_per_s"] for r in rows.values()], color="C0")
            ax2 = ax.twinx()
            ax2.plot(list(rows), [r["server_503s"] for r in rows.values()], "o-", color="C3")
            ax.set_xlabel("num_fetch_workers")
            ax.set_ylabel("img/s")
            ax2.set_ylabel("503 SlowDown", color="C3")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main().get("exit_code", 0))
