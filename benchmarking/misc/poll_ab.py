"""Does measuring a loader slow it down? The harness's PSS polling, A/B, interleaved.

``python -m benchmarking.misc.poll_ab --config configs/peers.yaml --out docs/results/poll_ab.json``

Runs two points of the config (ours asyncio with 2 workers, stock torch with 32, S3 at 50 ms, the
PIL recipe) through the harness's own measurement (``_Session.measure``), each round once per PSS
polling interval, interleaved, and prints img/s median (min-max) per point and interval. It exists
because polling PSS at 20 Hz (``/proc/<pid>/smaps_rollup``, which walks the page tables under the
process's memory-map lock) slowed the loaders it measured; see
NOTE [ Outside measurement ] in ``benchmarking/harness/measure.py``. Exit code as the harness's
``--check``: 1 when the default interval costs either loader more than ``--tolerance`` of its img/s
in every round, 3 when that is inconclusive (some rounds do, some do not), 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# (name, PSS polling interval): "none" reads no PSS at all, the reference
INTERVALS: list[tuple[str, float | None]] = [("none", None), ("0.05 s", 0.05), ("0.5 s (default)", 0.5)]


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from benchmarking.harness.config import RunSpec, load_config
    from benchmarking.harness.grid import BUCKET, _Session
    from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
    from benchmarking.s3_server import ServerProcess

    p = argparse.ArgumentParser(prog="python -m benchmarking.misc.poll_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/peers.yaml", help="dataset, server and defaults come from here")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--data-root", default="benchmarking/results/data")
    p.add_argument("--tolerance", type=float, default=0.05, help="allowed img/s loss of the default interval")
    p.add_argument("--out", default=None, help="JSON result file")
    args = p.parse_args(argv)

    cfg = load_config(args.config)
    base = dict(storage="s3", latency_ms=args.latency_ms, transform="realistic", decoder="pil", s3_client="lean",
                batch_size=32, prefetch_factor=2, num_fetch_workers=32, batch_pool=4)
    points = [RunSpec(loader=loader, num_workers=workers, **base).validate().normalized()
              for loader, workers in (("ours-asyncio", 2), ("torch", 32))]
    ds = dict(cfg.dataset)
    synth = SyntheticSpec(**{**ds, "seed": cfg.seed})
    data_dir = Path(args.data_root) / (f"synthetic-{synth.train}x{synth.width}x{synth.height}-{synth.classes}c-"
                                       f"{synth.target_kb:g}kb-s{synth.seed}")
    manifest = make_synthetic(data_dir, synth, progress=True)
    server = ServerProcess(buckets={BUCKET: data_dir}, seed=cfg.seed)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {s.loader: {n: [] for n, _ in INTERVALS} for s in points}
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    try:
        session = _Session(cfg, data_dir, manifest, {}, server, print)
        bar = tqdm(total=args.rounds * len(points) * len(INTERVALS), desc="poll A/B", unit="run")
        for r in range(args.rounds):
            for spec in points:
                for name, interval in INTERVALS:
                    session.cfg = dataclasses.replace(cfg, pss_poll_s=interval)
                    row = session.measure(spec, r)
                    if row.get("status") != "ok":
                        raise RuntimeError(f"{spec.loader} with PSS every {name}: {row.get('status')}")
                    results[spec.loader][name].append({k: row[k] for k in ("img_per_s", "peak_pss_mb",
                                                                          "loader_cpu_ms_per_img", "load_avg")})
                    bar.update(1)
        bar.close()
    finally:
        server.stop()

    # Each interval against no PSS polling, paired per round as the harness's targets are. The
    # default interval's cost is a target with the harness's verdicts (checks.py): FAIL when every
    # round loses more than the tolerance, PASS when none does, otherwise inconclusive.
    verdicts: list[str] = []
    summary: dict[str, Any] = {}
    print(f"\nimg/s, median (min-max) of {args.rounds} interleaved rounds, and img/s paired against 'none' "
          f"(median, per-round range); S3 at {args.latency_ms:g} ms, {manifest.get('images', synth.train)} JPEGs")
    for loader, by in results.items():
        summary[loader] = {}
        for name, _ in INTERVALS:
            ips = [x["img_per_s"] for x in by[name]]
            ratios = [x["img_per_s"] / n["img_per_s"] for x, n in zip(by[name], by["none"])]
            pss = statistics.median(x["peak_pss_mb"] for x in by[name])
            summary[loader][name] = {"img_per_s": statistics.median(ips), "min": min(ips), "max": max(ips),
                                     "vs_none": statistics.median(ratios), "vs_none_rounds": ratios,
                                     "peak_pss_mb": pss}
            print(f"{loader:<14} PSS every {name:<16} {statistics.median(ips):5.0f} ({min(ips):.0f}-{max(ips):.0f}) img/s"
                  f"   {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                  + (f"   peak PSS {pss:.0f} MB" if name != "none" else ""))
        rounds = summary[loader]["0.5 s (default)"]["vs_none_rounds"]
        floor = 1 - args.tolerance
        verdict = "FAIL" if all(r < floor for r in rounds) else "PASS" if all(r >= floor for r in rounds) \
            else "inconclusive"
        summary[loader]["verdict"] = verdict
        verdicts.append(verdict)
        print(f"{loader:<14} the default interval keeps >= {floor:.2f}x of the img/s without PSS polling: {verdict}")
    doc = {"command": "python -m benchmarking.misc.poll_ab " + " ".join(argv if argv is not None else sys.argv[1:]),
           "config": args.config, "rounds": args.rounds, "latency_ms": args.latency_ms, "cpu_count": os.cpu_count(),
           "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
           "seconds": round(time.perf_counter() - t0, 1), "intervals": [n for n, _ in INTERVALS],
           "runs": results, "summary": summary, "tolerance": args.tolerance}
    if args.out:
        from concurrent_dataloader._atomic import atomic_write_bytes

        atomic_write_bytes(Path(args.out), (json.dumps(doc, indent=1) + "\n").encode())
        print(f"wrote {args.out}")
    return 1 if "FAIL" in verdicts else 3 if "inconclusive" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
