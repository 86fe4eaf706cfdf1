"""PNG plots of a benchmark run: throughput against latency per loader, against num_fetch_workers,
and per storage format."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["plot_throughput_vs_latency", "plot_throughput_vs_fetch_workers", "plot_throughput_by_format",
           "plot_frontier", "plot_all"]

_STYLE = {"torch": ("grey", "o"), "ours-threaded": ("C0", "s"), "ours-asyncio": ("C1", "D"),
          "torch+getitems": ("C2", "^"), "s3torch_map": ("C3", "v"), "s3torch_iterable": ("C3", "<"),
          "webdataset": ("C4", "P"), "litdata": ("C5", "X"), "mosaic": ("C6", "*")}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _jpeg(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loader plots compare loaders on one object per image (formats have their own plot)."""
    return [r for r in rows if r.get("format", "jpeg") == "jpeg" and r.get("decoder", "pil") == "pil"
            and r.get("transform", "realistic") == "realistic"]


def plot_throughput_vs_latency(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """One line per loader over the S3 latencies (runs with the most common worker/fetch settings)."""
    scratch = [r for r in _jpeg(_ok(rows)) if r["storage"] == "scratch"]
    rows = [r for r in _jpeg(_ok(rows)) if r["storage"] == "s3"]
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
    """One line per (loader, storage, latency, format) that was run with several num_fetch_workers values."""
    rows = [r for r in _ok(rows) if r["num_fetch_workers"] and r.get("decoder", "pil") == "pil"]
    series: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        key = (r["loader"], r["storage"], r["latency_ms"], r["num_workers"], r["batch_pool"], r["batch_size"],
               r.get("format", "jpeg"), r["s3_client"])
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
        fmt = "" if key[6] == "jpeg" else f" {key[6]}"
        ax.plot(xs, [pts[x] for x in xs], marker=marker, color=color,
                label=f"{loader}, {storage}{fmt} {lat:g} ms, {key[3]} workers")
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


def _mode(values: list[Any]) -> Any:
    from collections import Counter

    return Counter(values).most_common(1)[0][0]


def plot_throughput_by_format(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Grouped bars: one panel per (storage, latency), one group per format, one bar per loader.

    Only rows with the grid's most common workers / batch size / S3 client / fetch settings are
    drawn (a sweep point is not a format's result); each bar is the best such run.
    """
    rows = [r for r in _ok(rows) if r.get("format") != "peer" and r.get("decoder", "pil") == "pil"]
    if len({r.get("format", "jpeg") for r in rows}) < 2:
        return None
    nw = _mode([r["num_workers"] for r in rows])
    bs = _mode([r["batch_size"] for r in rows])
    fetch = [(r["num_fetch_workers"], r["batch_pool"]) for r in rows
             if r["loader"] in ("ours-threaded", "ours-asyncio") and r.get("format") != "shards"]
    nfw_pool = _mode(fetch) if fetch else None
    clients = [r["s3_client"] for r in rows if r["storage"] == "s3" and r["loader"] != "s3torchconnector"]
    client = _mode(clients) if clients else None

    def keep(r: dict[str, Any]) -> bool:
        if r["num_workers"] != nw or r["batch_size"] != bs:
            return False
        if r["storage"] == "s3" and r["loader"] != "s3torchconnector" and r["s3_client"] != client:
            return False
        if r["loader"] in ("ours-threaded", "ours-asyncio") and r.get("format") != "shards" and nfw_pool is not None:
            return (r["num_fetch_workers"], r["batch_pool"]) == nfw_pool
        return True

    best: dict[tuple, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in filter(keep, rows):
        cell = best[(r["storage"], r["latency_ms"])][r.get("format", "jpeg")]
        cell[r["loader"]] = max(r["img_per_s"], cell.get(r["loader"], 0.0))
    panels = sorted(best, key=lambda k: (k[0] != "scratch", k[1]))
    if not panels:
        return None
    from .harness import FORMATS, LOADERS

    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.0, 2.6 * len(panels)), squeeze=False)
    for ax, key in zip(axes[:, 0], panels):
        groups = [f for f in FORMATS if f in best[key]]
        loaders = [lo for lo in LOADERS if any(lo in best[key][f] for f in groups)]
        width = 0.8 / max(1, len(loaders))
        for j, lo in enumerate(loaders):
            xs = [i + (j - (len(loaders) - 1) / 2) * width for i in range(len(groups))]
            ys = [best[key][f].get(lo, 0.0) for f in groups]
            ax.bar(xs, ys, width, color=_STYLE.get(lo, (None, "o"))[0], label=lo)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel("images / s")
        ax.grid(axis="y", alpha=0.3)
        where = "local disk" if key[0] == "scratch" else f"S3, {key[1]:g} ms latency"
        ax.set_title(where, fontsize=9)
        ax.legend(fontsize=7, ncol=len(loaders))
    fig.suptitle(title or "Throughput by storage format", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_frontier(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """img/s against peak PSS, one point per loader and setting (error bars: min-max over rounds);
    one panel per S3 latency. Up and to the left is better."""
    rows = [r for r in _ok(rows) if r["storage"] == "s3" and r.get("peak_pss_mb")]
    lats = sorted({r["latency_ms"] for r in rows})
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(lats), figsize=(6.4 * len(lats), 4.6), squeeze=False)
    for ax, lat in zip(axes[0], lats):
        for r in (r for r in rows if r["latency_ms"] == lat):
            color, marker = _STYLE.get(r["loader"], (None, "o"))
            y = r["img_per_s"]
            err = [[y - r.get("img_per_s_min", y)], [r.get("img_per_s_max", y) - y]]
            ax.errorbar([r["peak_pss_mb"]], [y], yerr=err, fmt=marker, color=color, ms=7, capsize=2)
            tag = [x for x in (r.get("format") if r.get("format") not in ("jpeg", "peer") else None,
                               "tv" if r.get("decoder", "pil") != "pil" else None,
                               "norm" if r.get("transform") == "normalize" else None) if x]
            ax.annotate(f"{r['loader']}{'[' + ','.join(tag) + ']' if tag else ''} {r['num_workers']}w",
                        (r["peak_pss_mb"], y), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        pss = [r["peak_pss_mb"] for r in rows if r["latency_ms"] == lat]
        if max(pss) > 4 * min(pss):
            from matplotlib.ticker import ScalarFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(ScalarFormatter())
            ax.tick_params(axis="x", which="minor", labelsize=6)
        else:
            ax.set_xlim(left=0, right=max(pss) * 1.3)
        ax.set_xlabel("peak PSS of the loader's process tree (MB)")
        ax.set_ylabel("images / s (median of rounds)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"S3, {lat:g} ms per request", fontsize=9)
    fig.suptitle(title or "Throughput vs memory", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(rows: list[dict[str, Any]], out_dir: Path, name: str = "") -> list[Path]:
    made = [plot_frontier(rows, out_dir / "frontier.png", f"{name}: img/s vs peak memory, one point per loader and setting"),
            plot_throughput_vs_latency(rows, out_dir / "throughput_vs_latency.png", f"{name}: throughput vs latency"),
            plot_throughput_vs_fetch_workers(rows, out_dir / "throughput_vs_fetch_workers.png",
                                             f"{name}: throughput vs num_fetch_workers"),
            plot_throughput_by_format(rows, out_dir / "throughput_by_format.png",
                                      f"{name}: throughput by storage format")]
    return [p for p in made if p is not None]
