"""Tiny end-to-end run of every installed peer against the benchmark S3 server; prints a table.

    python -m benchmarking.peers.smoke                      # 64 images, 2 workers, all peers
    python -m benchmarking.peers.smoke --latency-ms 50 --peers webdataset mosaic

Starts ``benchmarking.s3_server`` (a child process, with the given latency), writes synthetic JPEGs
(``benchmarking.make_synthetic``) into a bucket, then runs ``prepare`` and ``run`` of each peer
through its venv (``benchmarking.peers.run_peer``). A check, not a benchmark: the numbers are from a
tiny dataset on a shared machine. Exits non-zero when an installed peer fails or an epoch does not
deliver every image exactly once; peers that are not installed are listed as such.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarking.peers import NOT_INSTALLED, PEERS, peer_python, run_peer

BUCKET = "peers-smoke"
CREDS = {"region": "us-east-1", "access_key": "smoke-access", "secret_key": "smoke-secret-key"}


def _dataset(root: Path, endpoint: str, images: int) -> list[dict[str, Any]]:
    from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
    from concurrent_dataloader.storage.s3_http import LeanS3Store

    classes = max(1, min(8, images // 4))
    store = LeanS3Store(BUCKET, endpoint_url=endpoint, region_name=CREDS["region"],
                        aws_access_key_id=CREDS["access_key"], aws_secret_access_key=CREDS["secret_key"])
    try:
        make_synthetic(root, SyntheticSpec(train=images, val=0, classes=classes), store=store, progress=False)
    finally:
        store.close()
    keys = json.loads((root / "index-s3-train.json").read_text())
    classes_map = json.loads((root / "imagenet-train-classes.json").read_text())
    return [{"key": k, "label": classes_map[k.split("/")[1]]["id"]} for k in keys]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.peers.smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--shuffle-buffer", type=int, default=64)
    p.add_argument("--decoder", choices=("pil", "torchvision"), default="pil")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per prepare/run")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--verbose", action="store_true", help="show the runners' logs")
    args = p.parse_args(argv)

    from benchmarking.s3_server import ServerProcess

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peers-smoke-") as tmp:
        work = Path(args.workdir or tmp)
        with ServerProcess(latency_ms=args.latency_ms, buckets={BUCKET: None}) as server:
            index = _dataset(work / "data", server.endpoint_url, args.images)
            for peer in args.peers:
                row: dict[str, Any] = {"peer": peer}
                rows.append(row)
                if peer_python(peer) is None:
                    row["status"] = "not installed"
                    continue
                spec = {"endpoint": server.endpoint_url, "bucket": BUCKET, **CREDS, "images_prefix": "",
                        "index": index, "workdir": str(work / peer), "peer_prefix": f"peers/{peer}/",
                        "shard_size": args.shard_size, "num_workers": args.workers, "batch_size": args.batch_size,
                        "num_images": 0, "shuffle_buffer": args.shuffle_buffer, "seed": 0,
                        "decoder": args.decoder, "image_size": 224, "images_dir": str(work / "data")}
                logs = None if args.verbose else subprocess.DEVNULL
                t0 = time.perf_counter()
                rc, prep = run_peer(peer, "prepare", spec, timeout=args.timeout, stderr=logs)
                row["prepare_s"] = round(time.perf_counter() - t0, 1)
                if rc:
                    row["status"] = "not installed" if rc == NOT_INSTALLED else f"prepare failed: {prep.get('error')}"
                    continue
                server.reset_stats()
                rc, res = run_peer(peer, "run", spec, timeout=args.timeout, stderr=logs)
                stats = server.stats()
                if rc:
                    row["status"] = "not installed" if rc == NOT_INSTALLED else f"run failed: {res.get('error')}"
                    continue
                row.update(version=res.get("version"), images=res["images"], distinct=res.get("distinct"),
                           wall_s=res["wall_s"], first_batch_s=res["first_batch_s"], sampling=res.get("sampling"),
                           gets=stats.get("gets"))
                steady = res["wall_s"] - res["first_batch_s"]
                row["img_s"] = round((res["images"] - args.batch_size) / steady, 1) if steady > 0 else None
                ok = res["images"] == args.images and res.get("distinct") == args.images
                row["status"] = "ok" if ok else f"WRONG: {res['images']} images, {res.get('distinct')} distinct"
    _print_table(rows)
    failed = [r for r in rows if r["status"] not in ("ok", "not installed")]
    return 1 if failed else 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["peer", "version", "status", "images", "distinct", "prepare_s", "first_batch_s", "wall_s", "img_s",
            "gets", "sampling"]
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "" for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    sys.exit(main())
