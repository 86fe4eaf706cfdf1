"""``python -m benchmarking.run --config configs/quick.yaml``: the loader benchmark, one command.

Prints a table (per grid point: img/s as the median of interleaved rounds with min and max, ratio to
stock torch in the same run, sampling, peak PSS, time to first batch, CPU ms per image, the server's
GET/s) and the target checks (PASS / FAIL / inconclusive); writes ``results.csv``, ``results.json`` and
PNG plots (among them the frontier: img/s against peak PSS) to ``benchmarking/results/<name>-<time>/``
(git-ignored). ``--check`` turns the targets into the exit code. See ``docs/benchmarks.md``.
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

_COLUMNS = ["storage", "format", "latency_ms", "loader", "decoder", "transform", "s3_client", "num_workers",
            "num_fetch_workers", "batch_pool", "prefetch_shards", "batch_size", "prefetch_factor", "images", "images_read", "status",
            "rounds_ok", "sampling", "img_per_s", "img_per_s_min", "img_per_s_max", "img_per_s_rounds",
            "epoch_img_per_s", "ratio_vs_torch", "peak_pss_mb", "first_batch_s", "loader_cpu_ms_per_img",
            "client_ms_per_img", "decode_ms_per_img", "other_ms_per_img", "server_gets_per_s", "server_cpu_ms_per_img",
            "server_cpu_ms_per_get", "server_core_util", "server_gets", "server_peak_in_flight", "ceiling_gets_per_s",
            "cpu_whole_process", "seconds"]


def _f(v: Any, fmt: str, dash: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return dash
    return format(v, fmt)


def _what(r: dict[str, Any]) -> str:
    extra = [x for x in (r.get("format") if r.get("format") not in ("jpeg", "peer") else None,
                         r.get("decoder") if r.get("decoder", "pil") != "pil" else None,
                         r.get("transform") if r.get("transform", "realistic") != "realistic" else None,
                         "boto" if r.get("s3_client") == "botocore" else None) if x]
    return r["loader"] + (f" [{','.join(extra)}]" if extra else "")


def _short_sampling(s: str | None) -> str:
    if not s:
        return "-"
    return s.replace("exact global shuffle", "global").replace("shuffle buffer", "buffer").replace("shard shuffle", "shards")


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
    if result.get("decode_ms"):
        lines.append("decode+transform CPU per image: " + ", ".join(f"{k} {v:.2f} ms"
                                                                   for k, v in result["decode_ms"].items()))
    shown: set[str] = set()
    for name, f in (result.get("formats") or {}).items():
        if f["path"] in shown:  # archive-mmap reads the archive's file
            continue
        shown.add(f["path"])
        lines.append(f"format {name}: {f['size_mb']:.1f} MB in {f['files']} file(s); made from the JPEGs at "
                     f"{f['make_img_per_s']:,} img/s{'' if f['made_now'] else ' (earlier, cached)'}")
    head = (f"{'storage':<8}{'lat':>4} {'loader':<30}{'nw':>3}{'nfw':>5}{'bs':>4} {'sampling':<17}"
            f"{'img/s':>7} {'(min-max)':<11}{'x torch':>8}{'PSS MB':>8}{'1st s':>6}{'CPU/img':>8}{'decode':>7}"
            f"{'GET/s':>7}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        nfw = f"{r['prefetch_shards']}sh" if r.get("prefetch_shards") else (r.get("num_fetch_workers") or "-")
        base = (f"{r['storage']:<8}{r['latency_ms']:>4g} {_what(r):<30.30}{r['num_workers']:>3}{nfw:>5}"
                f"{r['batch_size']:>4} ")
        if r.get("status") != "ok":
            lines.append(f"{base}{str(r.get('status'))[:100]}")
            continue
        ratio = r.get("ratio_vs_torch")
        spread = f"({r['img_per_s_min']:.0f}-{r['img_per_s_max']:.0f})"
        lines.append(
            f"{base}{_short_sampling(r.get('sampling')):<17.17}{r['img_per_s']:>7.0f} {spread:<11}"
            f"{_f(ratio, '>7.2f') + ('x' if ratio is not None else ''):>8}{_f(r.get('peak_pss_mb'), '>8.0f'):>8}"
            f"{_f(r.get('first_batch_s'), '>6.1f'):>6}{_f(r.get('loader_cpu_ms_per_img'), '>8.2f'):>8}"
            f"{_f(r.get('decode_ms_per_img'), '>7.2f'):>7}{_f(r.get('server_gets_per_s'), '>7.0f'):>7}")
    lines.append(f"img/s = median of {result.get('repeats', '?')} interleaved rounds (min-max), steady part of one "
                 "epoch (from the end of the first round of k workers' batches to the last); x torch = vs stock torch at the same workers, storage and latency; "
                 "PSS MB = peak PSS of the loader's whole process tree (in runs of their own: reading PSS "
                 "slows a loader); 1st s = time to first batch; CPU/img = CPU "
                 "ms per image of the process tree (steady part); decode = decode+transform micro-benchmark; GET/s "
                 "= the server's. sampling: global = exact global shuffle; buffer N = shuffle buffer; shards = shard "
                 "order shuffle + buffer.")
    return "\n".join(lines)


def format_checks(checks: list[dict[str, Any]]) -> str:
    lines = []
    for c in checks:
        target = f" (target {c.get('op', '>=')} {c['target']:g})" if c.get("target") is not None else ""
        value = "-" if c.get("value") is None else f"{c['value']:.3f}"
        lines.append(f"[{c.get('status', 'info')}] {c['check']}: {value}{target}  {c.get('detail', '')}")
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
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a target fails or a row it needs is missing or errored in any round, 3 when "
                        "none failed but some are inconclusive (margin inside the rounds' spread), 0 when all pass")
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
    if args.check:
        from .harness import exit_code

        rc = exit_code(result["checks"])
        print({0: "--check: every target passes", 1: "--check: a target failed or a row it needs is missing/errored",
               3: "--check: no target failed, but some are inconclusive"}[rc])
        return rc
    failed = [r for r in result["rows"] if str(r.get("status", "")).startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
