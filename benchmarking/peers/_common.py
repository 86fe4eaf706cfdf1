"""What every peer runner shares: the spec, the recipe, one timed epoch, the JSON line, exit codes.

A runner module calls :func:`main` with its name, the import that proves it is installed, and its
``prepare`` and ``run`` functions. This module imports only the standard library at import time;
torch, torchvision, PIL and boto3 (all from our lock, seen through ``--system-site-packages``) are
imported when used, so a missing peer is reported as "not installed" before anything heavy loads.

Why prepare goes through a local directory: each peer's own writer (ShardWriter, ``optimize()``,
MDSWriter) writes its format to ``workdir``, and the files are then uploaded with plain PutObject.
The writers' own S3 uploads use multipart uploads for large files, which the benchmark server does
not implement; the bytes in the bucket are the same either way.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["Spec", "SpecError", "Recipe", "main", "s3_client", "download_images", "upload_dir", "prepared_tag",
           "is_prepared", "mark_prepared", "timed_epoch", "fresh_dir", "log", "write_order"]

OK, FAILED, USAGE, NOT_INSTALLED = 0, 1, 2, 3
_REQUIRED = ("endpoint", "bucket", "access_key", "secret_key", "index", "workdir", "peer_prefix",
             "num_workers", "batch_size")


class SpecError(ValueError):
    """The spec file is missing a field or has a bad value."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Spec:
    endpoint: str
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    index: Any
    workdir: str
    peer_prefix: str
    num_workers: int
    batch_size: int
    region: str = "us-east-1"
    images_prefix: str = ""
    shard_size: int = 256
    num_images: int = 0
    shuffle_buffer: int = 1000
    seed: int = 0
    decoder: str = "pil"
    image_size: int = 224
    images_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _entries: list[tuple[str, int]] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Spec":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SpecError(f"cannot read spec {path}: {e}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"spec {path} is not a JSON object")
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise SpecError(f"spec {path} lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_") and f != "extra"}
        spec = cls(**{k: v for k, v in raw.items() if k in known},
                   extra={k: v for k, v in raw.items() if k not in known})
        return spec.validate()

    def validate(self) -> "Spec":
        for name in ("num_workers", "batch_size", "shard_size", "num_images", "shuffle_buffer", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise SpecError(f"{name} must be an integer >= 0, got {value!r}")
        if self.batch_size < 1 or self.shard_size < 1 or self.image_size < 1:
            raise SpecError("batch_size, shard_size and image_size must be >= 1")
        if self.decoder not in ("pil", "torchvision"):
            raise SpecError(f"decoder must be 'pil' or 'torchvision', got {self.decoder!r}")
        if not self.peer_prefix.endswith("/") or self.peer_prefix.startswith("/"):
            raise SpecError(f"peer_prefix must be a relative key prefix ending with '/', got {self.peer_prefix!r}")
        self.endpoint = self.endpoint.rstrip("/")
        return self

    # -- the images ---------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, int]]:
        """(object key, label) of the images this run uses, in index order."""
        if self._entries is None:
            index = self.index
            if isinstance(index, str):
                try:
                    index = json.loads(Path(index).read_text())
                except (OSError, ValueError) as e:
                    raise SpecError(f"cannot read index file {self.index}: {e}") from None
            if not isinstance(index, list) or not index:
                raise SpecError("index must be a non-empty list of {\"key\", \"label\"} objects")
            out = []
            for n, entry in enumerate(index):
                try:
                    out.append((self.images_prefix + str(entry["key"]), int(entry["label"])))
                except (TypeError, KeyError, ValueError):
                    raise SpecError(f"index entry {n} is not {{\"key\": str, \"label\": int}}: {entry!r}") from None
            if self.num_images:
                if self.num_images > len(out):
                    raise SpecError(f"num_images={self.num_images} but the index has {len(out)} entries")
                out = out[: self.num_images]
            self._entries = out
        return self._entries

    def s3_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def http_url(self, key: str) -> str:
        from urllib.parse import quote

        return f"{self.endpoint}/{self.bucket}/{quote(key)}"

    def workpath(self, *parts: str) -> Path:
        return Path(self.workdir).joinpath(*parts)

    def set_aws_env(self) -> None:
        """Credentials for clients that read the environment (CRT, boto3 inside a peer)."""
        os.environ["AWS_ACCESS_KEY_ID"] = self.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        os.environ["AWS_DEFAULT_REGION"] = self.region
        os.environ["AWS_REGION"] = self.region
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)


# ---------------------------------------------------------------------------------------------
# The recipe: decode + RandomResizedCrop + flip + ToTensor, as the harness does for our loaders
# ---------------------------------------------------------------------------------------------

