"""Converted formats vs the original JPEG folder: conversion speed and read throughput.

Generates a small ImageNet-like JPEG folder (benchmarking.make_synthetic's painter), converts it
to every converted format, then reads one shuffled epoch of each through our DataLoader with the
same transform (Resize to --shape, PILToTensor), locally and optionally from an S3 endpoint with
injected latency (benchmarking.s3_server, serving the work directory as a bucket).

    python benchmarking/bench_formats.py --images 512 --s3 --latency-ms 20

Prints one table row per source: conversion img/s, size on disk, read img/s (local, S3) and the
speed-up over reading the JPEG folder. Numbers are for this machine and this small dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concurrent_dataloader import ConcurrentDataset, DataLoader  # noqa: E402
from concurrent_dataloader.formats.converted import get_format  # noqa: E402

FORMATS = ["memmap", "hdf5", "parquet", "ipc", "tar"]


def make_folder(root: Path, images: int, classes: int, width: int, height: int, target_kb: float) -> list[tuple[str, int]]:
    from benchmarking.make_synthetic import Painter, SyntheticSpec, wnid

    spec = SyntheticSpec(train=images, val=0, classes=classes, width=width, height=height, target_kb=target_kb)
    painter = Painter(spec.validate())
    out = []
    for rel, cls in spec.train_keys():
        path = root / Path(rel).relative_to("train")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(painter.encode(cls, int(Path(rel).stem.rsplit("_", 1)[1])))
        out.append((path.relative_to(root).as_posix(), cls))
    assert all(p.split("/")[0] == wnid(c) for p, c in out)
    return out


class JpegFolder(ConcurrentDataset):
    """The baseline: the original JPEG files from any store (local or S3), decoded per sample."""

    def __init__(self, store: Any, items: list[tuple[str, int]], transform: Any) -> None:
        self.store, self.items, self.transform = store, items, transform

    def __len__(self) -> int:
        return len(self.items)

    def fetch_raw(self, index: int) -> bytes:
        return self.store.get(self.items[index][0])

    async def fetch_raw_async(self, index: int) -> bytes:
        return await self.store.aget(self.items[index][0])

    def decode(self, index: int, raw: bytes) -> Any:
        import io

        from PIL import Image

        img = Image.open(io.BytesIO(raw)).convert("RGB")
        return self.transform(img), self.items[index][1]

    def close_fetch_resources(self) -> None:
        self.store.close()

    async def aclose_fetch_resources(self) -> None:
        await self.store.aclose()


def start_s3_server(work: Path, latency_ms: float) -> tuple[subprocess.Popen, str]:
    """benchmarking.s3_server in its own process (in-process it would compete for our GIL),
    serving ``work`` as bucket ``bench``."""
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-m", "benchmarking.s3_server", "--port", "0", "--latency-ms",
                             str(latency_ms), "--bucket", f"bench={work}"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on " not in line:
        proc.kill()
        raise RuntimeError(f"S3 server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].strip()


def read_epoch(dataset: Any, args: argparse.Namespace) -> tuple[float, float]:
    """(images/second, CPU milliseconds per image) for one shuffled epoch through our DataLoader.

    CPU time is this process's (all threads; with num_workers=0 all the work is here): it
    suffers much less than wall time when other processes compete for the machine.
    """
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
                        num_fetch_workers=args.num_fetch_workers, fetch_impl=args.fetch_impl)
    with loader:
        start, cpu = time.perf_counter(), time.process_time()
        n = sum(len(y) for _, y in loader)
        rate = n / (time.perf_counter() - start)
        cpu_ms = (time.process_time() - cpu) * 1000 / n
    assert n == len(dataset)
    return rate, cpu_ms


def median_of(datasets: dict[str, Any], args: argparse.Namespace) -> dict[str, tuple[float, float, list[float]]]:
    """Median rate and CPU/image per source over ``repeats`` rounds; the sources take turns within
    each round, so a burst of load from other processes hits all of them alike."""
    import statistics

    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in datasets}
    for ds in datasets.values():  # warm-up (lazy imports, per-file metadata, page cache): not timed
        read_epoch(ds, args)
    for _ in range(args.repeats):
        for name, ds in datasets.items():
            seen[name].append(read_epoch(ds, args))
    return {name: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v), [r for r, _ in v])
            for name, v in seen.items()}


def _spread(median: float, rounds: list[float]) -> str:
    return f"{median:.0f} ({min(rounds):.0f}-{max(rounds):.0f})"


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--target-kb", type=float, default=30.0, help="average JPEG size")
    p.add_argument("--shape", type=int, nargs=2, default=(112, 112), metavar=("H", "W"),
                   help="fixed-size formats store this shape; every reader resizes to it")
    p.add_argument("--images-per-file", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (read and convert)")
    p.add_argument("--num-fetch-workers", type=int, default=16)
    p.add_argument("--fetch-impl", choices=["threaded", "asyncio"], default="threaded")
    p.add_argument("--repeats", type=int, default=3, help="rounds of read epochs (the median per source is reported)")
    p.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    p.add_argument("--s3", action="store_true", help="also read from a local S3 endpoint with injected latency")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--s3-client", choices=["botocore", "lean"], default="botocore",
                   help="S3Store (botocore/aiobotocore) or LeanS3Store (less client CPU per GET)")
    p.add_argument("--workdir", default=None, help="keep data here (default: a temporary directory)")
    p.add_argument("--json", default=None, help="also write the rows, every round's rate and the settings here")
    args = p.parse_args(argv)

    from torchvision.transforms import Compose, PILToTensor, Resize

    from concurrent_dataloader.storage import LocalStore, open_store

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_formats_"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shape = tuple(args.shape)
    transform = Compose([Resize(shape), PILToTensor()])
    try:
        t0 = time.perf_counter()
        items = make_folder(work / "src", args.images, args.classes, args.width, args.height, args.target_kb)
        print(f"generated {len(items)} JPEGs {args.width}x{args.height} ({dir_mb(work / 'src'):.1f} MB) "
              f"in {time.perf_counter() - t0:.1f}s; cpus={os.cpu_count()}", file=sys.stderr)

        rows: list[dict[str, Any]] = [{"source": "jpeg folder", "convert": None, "mb": dir_mb(work / "src")}]
        local: dict[str, Any] = {"jpeg folder": JpegFolder(LocalStore(work / "src"), items, transform)}
        for fmt in args.formats:
            spec = get_format(fmt)
            kw = {"shape": shape, "im_mode": "RGB"} if spec.fixed_size else {}
            t0 = time.perf_counter()
            spec.converter(str(work / "src"), work / fmt, args.images_per_file, args.batch_size, args.num_workers,
                           progress=False, num_fetch_workers=args.num_fetch_workers, **kw).convert()
            rows.append({"source": fmt, "convert": len(items) / (time.perf_counter() - t0), "mb": dir_mb(work / fmt)})
            local[fmt] = spec.reader(work / fmt, transform=transform)
        for row, (rate, cpu, rounds) in zip(rows, median_of(local, args).values()):
            row["local"], row["local_cpu"], row["local_rounds"] = rate, cpu, rounds

        if args.s3:
            server, endpoint = start_s3_server(work, args.latency_ms)
            opts = {"endpoint_url": endpoint, "region_name": "us-east-1",
                    "aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}
            def store(prefix: str) -> Any:
                if args.s3_client == "lean":
                    from concurrent_dataloader.storage.s3_http import LeanS3Store

                    return LeanS3Store("bench", prefix, max_pool_connections=max(64, args.num_fetch_workers), **opts)
                return open_store(f"s3://bench/{prefix}", max_pool_connections=max(64, args.num_fetch_workers), **opts)

            try:
                remote: dict[str, Any] = {"jpeg folder": JpegFolder(store("src"), items, transform)}
                for fmt in args.formats:
                    remote[fmt] = get_format(fmt).reader(f"s3://bench/{fmt}", transform=transform, store=store(fmt))
                for row, (rate, cpu, rounds) in zip(rows, median_of(remote, args).values()):
                    row["s3"], row["s3_cpu"], row["s3_rounds"] = rate, cpu, rounds
            finally:
                server.terminate()
                server.wait(timeout=10)

        cols = ["source", "convert img/s", "MB", "local img/s", "x jpeg", "local CPU ms/img"]
        if args.s3:
            cols += [f"S3 ({args.s3_client}, {args.latency_ms:g} ms) img/s", "x jpeg", "S3 CPU ms/img"]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nload average {load:.1f} on {os.cpu_count()} cpus (other processes make wall-time rates noisy; "
              "CPU ms/img is steadier)")
        print(f"{len(items)} images {args.width}x{args.height} JPEG, fixed formats at {shape[0]}x{shape[1]}, "
              f"batch {args.batch_size}, num_workers {args.num_workers}, num_fetch_workers {args.num_fetch_workers}, "
              f"{args.fetch_impl}, median of {args.repeats} rounds\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" for _ in cols) + "|")
        for row in rows:
            cells = [row["source"], "-" if row["convert"] is None else f"{row['convert']:.0f}", f"{row['mb']:.1f}",
                     _spread(row["local"], row["local_rounds"]), f"{row['local'] / rows[0]['local']:.2f}",
                     f"{row['local_cpu']:.2f}"]
            if args.s3:
                cells += [_spread(row["s3"], row["s3_rounds"]), f"{row['s3'] / rows[0]['s3']:.2f}", f"{row['s3_cpu']:.2f}"]
            print("| " + " | ".join(cells) + " |")
        if args.json:
            from concurrent_dataloader._atomic import atomic_write_bytes

            settings = {k: v for k, v in vars(args).items() if k not in ("json", "workdir")}
            atomic_write_bytes(args.json, json.dumps({"settings": settings, "load_average": load,
                                                      "rows": rows}, indent=1).encode())
            print(f"\nwrote {args.json}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
