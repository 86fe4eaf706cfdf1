"""Upload a local directory tree to ``s3://bucket/prefix`` with many concurrent PUTs.

    python -m concurrent_dataloader.tools.upload scratch/imagenet/train s3://my-bucket/imagenet/train \\
        --workers 32 --endpoint-url http://127.0.0.1:9000

Object keys are ``<prefix>/<path relative to the directory>``. Transient S3 errors are retried
(with backoff); a file that still fails is reported at the end and the exit code is 1, but the
other files are still uploaded.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
from pathlib import Path

from tqdm import tqdm

from ..datasets.cli import add_s3_arguments, s3_options_from_args

__all__ = ["main", "upload_tree"]


def _files(root: Path) -> list[tuple[Path, str]]:
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            out.append((path, path.relative_to(root).as_posix()))
    return out


def upload_tree(root: str | os.PathLike, url: str, *, workers: int = 32, skip_existing: bool = False,
                create_bucket: bool = False, progress: bool = True, **s3_options) -> tuple[int, list[str]]:
    """Upload every file under ``root``; returns (files uploaded, error messages)."""
    from ..storage.s3 import S3Store, parse_s3_url

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source directory {root} does not exist")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    bucket, prefix = parse_s3_url(url)
    # NOTE: one botocore client shared by all upload threads; its pool must hold one connection per thread.
    s3_options = dict(s3_options, max_pool_connections=max(workers, s3_options.get("max_pool_connections", 0)))
    store = S3Store(bucket, prefix, **s3_options)
    try:
        if create_bucket:
            client = store.client
            try:
                client.head_bucket(Bucket=bucket)
            except client.exceptions.ClientError:
                client.create_bucket(Bucket=bucket)
        store.check()
        files = _files(root)
        if skip_existing:
            existing = set(store.list())
            files = [(p, k) for p, k in files if k not in existing]
        errors: list[str] = []
        done = 0
        total_bytes = sum(p.stat().st_size for p, _ in files)
        with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"uploading to {url}",
                  disable=not progress) as bar, cf.ThreadPoolExecutor(workers, thread_name_prefix="upload") as pool:
            pending: dict[cf.Future, tuple[Path, str]] = {}
            todo = iter(files)

            def put(path: Path, key: str) -> int:
                data = path.read_bytes()  # read in the worker thread: only `workers` files in memory at once
                store.put(key, data)
                return len(data)

            def settle(fut: cf.Future) -> None:
                nonlocal done
                path, key = pending.pop(fut)
                try:
                    bar.update(fut.result())
                    done += 1
                except Exception as exc:  # keep going; report every failure at the end
                    errors.append(f"{path} -> {store.describe(key)}: {type(exc).__name__}: {exc}")

            # NOTE: a bounded window of submitted uploads keeps memory flat for millions of files.
            for path, key in todo:
                while len(pending) >= 4 * workers:
                    finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        settle(fut)
                pending[pool.submit(put, path, key)] = (path, key)
            for fut in list(cf.as_completed(list(pending))):
                settle(fut)
        return done, errors
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m concurrent_dataloader.tools.upload",
                                     description="Upload a local directory tree to s3://bucket/prefix concurrently.")
    parser.add_argument("source", help="local directory")
    parser.add_argument("target", help="s3://bucket/prefix")
    parser.add_argument("--workers", type=int, default=32, help="concurrent uploads (default 32)")
    parser.add_argument("--skip-existing", action="store_true", help="skip keys that already exist in the bucket")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_s3_arguments(parser)
    args = parser.parse_args(argv)
    if not args.target.startswith("s3://"):
        parser.error(f"target must be an s3:// URL, got {args.target!r}")
    try:
        done, errors = upload_tree(args.source, args.target, workers=args.workers, skip_existing=args.skip_existing,
                                   create_bucket=args.create_bucket, progress=not args.no_progress,
                                   **s3_options_from_args(args, max_pool_connections=args.workers))
    except (OSError, ValueError) as exc:
        print(f"upload: error: {exc}", file=sys.stderr)
        return 1
    print(f"uploaded {done} file(s) to {args.target}", file=sys.stderr)
    if errors:
        print(f"upload: {len(errors)} file(s) failed:", file=sys.stderr)
        for line in errors[:20]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