class Recipe:
    """bytes of a JPEG -> float tensor [3, size, size]. Picklable (forked and spawned workers).

    ``pil``: PIL decode, then torchvision's RandomResizedCrop, RandomHorizontalFlip, ToTensor.
    ``torchvision``: ``torchvision.io.decode_jpeg`` to uint8, the v2 crop and flip on uint8, then
    float in [0, 1].
    """

    def __init__(self, decoder: str = "pil", size: int = 224) -> None:
        self.decoder = decoder
        self.size = size
        self._fn: Callable[[bytes], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "size": self.size, "_fn": None}

    def _build(self) -> Callable[[bytes], Any]:
        if self.decoder == "pil":
            import torchvision.transforms as T
            from PIL import Image

            tf = T.Compose([T.RandomResizedCrop(self.size), T.RandomHorizontalFlip(), T.ToTensor()])

            def fn(data: bytes) -> Any:
                with Image.open(io.BytesIO(data)) as img:
                    return tf(img.convert("RGB"))
        else:
            import torch
            from torchvision.io import ImageReadMode, decode_jpeg
            from torchvision.transforms import v2

            tf = v2.Compose([v2.RandomResizedCrop(self.size, antialias=True), v2.RandomHorizontalFlip(),
                             v2.ToDtype(torch.float32, scale=True)])

            def fn(data: bytes) -> Any:
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return tf(decode_jpeg(raw, mode=ImageReadMode.RGB))
        return fn

    def __call__(self, data: bytes) -> Any:
        if self._fn is None:
            self._fn = self._build()
        return self._fn(data)


# ---------------------------------------------------------------------------------------------
# Prepare helpers: read the images, upload a directory, the "already prepared" marker
# ---------------------------------------------------------------------------------------------

def s3_client(spec: Spec, pool: int = 32) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=spec.endpoint, region_name=spec.region,
                        aws_access_key_id=spec.access_key, aws_secret_access_key=spec.secret_key,
                        config=Config(max_pool_connections=pool, s3={"addressing_style": "path"},
                                      retries={"max_attempts": 5, "mode": "standard"}))


def fresh_dir(path: Path) -> Path:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def download_images(spec: Spec, client: Any, threads: int = 16) -> list[tuple[Path, int]]:
    """The run's JPEGs as local files; (local path, label) in index order.

    With ``images_dir`` in the spec (a local copy, image ``k`` of the index at ``images_dir/k``)
    they are read from there; otherwise they are downloaded once to ``workdir/src``.
    """
    entries = spec.entries()
    if spec.images_dir:
        local = [(Path(spec.images_dir) / key[len(spec.images_prefix):], label) for key, label in entries]
        missing = [str(p) for p, _ in local if not p.is_file()]
        if missing:
            raise SpecError(f"images_dir lacks {len(missing)} images, e.g. {missing[0]}")
        return local
    root = spec.workpath("src")

    def one(item: tuple[str, int]) -> tuple[Path, int]:
        key, label = item
        path = root / key
        if not path.exists():
            data = client.get_object(Bucket=spec.bucket, Key=key)["Body"].read()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path, label

    with cf.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, entries))


def upload_dir(spec: Spec, client: Any, local: Path, threads: int = 8) -> tuple[int, int]:
    """PutObject every file under ``local`` to ``peer_prefix`` + its relative path; (objects, bytes)."""
    files = sorted(p for p in local.rglob("*") if p.is_file())

    def one(path: Path) -> int:
        data = path.read_bytes()
        client.put_object(Bucket=spec.bucket, Key=spec.peer_prefix + path.relative_to(local).as_posix(), Body=data)
        return len(data)

    with cf.ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(one, files))
    return len(sizes), sum(sizes)


# Tar shards (WebDataset layout), shared by the webdataset and s3torch_iterable peers.
SHARD_PATTERN = "shard-%06d.tar"


