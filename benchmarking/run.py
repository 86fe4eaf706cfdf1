"""``python -m benchmarking.run --config configs/quick.yaml``: the loader benchmark, one command.

Prints a table (img/s, ratio to stock torch in the same run, CPU ms per image split into S3
client / decode+transform / other loader work / server), the server's GET/s ceiling and the
issue's target checks; writes ``results.csv``, ``results.json`` and PNG plots to
``benchmarking/results/<name>-<time>/`` (git-ignored). See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["format_table", "format_checks", "write_results", "main"]

RESULTS = Path(__file__).resolve().parent / "results"

_COLUMNS = ["storage", "format", "latency_ms", "loader", "s3_client", "num_workers", "num_fetch_workers", "batch_pool",
            "prefetch_shards", "batch_size", "prefetch_factor", "transform", "status", "images", "seconds", "img_per_s", "ratio_vs_torch",
            "loader_cpu_ms_per_img", "client_ms_per_img", "decode_ms_per_img", "other_ms_per_img",
            "server_cpu_ms_per_img", "server_cpu_ms_per_get", "server_core_util", "server_gets",
            "server_peak_in_flight", "ceiling_gets_per_s", "img_per_s_repeats"]


def _f(v: Any, fmt: str, dash: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return dash
    return format(v, fmt)


def format_table(result: dict[str, Any]) -> str:
    c = result.get("ceiling")
    lines = []
    if result.get("load_avg_start"):
        lines.append(f"machine load average at start/end: {result['load_avg_start'][0]:.1f} / "
                     f"{result['load_avg_end'][0]:.1f} on {os.cpu_count()} cores (other work shares the CPU)")
    if c:
        lines.append(f"server ceiling (0 ms, 2 client processes x 64): {c['gets_per_s']:,.0f} GET/s; server CPU "
                     f"{c['server_cpu_ms_per_get']:.3f} ms/GET -> one core could answer "
                     f"{c['cpu_bound_gets_per_s']:,.0f} GET/s")
    if result.get("client_cpu"):
        lines.append("S3 client CPU per GET: " + ", ".join(f"{k} {v:.3f} ms" for k, v in result["client_cpu"].items()))
    shown: set[str] = set()
    for name, f in (result.get("formats") or {}).items():
        if f["path"] in shown:  # archive-mmap reads the archive's file
            continue
        shown.add(f["path"])
        lines.append(f"format {name}: {f['size_mb']:.1f} MB in {f['files']} file(s); made from the JPEGs at "
                     f"{f['make_img_per_s']:,} img/s{'' if f['made_now'] else ' (earlier, cached)'}")
    fmt_col = any(r.get("format", "jpeg") != "jpeg" for r in result["rows"])
    fw = 13 if fmt_col else 0
    head = (f"{'storage':<8}{'format':<{fw}.{fw}}{'lat':>4} {'loader':<17}{'s3 cli':<7}{'nw':>3}{'nfw':>4}{'pool':>5}{'bs':>4}{'img/s':>8}{'x torch':>8}"
            f" | {'CPU ms/img':>10}{'client':>7}{'decode':>7}{'other':>7}{'server':>7} | {'srv GET/s':>9}{'peak':>5}"
            f"{'srv%':>5}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        cli = {"botocore": "boto"}.get(r["s3_client"], r["s3_client"])
        nfw = f"{r['prefetch_shards']}sh" if r.get("prefetch_shards") else (r["num_fetch_workers"] or "-")
        base = (f"{r['storage']:<8}{r.get('format', 'jpeg'):<{fw}.{fw}}{r['latency_ms']:>4g} {r['loader']:<17}{cli:<7}"
                f"{r['num_workers']:>3}{nfw:>4}{(r['batch_pool'] or '-'):>5}{r['batch_size']:>4}")
        if r.get("status") != "ok":
            lines.append(f"{base}  {r.get('status')}"[:len(head) + 40])
            continue
        ratio = r.get("ratio_vs_torch")
        gets_rate = r["server_gets"] / r["seconds"] if r.get("server_gets") is not None else None
        lines.append(
            f"{base}{r['img_per_s']:>8.1f}{_f(ratio, '>7.2f') + ('x' if ratio is not None else ''):>8}"
            f" | {r['loader_cpu_ms_per_img']:>10.2f}{_f(r.get('client_ms_per_img'), '>7.2f'):>7}"
            f"{_f(r.get('decode_ms_per_img'), '>7.2f'):>7}{_f(r.get('other_ms_per_img'), '>7.2f'):>7}"
            f"{_f(r.get('server_cpu_ms_per_img'), '>7.3f'):>7} | {_f(gets_rate, '>9.0f'):>9}"
            f"{_f(r.get('server_peak_in_flight'), '>5d'):>5}{_f(r.get('server_core_util'), '>5.0%'):>5}")
    lines.append("s3 cli = the S3 client of the dataset: lean (ours, raw HTTP), boto (botocore/aiobotocore), crt "
                 "(s3torchconnector's own).")
    lines.append("CPU ms/img = loader processes (main + workers); client = S3 GET path (micro-benchmark), decode = "
                 "decode+transform (micro-benchmark), other = the rest (loader, collate, IPC); server = the S3 "
                 "server's own CPU. peak = most concurrent requests the server saw.")
    if fmt_col:
        lines.append("format: jpeg = one object/file per image; archive = one TAR, a ranged GET (or pread) per image "
                     "(archive-mmap: a shared mmap); shards = tar shards streamed whole (nfw = prefetch_shards, e.g. "
                     "4sh; the IterableDataset goes through our loader unchanged); memmap/hdf5 = decoded pixels; "
                     "parquet/ipc/tar = converted, original JPEG bytes. x torch = vs stock torch on the same format.")
    return "\n".join(lines)


def format_checks(checks: list[dict[str, Any]]) -> str:
    lines = []
    for c in checks:
        mark = {True: "PASS", False: "FAIL", None: "info"}[c["pass"]]
        target = ""
        if c["target"] is not None:
            target = f" (target {'<=' if 'client CPU' in c['check'] else '>='} {c['target']:g})"
        lines.append(f"[{mark}] {c['check']}: {c['value']:.3f}{target}  {c['detail']}")
    return "\n".join(lines)


def write_results(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow(r)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(result, indent=1, default=str))
    from .plots import plot_all

    return [csv_path, json_path, *plot_all(result["rows"], out_dir, result.get("config", ""))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML grid, e.g. configs/quick.yaml")
    p.add_argument("--out", default=None, help="results folder (default benchmarking/results/<name>-<time>)")
    p.add_argument("--data-root", default=str(RESULTS / "data"),
                   help="where the synthetic dataset is generated and reused (default benchmarking/results/data)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)

    from .harness import load_config, run_benchmark

    cfg = load_config(args.config)
    started = time.time()
    result = run_benchmark(cfg, Path(args.data_root), progress=not args.no_progress)
    result["wall_s"] = round(time.time() - started, 1)
    result["command"] = "python -m benchmarking.run " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(format_table(result))
    print()
    print(format_checks(result["checks"]))
    out_dir = Path(args.out) if args.out else RESULTS / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_results(result, out_dir)
    print(f"\n{len(cfg.runs)} runs in {result['wall_s']:.0f} s; wrote " + ", ".join(str(p) for p in paths))
    failed = [r for r in result["rows"] if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
