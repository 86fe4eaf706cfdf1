"""PNG plots of a benchmark run: throughput against latency per loader, and against num_fetch_workers."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["plot_throughput_vs_latency", "plot_throughput_vs_fetch_workers", "plot_all"]

_STYLE = {"torch": ("grey", "o"), "ours-threaded": ("C0", "s"), "ours-asyncio": ("C1", "D"),
          "torch+getitems": ("C2", "^"), "s3torchconnector": ("C3", "v")}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def plot_throughput_vs_latency(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One line per loader over the S3 latencies (runs with the most common worker/fetch settings)."""
    scratch = [r for r in _ok(rows) if r["storage"] == "scratch"]
    rows = [r for r in _ok(rows) if r["storage"] == "s3"]
    if not rows:
        return None
    plt = _plt()
    # keep one setting per loader: the one with the most latency points (the grid's main sweep)
    series: dict[tuple, dict[float, float]] = defaultdict(dict)
    for r in rows:
        key = (r["loader"], r["num_workers"], r["num_fetch_workers"], r["batch_pool"], r["batch_size"], r["s3_client"])
        series[key][r["latency_ms"]] = max(r["img_per_s"], series[key].get(r["latency_ms"], 0.0))
    best: dict[str, tuple] = {}
    for key, pts in series.items():  # per loader, the series with the most latency points
        if key[0] not in best or len(pts) > len(series[best[key[0]]]):
            best[key[0]] = key
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for loader, key in best.items():
        pts = sorted(series[key].items())
        color, marker = _STYLE.get(loader, (None, "o"))
        label = loader + (f" (nfw={key[2]})" if key[2] else "") + (f" [{key[5]}]" if key[5] == "botocore" else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
    for r in scratch:
        if r["loader"] == "torch":
            ax.axhline(r["img_per_s"], color="grey", ls=":", lw=1, label="torch, local disk")
            break
    ax.set_xlabel("injected S3 latency per request (ms)")
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Throughput vs S3 latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_throughput_vs_fetch_workers(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One line per (loader, storage, latency) that was run with several num_fetch_workers values."""
    rows = [r for r in _ok(rows) if r["num_fetch_workers"]]
    series: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        key = (r["loader"], r["storage"], r["latency_ms"], r["num_workers"], r["batch_pool"], r["batch_size"])
        series[key][r["num_fetch_workers"]] = r["img_per_s"]
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, pts in sorted(series.items()):
        loader, storage, lat = key[:3]
        color, marker = _STYLE.get(loader, (None, "o"))
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker=marker, color=color,
                label=f"{loader}, {storage} {lat:g} ms, {key[3]} workers")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("num_fetch_workers (concurrent fetches per worker)")
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Throughput vs num_fetch_workers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(rows: list[dict[str, Any]], out_dir: Path, name: str = "") -> list[Path]:
    made = [plot_throughput_vs_latency(rows, out_dir / "throughput_vs_latency.png", f"{name}: throughput vs latency"),
            plot_throughput_vs_fetch_workers(rows, out_dir / "throughput_vs_fetch_workers.png",
                                             f"{name}: throughput vs num_fetch_workers")]
    return [p for p in made if p is not None]
