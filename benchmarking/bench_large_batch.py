"""One large batch of trivial samples: the per-sample overhead of our fetch engines against torch.

    python -m benchmarking.bench_large_batch                       # 1k, 4k, 16k; 5 repeats
    python -m benchmarking.bench_large_batch --sizes 16000 --repeats 3

Each run builds a fresh loader (``num_workers=0``, ``batch_size=N``) and times its *first* batch:
``next(iter(loader))``, collate included. Two datasets: ``plain`` (``__getitem__`` returns an
empty tensor) and ``fetch_decode`` (the fetch/decode protocol, both steps trivial). Large
batches of cheap samples (embeddings, tabular rows, small crops) must not make us slower than
torch by more than a small constant, and time must grow linearly in N.

Two more columns, ``*-concurrent``, run our loaders with inline mode off: the per-sample cost
of the concurrent path (one pool task per in-flight slot, not per sample), for samples just too
slow to be loaded inline. They are informational; the targets apply to ``threaded``/``asyncio``.

Targets (exit status 1 when one fails):
  * a batch of the largest size takes under ``--target-s`` (1 s) on both fetch_impls;
  * linear: time(largest) / time(smallest) stays under 1.5x the ratio of the sizes (plus 50 ms of slack
    for the smallest).

Medians with min-max spread. Writes ``large_batch.json`` (the command, every run) and
``large_batch.png`` (median time against N, log-log) to ``--out-dir``; the committed copy of the
last run is in ``docs/large_batch/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from concurrent_dataloader import ConcurrentDataset, DataLoader

_EMPTY = torch.empty(0)


class TrivialDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return _EMPTY


class TrivialFetchDecode(ConcurrentDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def fetch_raw(self, i: int) -> bytes:
        return b""

    def decode(self, i: int, raw: bytes) -> torch.Tensor:
        return _EMPTY


DATASETS: dict[str, Callable[[int], Dataset]] = {"plain": TrivialDataset, "fetch_decode": TrivialFetchDecode}
LOADERS: dict[str, Callable[[Dataset, int], Any]] = {
    "torch": lambda ds, n: torch.utils.data.DataLoader(ds, batch_size=n),
    "threaded": lambda ds, n: DataLoader(ds, batch_size=n, fetch_impl="threaded"),
    "asyncio": lambda ds, n: DataLoader(ds, batch_size=n, fetch_impl="asyncio"),
    # Informational (no target): the concurrent path with inline mode off, i.e. the per-sample
    # cost a sample just too slow to be loaded inline pays.
    "threaded-concurrent": lambda ds, n: DataLoader(ds, batch_size=n, fetch_impl="threaded"),
    "asyncio-concurrent": lambda ds, n: DataLoader(ds, batch_size=n, fetch_impl="asyncio"),
}
TARGETED = ("threaded", "asyncio")


def first_batch_seconds(loader_name: str, dataset_name: str, n: int) -> float:
    from concurrent_dataloader.loader.fetchers import SampleFetcher

    loader = LOADERS[loader_name](DATASETS[dataset_name](n), n)
    saved = SampleFetcher.TRIVIAL_ENTER, SampleFetcher.TRIVIAL_EXIT
    if loader_name.endswith("-concurrent"):
        SampleFetcher.TRIVIAL_ENTER = SampleFetcher.TRIVIAL_EXIT = 0.0
    try:
        began = time.perf_counter()
        batch = next(iter(loader))
        elapsed = time.perf_counter() - began
    finally:
        SampleFetcher.TRIVIAL_ENTER, SampleFetcher.TRIVIAL_EXIT = saved
    assert len(batch) == n
    close = getattr(loader, "close", None)
    if callable(close):
        close()
    return elapsed


def _plot(results: dict, sizes: list[int], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True)
    for ax, (d, by_loader) in zip(axes, results.items()):
        for name, runs in by_loader.items():
            med = [statistics.median(runs[str(n)]) for n in sizes]
            ax.loglog(sizes, med, marker="o", label=name)
        ax.set_title(f"{d} samples, num_workers=0")
        ax.set_xlabel("batch size N")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("first batch, median s")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--target-s", type=float, default=1.0)
    p.add_argument("--out-dir", type=Path, default=Path("docs/large_batch"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as in a worker; OpenMP spinning would distort a loaded machine
    sizes = sorted(args.sizes)

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x

    cells = [(d, n, name) for d in DATASETS for n in sizes for name in LOADERS]
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for d, n, name in tqdm(cells, desc="large batch", unit="cell"):
        first_batch_seconds(name, d, min(sizes))  # warm imports, thread start-up
        runs = [first_batch_seconds(name, d, n) for _ in range(args.repeats)]
        results.setdefault(d, {}).setdefault(name, {})[str(n)] = runs

    failures = []
    print(f"\nFirst batch of N trivial samples, num_workers=0, median [min-max] s over {args.repeats} runs "
          f"({os.cpu_count()} cores)")
    header = f"{'dataset':<13}{'N':>8}" + "".join(f"{name:>26}" for name in LOADERS)
    print(header)
    print("-" * len(header))
    for d in DATASETS:
        for n in sizes:
            row = f"{d:<13}{n:>8,}"
            for name in LOADERS:
                runs = results[d][name][str(n)]
                row += f"{statistics.median(runs):>12.3f} [{min(runs):.3f}-{max(runs):.3f}]"
            print(row)
    for d in DATASETS:
        for name in TARGETED:
            med = {n: statistics.median(results[d][name][str(n)]) for n in sizes}
            big, small = sizes[-1], sizes[0]
            if med[big] >= args.target_s:
                failures.append(f"{d}/{name}: N={big:,} took {med[big]:.3f} s (target < {args.target_s} s)")
            if big > small and med[big] > 1.5 * (big / small) * (med[small] + 0.05):
                failures.append(f"{d}/{name}: not linear: N={small:,} {med[small]:.3f} s, N={big:,} {med[big]:.3f} s")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "large_batch.json"
    out.write_text(json.dumps({"command": "python -m benchmarking.bench_large_batch " + " ".join(argv or sys.argv[1:]),
                               "cores": os.cpu_count(), "torch": torch.__version__, "seconds": results,
                               "failures": failures}, indent=1) + "\n")
    print(f"\nwrote {out}")
    plot = _plot(results, sizes, args.out_dir / "large_batch.png")
    if plot is not None:
        print(f"wrote {plot}")
    for f in failures:
        print("TARGET FAILED:", f)
    if not failures:
        print(f"targets met: N={sizes[-1]:,} under {args.target_s} s on both fetch_impls, linear in N")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
