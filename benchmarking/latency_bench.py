"""Core latency benchmark: stock torch DataLoader vs ours on a dataset with simulated per-sample latency.

    python -m benchmarking.latency_bench            # 20 ms per sample, 2 workers, 16 fetches in flight

Each sample's fetch sleeps ``--latency-ms`` (``time.sleep`` in the sync path, ``asyncio.sleep`` in the
async path) and there is no decode, so this isolates latency hiding from CPU work. All loaders run in
the same process, one after another, on the same dataset. Prints a table with samples/s and the ratio to
torch, and saves a bar plot.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from concurrent_dataloader import ConcurrentDataset, DataLoader

__all__ = ["LatencyDataset", "main"]


class LatencyDataset(ConcurrentDataset):
    def __init__(self, n: int, latency_s: float) -> None:
        self.n, self.latency_s = n, latency_s

    def __len__(self) -> int:
        return self.n

    def fetch_raw(self, index: int) -> int:
        time.sleep(self.latency_s)
        return index

    async def fetch_raw_async(self, index: int) -> int:
        await asyncio.sleep(self.latency_s)
        return index

    def decode(self, index: int, raw: int) -> torch.Tensor:
        return torch.tensor(raw)


def measure(name: str, loader, n: int) -> dict:
    """Steady-state rate: timed from the first batch's arrival, so worker start-up (the same
    fork for both loaders) does not dilute the figure. Total wall time is reported too."""
    seen = 0
    start = time.perf_counter()
    first_at = first_len = None
    with tqdm(total=n, desc=name, unit="sample", leave=False) as bar:
        for batch in loader:
            if first_at is None:
                first_at, first_len = time.perf_counter(), len(batch)
            seen += len(batch)
            bar.update(len(batch))
    end = time.perf_counter()
    if seen != n:
        raise RuntimeError(f"{name}: delivered {seen} samples, expected {n}")
    close = getattr(loader, "close", None)
    if callable(close):
        close()
    return {"loader": name, "samples": n, "seconds": end - start,
            "samples_per_s": (n - first_len) / (end - first_at)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--samples", type=int, default=2048, help="samples per loader run")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--num-fetch-workers", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batch-pool", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; samples/s is their median")
    p.add_argument("--out", type=Path, default=Path("benchmarking/results"))
    args = p.parse_args(argv)

    ds = LatencyDataset(args.samples, args.latency_ms / 1000)
    common = dict(batch_size=args.batch_size, num_workers=args.num_workers)
    names = ["torch", "ours-threaded", "ours-asyncio"]
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(max(1, args.rounds)):  # NOTE: interleaved, so load from elsewhere hits every loader
        rounds["torch"].append(measure("torch", torch.utils.data.DataLoader(ds, **common), args.samples))
        for impl in ("threaded", "asyncio"):
            loader = DataLoader(ds, **common, num_fetch_workers=args.num_fetch_workers, fetch_impl=impl,
                                batch_pool=args.batch_pool)
            rounds[f"ours-{impl}"].append(measure(f"ours-{impl}", loader, args.samples))
    runs = []
    for n in names:
        rates = [r["samples_per_s"] for r in rounds[n]]
        runs.append({"loader": n, "samples": args.samples, "samples_per_s": statistics.median(rates),
                     "min": min(rates), "max": max(rates), "rounds": rates,
                     "seconds": statistics.median(r["seconds"] for r in rounds[n])})

    base = runs[0]["samples_per_s"]
    ideal = args.num_fetch_workers
    print(f"\nlatency {args.latency_ms:g} ms/sample, num_workers={args.num_workers}, "
          f"num_fetch_workers={args.num_fetch_workers}, batch_size={args.batch_size}, batch_pool={args.batch_pool}, "
          f"{args.samples} samples (ideal ratio {ideal}x)")
    print(f"{'loader':<16}{'samples/s':>12}{'(min-max)':>16}{'vs torch':>10}   (samples/s from the first batch on, "
          f"median of {args.rounds} rounds)")
    for r in runs:
        r["ratio"] = r["samples_per_s"] / base
        spread = f"({r['min']:.0f}-{r['max']:.0f})"
        print(f"{r['loader']:<16}{r['samples_per_s']:>12.1f}{spread:>16}{r['ratio']:>9.1f}x")

    args.out.mkdir(parents=True, exist_ok=True)
    import json

    (args.out / "latency_bench.json").write_text(json.dumps(
        {"command": "python -m benchmarking.latency_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
         "settings": vars(args) | {"out": str(args.out)}, "runs": runs}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar([r["loader"] for r in runs], [r["samples_per_s"] for r in runs], color=["grey", "C0", "C1"])
        ax.set_ylabel("samples/s")
        ax.set_title(f"{args.latency_ms:g} ms latency, {args.num_workers} workers")
        for i, r in enumerate(runs):
            ax.annotate(f"{r['ratio']:.1f}x", (i, r["samples_per_s"]), ha="center", va="bottom")
        fig.tight_layout()
        path = args.out / "latency_bench.png"
        fig.savefig(path, dpi=120)
        print(f"plot: {path}")
    except ImportError:
        print("matplotlib not installed: no plot")
    return runs


if __name__ == "__main__":
    main()
