"""Markdown tables from a benchmark result: ``python -m benchmarking.report RESULTS.json``.

The tables in README.md and docs/benchmarks.md are printed by this from the committed result files
under docs/results/, so a published figure is always the file's figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["markdown_rows", "markdown_checks", "main"]


def _what(r: dict[str, Any]) -> str:
    name = {"ours-asyncio": "ours (asyncio)", "ours-threaded": "ours (threaded)", "torch": "stock torch",
            "torch+getitems": "stock torch + our `__getitems__`"}.get(r["loader"], f"`{r['loader']}`")
    extra = []
    if r.get("format") not in ("jpeg", "peer", None):
        extra.append({"archive": "one TAR, ranged GETs", "shards": "tar shards"}.get(r["format"], r["format"]))
    if r.get("decoder", "pil") != "pil":
        extra.append("fast decode (torchvision)")
    if r.get("transform", "realistic") == "normalize":
        extra.append("+ Normalize")
    if r.get("s3_client") == "botocore":
        extra.append("botocore")
    return name + (f", {', '.join(extra)}" if extra else "")


def _n(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    return "-" if v is None else format(v, fmt)


def markdown_rows(result: dict[str, Any], latency: float | None = None) -> str:
    rows = [r for r in result["rows"] if latency is None or r["latency_ms"] == latency]
    out = ["| loader | workers | latency | img/s median (min-max) | peak PSS MB | CPU ms/img | first batch s | "
           "server GET/s | sampling |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat = f"{r['latency_ms']:g} ms" if r["storage"] == "s3" else "local"
        if r.get("status") != "ok":
            out.append(f"| {_what(r)} | {r['num_workers']} | {lat} | {r.get('status', '')[:80]} | | | | | |")
            continue
        out.append(f"| {_what(r)} | {r['num_workers']} | {lat} | {r['img_per_s']:.0f} ({r['img_per_s_min']:.0f}-"
                   f"{r['img_per_s_max']:.0f}) | {_n(r, 'peak_pss_mb', '.0f')} | {_n(r, 'loader_cpu_ms_per_img', '.2f')} | "
                   f"{_n(r, 'first_batch_s', '.1f')} | {_n(r, 'server_gets_per_s', '.0f')} | {r.get('sampling', '-')} |")
    return "\n".join(out)


def markdown_checks(result: dict[str, Any]) -> str:
    out = ["| target | value (per-round range) | target | verdict |", "|---|---:|---:|---|"]
    for c in result["checks"]:
        if c.get("target") is None:
            continue
        value = "-" if c.get("value") is None else f"{c['value']:.2f} ({c['lo']:.2f}-{c['hi']:.2f})"
        out.append(f"| {c['check']} | {value} | {c['op']} {c['target']:g} | **{c['status']}** |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.report", description=__doc__.split("\n\n")[0])
    p.add_argument("result", type=Path, help="a results.json written by python -m benchmarking.run")
    p.add_argument("--latency", type=float, default=None, help="only rows at this latency")
    args = p.parse_args(argv)
    result = json.loads(args.result.read_text())
    print(f"`{result.get('command', '')}` ({result.get('wall_s', '?')} s; load average "
          f"{result.get('load_avg_start', [0])[0]:.1f} at start, {result.get('load_avg_end', [0])[0]:.1f} at end, "
          f"{result.get('cpu_count', '?')} cores; {result.get('repeats', '?')} rounds)\n")
    print(markdown_rows(result, args.latency))
    print()
    print(markdown_checks(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