def shard_count(spec: Spec) -> int:
    """Shards of ``spec.shard_size`` images that hold the whole dataset."""
    return -(-len(spec.entries()) // spec.shard_size)


def write_order(spec: Spec) -> list[int]:
    """The order the shard writers store the images in: a seeded permutation of the index.

    The peers' docs advise shuffling before writing shards when the source is ordered (ImageNet
    and our synthetic set are class by class); a shard reader's shuffle buffer cannot undo it.
    """
    import random

    order = list(range(len(spec.entries())))
    random.Random(spec.seed).shuffle(order)
    return order


def prepared_tag(spec: Spec, peer: str, version: str) -> dict[str, Any]:
    entries = spec.entries()
    return {"peer": peer, "version": version, "images": len(entries), "shard_size": spec.shard_size,
            "first": entries[0][0], "last": entries[-1][0], "write_order": f"shuffled, seed {spec.seed}"}


def _marker(spec: Spec, peer: str) -> str:
    return f"{spec.peer_prefix}_prepared-{peer}.json"


def is_prepared(spec: Spec, client: Any, tag: dict[str, Any], peer: str | None = None) -> dict[str, Any] | None:
    """The marker written by an earlier prepare of the same data, or None."""
    try:
        body = client.get_object(Bucket=spec.bucket, Key=_marker(spec, peer or tag["peer"]))["Body"].read()
        found = json.loads(body)
    except Exception:  # noqa: BLE001 - absent, unreadable or not JSON: prepare again
        return None
    want = {k: v for k, v in tag.items() if k not in ("peer", "version")}
    return found if all(found.get(k) == v for k, v in want.items()) else None


def mark_prepared(spec: Spec, client: Any, tag: dict[str, Any], **info: Any) -> None:
    """Written last, so its presence means the upload is complete."""
    client.put_object(Bucket=spec.bucket, Key=_marker(spec, tag["peer"]),
                      Body=json.dumps({**tag, **info}).encode())


# ---------------------------------------------------------------------------------------------
# One timed epoch
# ---------------------------------------------------------------------------------------------

def timed_epoch(build: Callable[[], Iterable[Any]]) -> dict[str, Any]:
    """Build the dataset + loader (counted: index downloads are part of the cost) and drain one epoch.

    Batches are ``(images, labels, indices)``: ``indices`` are positions in the spec's index, so
    ``distinct`` (how many different images came) checks that the epoch delivered each one once.
    """
    t0 = time.perf_counter()
    loader = build()
    images = batches = 0
    first = t_first = None
    seen: set[int] = set()
    arrivals: list[tuple[float, int]] = []  # (time.time(), images so far) per batch: the harness's steady window
    for batch in loader:
        if first is None:
            first = time.perf_counter() - t0
            t_first = time.time()
        labels, indices = batch[1], batch[2]
        images += len(labels)
        batches += 1
        arrivals.append((round(time.time(), 4), images))
        seen.update(int(i) for i in indices)
    wall = time.perf_counter() - t0
    t_end = time.time()
    close = getattr(loader, "close", None)
    if callable(close):
        close()
    return {"images": images, "distinct": len(seen), "batches": batches, "wall_s": round(wall, 4),
            "first_batch_s": round(first if first is not None else wall, 4),
            "t_first_batch": t_first if t_first is not None else t_end, "t_end": t_end, "t_batches": arrivals}


def loader_kwargs(spec: Spec) -> dict[str, Any]:
    """DataLoader settings every peer shares (the spec's batch size and workers; torch defaults otherwise)."""
    kw: dict[str, Any] = {"num_workers": spec.num_workers}
    if spec.num_workers:
        kw["prefetch_factor"] = 2  # torch's default, written out so `settings` shows it
    return kw


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _scrub(text: str, spec: Spec | None) -> str:
    if spec is not None:
        for secret in (spec.secret_key, spec.access_key):
            if secret and len(secret) >= 4:  # a 1-letter test key would blank out every such letter
                text = text.replace(secret, "***")
    return text


def main(peer: str, *, module: str, dist: str, argv: list[str] | None = None) -> int:
    """``python -m benchmarking.peers.<peer> prepare|run|version --spec SPEC.json``.

    ``prepare`` and ``run`` are taken from ``benchmarking.peers.<peer>`` imported by name (not from
    ``__main__``), so the classes a runner hands to its DataLoader pickle under an importable name
    for spawned or forkserver workers.
    """
    p = argparse.ArgumentParser(prog=f"python -m benchmarking.peers.{peer}")
    p.add_argument("action", choices=("prepare", "run", "version"))
    p.add_argument("--spec", help="SPEC.json written by the harness (see benchmarking/peers/README.md)")
    args = p.parse_args(argv)
    try:
        __import__(module)
        from importlib.metadata import version as _version

        version = _version(dist)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install that fails on import
        log(f"{peer}: cannot import {module}: {type(e).__name__}: {e}")
        _emit({"error": "not installed", "peer": peer})
        return NOT_INSTALLED
    if args.action == "version":
        _emit({"peer": peer, "version": version})
        return OK
    if not args.spec:
        p.error("--spec is required")
    spec = None
    try:
        spec = Spec.load(args.spec)
        spec.entries()
    except SpecError as e:
        _emit({"error": str(e), "peer": peer})
        return USAGE
    spec.set_aws_env()
    Path(spec.workdir).mkdir(parents=True, exist_ok=True)
    try:
        import torch

        torch.set_num_threads(1)  # as in DataLoader workers: no spinning OpenMP threads on a shared box
        import importlib

        runner = importlib.import_module(f"benchmarking.peers.{peer}")
        t0 = time.perf_counter()
        result = getattr(runner, args.action)(spec, version)
        if args.action == "prepare":
            result.setdefault("prepare_s", round(time.perf_counter() - t0, 3))
    except Exception as e:  # noqa: BLE001 - the harness needs the reason as JSON, not a traceback
        log(_scrub(traceback.format_exc(), spec))
        _emit({"error": _scrub(f"{type(e).__name__}: {e}", spec), "peer": peer})
        return FAILED
    _emit({"peer": peer, "version": version, **result})
    return OK
