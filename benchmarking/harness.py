"""The throughput benchmark: every loader side by side on the same data, storage and latency.

One run of :func:`run_benchmark` (driven by a YAML config, see ``configs/quick.yaml``):

1. writes (or reuses) a synthetic ImageNet-like dataset (:mod:`benchmarking.make_synthetic`),
   and the storage formats the grid asks for, made once from it and cached next to it
   (:func:`prepare_formats`);
2. starts our fast S3 server (:mod:`benchmarking.s3_server`) in its own process, serving that
   folder as a bucket (and the formats from an in-memory bucket), and measures its GET/s
   ceiling and each S3 client's CPU per GET;
3. measures decode+transform CPU per image;
4. for every point of the grid (storage x format x latency x loader x workers x fetch settings
   x batch size) builds the dataset and loader, iterates a warm-up and a timed window, and
   records img/s plus the CPU spent per image by the loader processes and by the server;
5. returns the rows; :mod:`benchmarking.run` prints the table, writes CSV/JSON and plots.

Loaders (all over the *same* dataset object, except s3torchconnector which brings its own):

``torch``            stock ``torch.utils.data.DataLoader``
``ours-threaded``    our DataLoader, ``fetch_impl="threaded"``
``ours-asyncio``     our DataLoader, ``fetch_impl="asyncio"``
``torch+getitems``   stock DataLoader over ``concurrent_getitems(dataset)``
``s3torchconnector`` stock DataLoader over ``s3torchconnector.S3MapDataset`` on the same endpoint

Formats (the same images, the same transform; see :data:`FORMATS`):

``jpeg``             one object / file per image (``ImageDataset``)
``archive``          one TAR, ``ImageArchive``: a positioned read (local) or a ranged GET (S3) per image
``archive-mmap``     the same TAR, local, ``data_in_memory=True`` (a shared read-only mmap)
``shards``           tar shards streamed by ``TarShardDataset`` (an IterableDataset: our loader
                     passes it through to torch; its concurrency is ``prefetch_shards``)
``memmap`` ``hdf5``  converted, decoded pixels of one fixed shape (no JPEG decode when read)
``parquet`` ``ipc`` ``tar``  converted, the original JPEG bytes

NOTE (processes): DataLoader workers are forked from this process; the server and the client
micro-benchmarks run in separate processes so their CPU neither competes for our GIL nor
pollutes the loader's CPU figures.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

__all__ = ["LOADERS", "STORAGES", "FORMATS", "RunSpec", "BenchConfig", "FormatSettings", "FormatData",
           "load_config", "expand_grid", "prepare_formats", "run_benchmark", "realistic_transform",
           "ratios_and_checks"]

LOADERS = ("torch", "ours-threaded", "ours-asyncio", "torch+getitems", "s3torchconnector")
STORAGES = ("scratch", "s3")
FORMATS = ("jpeg", "archive", "archive-mmap", "shards", "memmap", "hdf5", "parquet", "ipc", "tar")
CONVERTED = ("memmap", "hdf5", "parquet", "ipc", "tar")
FIXED_SIZE = ("memmap", "hdf5")  # decoded pixels: no JPEG decode at read time
TRANSFORMS = ("realistic", "decode", "none")
S3_CLIENTS = ("lean", "botocore")
BUCKET = "synthetic"
FORMAT_BUCKET = "formats"  # in memory on the server: ranged GETs of big objects slice, not re-read, them
CREDS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret", "region_name": "us-east-1"}
_USES_FETCH = ("ours-threaded", "ours-asyncio", "torch+getitems")


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    storage: str = "s3"
    latency_ms: float = 0.0
    loader: str = "ours-asyncio"
    s3_client: str = "lean"
    num_workers: int = 2
    num_fetch_workers: int = 32
    batch_pool: int = 4
    batch_size: int = 32
    prefetch_factor: int = 2
    transform: str = "realistic"
    format: str = "jpeg"
    prefetch_shards: int = 4   # shards only: shards downloading at once per worker

    def normalized(self) -> "RunSpec":
        """Settings that do not apply to a loader are blanked, so duplicate runs collapse."""
        spec = self
        if self.loader not in _USES_FETCH or self.format == "shards":
            # NOTE: an IterableDataset goes through our loader unchanged: no fetch settings.
            spec = _replace(spec, num_fetch_workers=0, batch_pool=0)
        elif self.loader == "torch+getitems":
            spec = _replace(spec, batch_pool=0)
        if self.format != "shards":
            spec = _replace(spec, prefetch_shards=0)
        if self.storage == "scratch":
            spec = _replace(spec, s3_client="-", latency_ms=0.0)
        if self.loader == "s3torchconnector":
            spec = _replace(spec, s3_client="crt")
        return spec

    def validate(self) -> "RunSpec":
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.storage == "s3" and self.s3_client not in S3_CLIENTS:
            raise ValueError(f"s3_client must be one of {S3_CLIENTS}, got {self.s3_client!r}")
        if self.loader == "s3torchconnector" and self.storage != "s3":
            raise ValueError("s3torchconnector only reads from s3")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.loader == "s3torchconnector" and self.format != "jpeg":
            raise ValueError("s3torchconnector reads one object per image: format must be jpeg")
        if self.loader == "torch+getitems" and self.format == "shards":
            raise ValueError("torch+getitems needs a map-style dataset; shards are an IterableDataset")
        if self.format == "archive-mmap" and self.storage != "scratch":
            raise ValueError("archive-mmap maps a local file: storage must be scratch (use archive on s3)")
        if self.format == "shards" and self.prefetch_shards < 1:
            raise ValueError(f"prefetch_shards must be >= 1, got {self.prefetch_shards}")
        if self.latency_ms < 0 or self.num_workers < 0 or self.batch_size < 1:
            raise ValueError(f"bad run settings: {self}")
        return self


def _replace(spec: RunSpec, **changes: Any) -> RunSpec:
    return RunSpec(**{**asdict(spec), **changes})


@dataclass
class BenchConfig:
    name: str = "bench"
    seed: int = 0
    dataset: dict[str, Any] = field(default_factory=dict)  # SyntheticSpec fields + optional "dir"
    jitter_ms: float = 5.0
    ceiling_seconds: float = 2.0
    client_cpu_gets: int = 1000
    client_cpu_clients: tuple[str, ...] = ("botocore", "aiobotocore", "lean-sync", "lean-async")
    warmup_batches: int = 2
    min_batches: int = 3
    max_batches: int = 40
    max_seconds: float = 4.0
    repeats: int = 1
    # Extra rounds for the grid points behind a target that lands within ``confirm_margin`` of
    # its threshold (both sides of the ratio are re-measured; each keeps its best round).
    confirm_rounds: int = 0
    confirm_margin: float = 0.1
    loader_timeout_s: float = 120.0
    runs: list[RunSpec] = field(default_factory=list)
    targets: dict[str, float] = field(default_factory=dict)
    formats: "FormatSettings" = field(default_factory=lambda: FormatSettings())


@dataclass(frozen=True)
class FormatSettings:
    """How the storage formats are made from the synthetic JPEGs (config key ``formats``)."""

    fixed_shape: tuple[int, int] = (224, 224)  # (height, width) of memmap/hdf5 pixels
    images_per_file: int = 250                 # converted formats: samples per file
    shards: int = 16                           # tar shards (a multiple of num_workers splits evenly)
    shuffle_buffer: int = 256                  # TarShardDataset sample shuffle buffer
    convert_workers: int = 2                   # DataLoader workers of the converters

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FormatSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"unknown formats settings {sorted(unknown)} (known: {sorted(names)})")
        d = dict(raw)
        if "fixed_shape" in d:
            shape = d["fixed_shape"]
            d["fixed_shape"] = (int(shape), int(shape)) if isinstance(shape, int) else tuple(int(v) for v in shape)
        out = cls(**d)
        if len(out.fixed_shape) != 2 or min(out.fixed_shape) < 1 or out.images_per_file < 1 or out.shards < 1:
            raise ValueError(f"bad formats settings: {out}")
        return out


def expand_grid(defaults: dict[str, Any], grid: list[dict[str, Any]]) -> list[RunSpec]:
    """Each grid entry maps RunSpec fields to a value or a list; their products, in order, deduplicated."""
    names = {f.name for f in fields(RunSpec)}
    unknown = set(defaults) - names
    if unknown:
        raise ValueError(f"unknown run settings in defaults: {sorted(unknown)} (known: {sorted(names)})")
    out: list[RunSpec] = []
    seen: set[RunSpec] = set()
    for entry in grid:
        unknown = set(entry) - names
        if unknown:
            raise ValueError(f"unknown run settings in grid entry {entry}: {sorted(unknown)}")
        keys = list(entry)
        values = [v if isinstance(v, list) else [v] for v in entry.values()]
        for combo in itertools.product(*values):
            spec = RunSpec(**{**defaults, **dict(zip(keys, combo))}).validate().normalized()
            if spec not in seen:
                seen.add(spec)
                out.append(spec)
    return out


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Read a YAML config (see ``configs/quick.yaml`` for every key)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.update(overrides or {})
    allowed = {"name", "seed", "dataset", "server", "client_cpu", "measure", "defaults", "grid", "targets", "formats"}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} (known: {sorted(allowed)})")
    server = raw.get("server") or {}
    client_cpu = raw.get("client_cpu") or {}
    measure = raw.get("measure") or {}
    if not raw.get("grid"):
        raise ValueError(f"{path}: 'grid' must list at least one entry")
    cfg = BenchConfig(
        name=str(raw.get("name", Path(path).stem)), seed=int(raw.get("seed", 0)), dataset=dict(raw.get("dataset") or {}),
        jitter_ms=float(server.get("jitter_ms", 5.0)), ceiling_seconds=float(server.get("ceiling_seconds", 2.0)),
        client_cpu_gets=int(client_cpu.get("gets", 1000)),
        client_cpu_clients=tuple(client_cpu.get("clients", BenchConfig.client_cpu_clients)),
        warmup_batches=int(measure.get("warmup_batches", 2)), min_batches=int(measure.get("min_batches", 3)),
        max_batches=int(measure.get("max_batches", 40)), max_seconds=float(measure.get("max_seconds", 4.0)),
        repeats=max(1, int(measure.get("repeats", 1))),
        confirm_rounds=max(0, int(measure.get("confirm_rounds", 0))),
        confirm_margin=float(measure.get("confirm_margin", 0.1)),
        loader_timeout_s=float(measure.get("loader_timeout_s", 120.0)),
        runs=expand_grid(dict(raw.get("defaults") or {}), list(raw["grid"])),
        targets={k: float(v) for k, v in (raw.get("targets") or {}).items()},
        formats=FormatSettings.from_dict(dict(raw.get("formats") or {})),
    )
    return cfg


# ---------------------------------------------------------------------------------------------
# Storage formats: made once from the synthetic JPEGs, cached next to them
# ---------------------------------------------------------------------------------------------

_PREPARED = "bench_prepared.json"  # written last in a format's folder: its presence means "complete"


@dataclass
class FormatData:
    """One prepared format: where its files are locally and under which S3 prefix they are served."""

    name: str                   # the cache folder name, also the key prefix in FORMAT_BUCKET
    root: Path                  # local folder holding the data files (uploaded with keys relative to it)
    files: list[str]            # what an S3 run needs, relative to root
    images: int
    size_bytes: int
    seconds: float              # time it took to make (img/s = images / seconds)
    made_now: bool = False
    template: str | None = None           # shards: the brace template
    shard_records: list[int] | None = None

    @property
    def archive(self) -> Path:
        return self.root / "train.tar"

    @property
    def s3_archive_index(self) -> Path:
        # NOTE: an index built from the local file records its mtime, which an S3 object does not
        # have: the S3 archive gets its own index (built once by streaming the object).
        return self.root.parent / "train.s3.idx.npy"


def _format_tag(fmt: str, settings: FormatSettings) -> str:
    if fmt in ("archive", "archive-mmap"):
        return "archive"
    if fmt == "shards":
        return f"shards-{settings.shards}"
    if fmt in FIXED_SIZE:
        h, w = settings.fixed_shape
        return f"{fmt}-{h}x{w}-{settings.images_per_file}"
    return f"{fmt}-{settings.images_per_file}"


def _train_images(train_dir: Path) -> list[Path]:
    """The JPEGs of an ImageFolder tree, in class then name order."""
    return [f for cls in sorted(p for p in train_dir.iterdir() if p.is_dir()) for f in sorted(cls.iterdir())
            if f.is_file() and not f.name.startswith(".")]


def _write_archive(train_dir: Path, path: Path, progress: bool) -> int:
    """One plain TAR of the tree, members ``<class>/<file>`` (so ImageArchive finds the same classes)."""
    import io
    import tarfile

    from tqdm import tqdm

    from concurrent_dataloader._atomic import atomic_open

    images = _train_images(train_dir)
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for img in tqdm(images, desc="archive", unit="img", disable=not progress):
            data = img.read_bytes()
            info = tarfile.TarInfo(f"{img.parent.name}/{img.name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return len(images)


def _divisor_batch(images_per_file: int, at_most: int = 64) -> int:
    """The converters' batch size must divide images_per_file: the largest divisor <= at_most."""
    return max(d for d in range(1, min(images_per_file, at_most) + 1) if images_per_file % d == 0)


def _make_format(fmt: str, train_dir: Path, root: Path, settings: FormatSettings,
                 progress: bool) -> dict[str, Any]:
    """Write one format under ``root/data``; returns what the marker records."""
    data = root / "data"
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if fmt == "archive":
        images = _write_archive(train_dir, data / "train.tar", progress)
        files = ["train.tar"]
    elif fmt == "shards":
        import math

        from concurrent_dataloader.tools.make_shards import collect_image_folder, write_shards

        samples, classes = collect_image_folder(train_dir)
        per_shard = math.ceil(len(samples) / settings.shards)
        manifest = write_shards(samples, classes, str(data), prefix="train", shard_size=1 << 62,
                                max_count=per_shard, progress=progress)
        images = manifest["records"]
        files = [s["name"] for s in manifest["shards"]] + ["train.json"]
        extra = {"template": manifest["template"], "shard_records": [s["records"] for s in manifest["shards"]]}
    else:
        from concurrent_dataloader.formats.converted import get_format

        spec = get_format(fmt)
        ipf = settings.images_per_file
        kwargs: dict[str, Any] = dict(progress=progress)
        if spec.fixed_size:
            kwargs.update(shape=settings.fixed_shape, im_mode="RGB")
        converter = spec.converter(str(train_dir), str(data), ipf, _divisor_batch(ipf), settings.convert_workers,
                                   **kwargs)
        converter.convert()  # NOTE: resumes an interrupted conversion of the same plan
        images = converter.length
        files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*")
                       if p.is_file() and not p.name.startswith("."))
    seconds = time.perf_counter() - t0
    size = sum((data / f).stat().st_size for f in files)
    return {"format": fmt, "images": images, "files": files, "size_bytes": size, "seconds": seconds, **extra}


def prepare_formats(data_dir: Path, formats: set[str], settings: FormatSettings, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, FormatData]:
    """Make (or reuse) every format in ``formats`` from ``data_dir/train``; keyed by format name.

    Each format lives in ``data_dir/formats/<tag>/`` (the tag names the settings it was made
    with), its data in ``data/`` and a marker written last; an interrupted preparation is
    redone (the converters resume from their completed files).
    """
    import json

    from concurrent_dataloader._atomic import atomic_write_bytes

    train_dir = data_dir / "train"
    out: dict[str, FormatData] = {}
    made: dict[str, FormatData] = {}
    for fmt in sorted(f for f in formats if f != "jpeg"):
        base = "archive" if fmt == "archive-mmap" else fmt
        tag = _format_tag(fmt, settings)
        if tag not in made:
            root = data_dir / "formats" / tag
            marker = root / _PREPARED
            record = None
            if marker.exists():
                try:
                    record = json.loads(marker.read_text())
                    if not all((root / "data" / f).is_file() for f in record["files"]):
                        record = None
                except (ValueError, KeyError, OSError):
                    record = None
            made_now = record is None
            if record is None:
                marker.unlink(missing_ok=True)
                record = _make_format(base, train_dir, root, settings, progress)
                atomic_write_bytes(marker, json.dumps(record, indent=1).encode())
            made[tag] = FormatData(name=tag, root=root / "data", files=list(record["files"]),
                                   images=int(record["images"]), size_bytes=int(record["size_bytes"]),
                                   seconds=float(record["seconds"]), made_now=made_now,
                                   template=record.get("template"), shard_records=record.get("shard_records"))
            if base == "archive":
                # the local index, once (a run must not pay for it)
                from concurrent_dataloader.formats import ImageArchive

                ImageArchive(made[tag].archive, progress=progress).close()
        out[fmt] = made[tag]
    for fmt, fd in out.items():
        how = "made" if fd.made_now else "cached"
        log(f"format {fmt}: {fd.images} images, {fd.size_bytes / 1e6:.1f} MB in {len(fd.files)} file(s), "
            f"{how} ({fd.images / max(fd.seconds, 1e-9):,.0f} img/s to make), in {fd.root}")
    return out


def upload_formats(server: Any, formats: dict[str, FormatData], names: set[str], progress: bool = True) -> float:
    """PUT the files of ``names`` into the server's in-memory FORMAT_BUCKET; returns seconds.

    NOTE: the directory buckets of our server read a whole file per GET, so a ranged GET of a
    200 MB archive would re-read 200 MB; an in-memory object is sliced instead.
    """
    import concurrent.futures as cf

    from tqdm import tqdm

    from concurrent_dataloader.storage.s3_http import LeanS3Store

    todo = {formats[n].name: formats[n] for n in names if n in formats}
    jobs = [(fd, f) for fd in todo.values() for f in fd.files]
    if not jobs:
        return 0.0
    t0 = time.perf_counter()
    store = LeanS3Store(FORMAT_BUCKET, endpoint_url=server.endpoint_url, max_pool_connections=8, **CREDS)
    try:
        with cf.ThreadPoolExecutor(4) as pool, tqdm(total=sum(fd.size_bytes for fd in todo.values()), unit="B",
                                                     unit_scale=True, desc="upload formats",
                                                     disable=not progress) as bar:
            def put(job: tuple[FormatData, str]) -> None:
                fd, rel = job
                data = (fd.root / rel).read_bytes()
                store.put(f"{fd.name}/{rel}", data)
                bar.update(len(data))

            list(pool.map(put, jobs))
        for fd in todo.values():
            if fd.name == "archive":
                # the S3 archive's own index, once, at whatever latency the server has now (0)
                from concurrent_dataloader.formats import ImageArchive

                ImageArchive("train.tar", store=LeanS3Store(FORMAT_BUCKET, "archive/", endpoint_url=server.endpoint_url,
                                                            **CREDS),
                             ipath=fd.s3_archive_index, progress=progress).close()
    finally:
        store.close()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Datasets and loaders
# ---------------------------------------------------------------------------------------------

def realistic_transform() -> Callable[[Any], Any]:
    """The ImageNet training transform: RandomResizedCrop(224), horizontal flip, ToTensor."""
    import torchvision.transforms as T

    return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])


class _PilToArray:
    """'decode' transform: keep the decoded pixels, as a tensor of the original size (no resize)."""

    def __call__(self, img: Any) -> Any:
        import numpy as np
        import torch

        return torch.from_numpy(np.asarray(img).copy())


def _collate_images(batch: list) -> Any:
    """Collate that tolerates images of different sizes (transform 'decode' or 'none')."""
    import torch
    from torch.utils.data import default_collate

    first = batch[0][0]
    if isinstance(first, torch.Tensor) and all(b[0].shape == first.shape for b in batch):
        return default_collate(batch)
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch])


def _transform(name: str) -> Callable[[Any], Any] | None:
    if name == "realistic":
        return realistic_transform()
    if name == "decode":
        return _PilToArray()
    return None


class S3ReaderTransform:
    """s3torchconnector hands its transform an ``S3Reader``: read it, then do what our datasets do."""

    def __init__(self, labels: dict[str, int], transform: Callable[[Any], Any] | None) -> None:
        self.labels = labels
        self.transform = transform

    def __call__(self, reader: Any) -> tuple[Any, int]:
        from concurrent_dataloader.datasets import decode_image

        image = decode_image(reader.read())
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[reader.key]


def build_dataset(spec: RunSpec, data_dir: Path, endpoint_url: str | None, limit: int | None = None,
                  formats: dict[str, FormatData] | None = None, settings: FormatSettings | None = None,
                  seed: int = 0) -> Any:
    """The dataset a run reads. ``s3`` + ``lean`` swaps the botocore store for :class:`LeanS3Store`."""
    from concurrent_dataloader.datasets import ImageDataset, get_dataset

    transform = _transform(spec.transform)
    if spec.format != "jpeg":
        if not formats or spec.format not in formats:
            raise ValueError(f"format {spec.format!r} was not prepared (see prepare_formats)")
        return _format_dataset(spec, formats[spec.format], endpoint_url, transform, settings or FormatSettings(),
                               seed)
    common = dict(dataset_type="train", limit=limit, index_file=data_dir / f"index-{spec.storage}-train.json",
                  classes_file=data_dir / "imagenet-train-classes.json", transform=transform)
    if spec.storage == "scratch":
        return get_dataset("scratch", root=data_dir, **common)
    if spec.loader == "s3torchconnector":
        from s3torchconnector import S3ClientConfig, S3MapDataset

        base = get_dataset("s3", bucket=BUCKET, endpoint_url=endpoint_url, validate=False, **common, **CREDS)
        labels = dict(zip(base.keys, base.labels))
        # NOTE: the CRT client reads credentials from the environment (set in run_benchmark).
        return S3MapDataset.from_objects([f"s3://{BUCKET}/{k}" for k in base.keys], region=CREDS["region_name"],
                                         endpoint=endpoint_url, transform=S3ReaderTransform(labels, transform),
                                         s3client_config=S3ClientConfig(force_path_style=True))
    pool = max(64, spec.num_fetch_workers)
    ds = get_dataset("s3", bucket=BUCKET, endpoint_url=endpoint_url, max_pool_connections=pool, **common, **CREDS)
    if spec.s3_client == "lean":
        from concurrent_dataloader.storage.s3_http import LeanS3Store

        store = LeanS3Store(BUCKET, endpoint_url=endpoint_url, max_pool_connections=pool, **CREDS)
        ds.close()
        ds = ImageDataset(store, ds.keys, ds.labels, transform=transform, classes=ds.classes)
    return ds


def _format_dataset(spec: RunSpec, fd: FormatData, endpoint_url: str | None, transform: Any,
                    settings: FormatSettings, seed: int) -> Any:
    """The same images in another storage format: local files, or FORMAT_BUCKET on the server.

    On S3 the lean client is handed over as ``store=`` (each reader takes a ByteStore); with
    ``s3_client: botocore`` the readers open the ``s3://`` URL themselves.
    """
    store: Any = None
    url = options = None
    if spec.storage == "s3":
        pool = max(64, spec.num_fetch_workers)  # NOTE: >= concurrent fetches per process
        if spec.s3_client == "lean":
            from concurrent_dataloader.storage.s3_http import LeanS3Store

            store = LeanS3Store(FORMAT_BUCKET, f"{fd.name}/", endpoint_url=endpoint_url, max_pool_connections=pool,
                                **CREDS)
        else:
            url = f"s3://{FORMAT_BUCKET}/{fd.name}"
            options = dict(endpoint_url=endpoint_url, max_pool_connections=pool, **CREDS)
    fmt = spec.format
    if fmt in ("archive", "archive-mmap"):
        from concurrent_dataloader.formats import ImageArchive

        if spec.storage == "scratch":
            return ImageArchive(fd.archive, transform=transform, progress=False, data_in_memory=fmt == "archive-mmap")
        if store is not None:
            return ImageArchive("train.tar", ipath=fd.s3_archive_index, transform=transform, store=store,
                                progress=False)
        return ImageArchive(f"{url}/train.tar", ipath=fd.s3_archive_index, transform=transform,
                            storage_options=options, progress=False)
    if fmt == "shards":
        from concurrent_dataloader.formats import ImageRecordDecoder, TarShardDataset

        where = store if store is not None else (url or str(fd.root))
        return TarShardDataset(fd.template or "", where, storage_options=options,
                               map_fn=ImageRecordDecoder(transform), shuffle=True, seed=seed,
                               shuffle_buffer=settings.shuffle_buffer, prefetch_shards=spec.prefetch_shards)
    from concurrent_dataloader.formats.converted import get_format

    reader = get_format(fmt).reader
    if store is not None:
        return reader(None, transform, store=store)
    return reader(url or str(fd.root), transform, storage_options=options)


def _iterable_batches(spec: RunSpec, fd: FormatData, settings: FormatSettings) -> int:
    """Batches a shard epoch surely delivers at a steady rate, across ``num_workers``.

    Each worker reads whole shards (``shards // workers`` of them at least) and its last
    ``shuffle_buffer`` samples were decoded ahead while the buffer filled, so they come out
    faster than steady state: those batches are not counted as available.
    """
    k = max(1, spec.num_workers)
    counts = sorted(fd.shard_records or [fd.images])
    per_worker = sum(counts[: len(counts) // k])
    tail = -(-settings.shuffle_buffer // spec.batch_size) if settings.shuffle_buffer > 1 else 0
    return k * max(0, per_worker // spec.batch_size - tail)


def build_loader(spec: RunSpec, dataset: Any, seed: int, timeout_s: float) -> Any:
    import torch
    import torch.utils.data

    from concurrent_dataloader import DataLoader, concurrent_getitems

    g = torch.Generator()
    g.manual_seed(seed)
    common: dict[str, Any] = dict(batch_size=spec.batch_size, shuffle=True, generator=g, num_workers=spec.num_workers,
                                  collate_fn=None if spec.transform == "realistic" else _collate_images)
    if spec.num_workers > 0:
        common.update(prefetch_factor=spec.prefetch_factor, timeout=timeout_s)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        # the dataset shuffles itself (shard order + buffer); torch refuses shuffle= here
        del common["shuffle"], common["generator"]
        if spec.loader == "torch":
            return torch.utils.data.DataLoader(dataset, **common)
        return DataLoader(dataset, fetch_impl=spec.loader.split("-", 1)[1], **common)
    if spec.loader in ("torch", "s3torchconnector"):
        return torch.utils.data.DataLoader(dataset, **common)
    if spec.loader == "torch+getitems":
        return torch.utils.data.DataLoader(concurrent_getitems(dataset, num_fetch_workers=spec.num_fetch_workers),
                                           **common)
    impl = spec.loader.split("-", 1)[1]
    return DataLoader(dataset, num_fetch_workers=spec.num_fetch_workers, fetch_impl=impl, batch_pool=spec.batch_pool,
                      **common)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def _cpu_seconds(exclude: set[int]) -> float:
    """CPU time of this process and its live children (the DataLoader workers), minus ``exclude``."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system
    for child in me.children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            ct = child.cpu_times()
            total += ct.user + ct.system
        except psutil.Error:
            pass
    return total


def measure_run(spec: RunSpec, cfg: BenchConfig, data_dir: Path, server: Any, exclude_pids: set[int],
                limit: int | None = None, formats: dict[str, FormatData] | None = None) -> dict[str, Any]:
    """Warm up, then time batches until ``max_seconds`` or ``max_batches`` (at least ``min_batches``)."""
    if server is not None:
        server.configure(latency_ms=spec.latency_ms, jitter_ms=cfg.jitter_ms if spec.latency_ms > 0 else 0.0)
    dataset = build_dataset(spec, data_dir, server.endpoint_url if server is not None else None, limit,
                            formats, cfg.formats, cfg.seed)
    try:
        loader = build_loader(spec, dataset, cfg.seed, cfg.loader_timeout_s)
    except BaseException:
        _close(dataset)
        raise
    if spec.format == "shards":
        assert formats is not None
        batches_per_epoch = _iterable_batches(spec, formats[spec.format], cfg.formats)
    else:
        batches_per_epoch = len(loader)
    # NOTE: with k workers each worker delivers every k-th batch, and a worker's batch lands at
    # once, so stock torch delivers in bursts of ~k batches. Warm-up and the timed window are
    # whole multiples of k batches, so the window spans whole rounds instead of cutting one.
    k = max(1, spec.num_workers)
    warmup = -(-cfg.warmup_batches // k) * k
    min_batches = max(k, -(-cfg.min_batches // k) * k)
    needed = warmup + min_batches
    if batches_per_epoch < needed:
        _close(loader)
        _close(dataset)
        raise ValueError(f"the dataset gives {batches_per_epoch} batches per epoch; the run needs {needed} "
                         "(raise dataset.train or lower batch_size/measure settings)")
    limit_batches = min(cfg.max_batches, batches_per_epoch - warmup)
    it = iter(loader)
    images = 0
    try:
        for _ in range(warmup):
            next(it)
        if server is not None:
            server.reset_stats()
        cpu0, t0 = _cpu_seconds(exclude_pids), time.perf_counter()
        n = 0
        while n < limit_batches:
            batch = next(it)
            images += len(batch[1])
            n += 1
            if n >= min_batches and n % k == 0 and time.perf_counter() - t0 >= cfg.max_seconds:
                break
        t1 = time.perf_counter()
        cpu1 = _cpu_seconds(exclude_pids)  # NOTE: before the workers exit, so their CPU is counted
        stats = server.stats() if server is not None else None
    finally:
        del it
        _close(loader)
        _close(dataset)
    seconds = t1 - t0
    row: dict[str, Any] = {**asdict(spec), "status": "ok", "images": images, "seconds": round(seconds, 3),
                           "img_per_s": images / seconds, "loader_cpu_ms_per_img": (cpu1 - cpu0) / images * 1e3}
    if stats is not None and spec.storage == "s3":
        gets = max(1, stats["gets"])
        row.update(server_cpu_ms_per_img=stats["server_cpu_s"] / images * 1e3,
                   server_cpu_ms_per_get=stats["server_cpu_s"] / gets * 1e3,
                   server_core_util=stats["server_cpu_s"] / seconds, server_gets=stats["gets"],
                   server_peak_in_flight=stats["peak_in_flight"])
    return row


def _close(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        close()


def measure_decode_ms(data_dir: Path, transform: str, n: int = 60, pixels: FormatData | None = None) -> float:
    """CPU ms to decode + transform one image, single-threaded, in this process.

    By default from the JPEG bytes (what every format storing the original bytes decodes);
    with ``pixels`` (a memmap/hdf5 conversion) from its stored pixels, through its reader.
    """
    import json

    import torch

    from concurrent_dataloader.datasets import decode_image

    tf = _transform(transform)
    if pixels is not None:
        from concurrent_dataloader.formats.converted import open_converted

        reader = open_converted(str(pixels.root), tf)
        try:
            idx = list(range(0, len(reader), max(1, len(reader) // n)))[:n]
            raws = [(i, reader.fetch_raw(i)) for i in idx]
        finally:
            reader.close()

        def one(item: tuple[int, Any]) -> None:
            reader.decode(*item)
    else:
        keys = json.loads((data_dir / "index-scratch-train.json").read_text())
        step = max(1, len(keys) // n)
        raws = [(0, (data_dir / k).read_bytes()) for k in keys[::step][:n]]

        def one(item: tuple[int, Any]) -> None:
            img = decode_image(item[1])
            if tf is not None:
                tf(img)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        for item in raws[:5]:
            one(item)
        c0 = time.process_time()
        for item in raws:
            one(item)
        return (time.process_time() - c0) / len(raws) * 1e3
    finally:
        torch.set_num_threads(threads)


def _decode_key(row: dict[str, Any]) -> str:
    """decode_ms is keyed by transform, plus ``+pixels`` for formats that store decoded pixels."""
    return row["transform"] + ("+pixels" if row.get("format") in FIXED_SIZE else "")


def _client_for(row: dict[str, Any]) -> str | None:
    """The client micro-benchmark that matches a row's per-image GETs (None: no GET per image)."""
    if row["storage"] != "s3" or row["loader"] == "s3torchconnector" or row.get("format") == "shards":
        return None
    impl = "async" if row["loader"] == "ours-asyncio" else "sync"
    return f"lean-{impl}" if row["s3_client"] == "lean" else ("aiobotocore" if impl == "async" else "botocore")


def ratios_and_checks(rows: list[dict[str, Any]], targets: dict[str, float] | None = None,
                      client_cpu: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Fill ``ratio_vs_torch`` per row and evaluate the issue's targets; returns the checks.

    The reference of a row is the stock torch run with the same storage, format, latency, s3
    client, workers, batch size and transform, in the same benchmark run. The loader targets are
    checked on the ``jpeg`` rows (one object per image); ``archive_vs_torch_at_latency`` on the
    ``archive`` rows (ranged GETs into one S3 object).
    """
    def ref_key(r: dict[str, Any]) -> tuple:
        return (r["storage"], r.get("format", "jpeg"), r["latency_ms"], r["num_workers"], r["batch_size"],
                r["transform"], r["prefetch_factor"])

    ok = [r for r in rows if r.get("status") == "ok"]
    torch_ref: dict[tuple, dict[str, Any]] = {}
    for r in ok:
        if r["loader"] == "torch":
            torch_ref.setdefault(ref_key(r) + (r["s3_client"],), r)
    for r in ok:
        ref = torch_ref.get(ref_key(r) + (r["s3_client"],)) or next(
            (v for k, v in torch_ref.items() if k[:-1] == ref_key(r)), None)
        r["ratio_vs_torch"] = r["img_per_s"] / ref["img_per_s"] if ref else None

    targets = targets or {}
    checks: list[dict[str, Any]] = []

    # NOTE: every check compares runs at the grid's usual batch size (the most common one), so a
    # batch-size sweep point is never taken for the main result (nor for its reference).
    from collections import Counter

    batch_size = Counter(r["batch_size"] for r in ok).most_common(1)[0][0] if ok else None

    def best(pred: Callable[[dict[str, Any]], bool], fmt: str = "jpeg") -> dict[str, Any] | None:
        cands = [r for r in ok if r.get("format", "jpeg") == fmt and r["batch_size"] == batch_size and pred(r)]
        return max(cands, key=lambda r: r["img_per_s"]) if cands else None

    def add(name: str, value: float | None, target: float | None, detail: str, *compared: dict[str, Any]) -> None:
        checks.append({"check": name, "value": value, "target": target, "detail": detail,
                       "pass": None if value is None or target is None else value >= target,
                       "runs": [spec_of(r) for r in compared]})

    workers = int(targets.get("workers", 2))
    lat = float(targets.get("latency_ms", 50))
    ours = ("ours-threaded", "ours-asyncio")
    is_default_fetch = _default_fetch(ok, workers)
    for impl in ours:
        o = best(lambda r: r["storage"] == "s3" and r["latency_ms"] == lat and r["loader"] == impl
                 and r["num_workers"] == workers and is_default_fetch(r))
        t = best(lambda r: r["storage"] == "s3" and r["latency_ms"] == lat and r["loader"] == "torch"
                 and r["num_workers"] == workers)
        s = best(lambda r: r["storage"] == "s3" and r["latency_ms"] == lat and r["loader"] == "s3torchconnector"
                 and r["num_workers"] == workers)
        o0 = best(lambda r: r["storage"] == "s3" and r["latency_ms"] == 0 and r["loader"] == impl
                  and r["num_workers"] == workers and is_default_fetch(r))
        sc = best(lambda r: r["storage"] == "scratch" and r["loader"] == impl and r["num_workers"] == workers
                  and is_default_fetch(r))
        sct = best(lambda r: r["storage"] == "scratch" and r["loader"] == "torch" and r["num_workers"] == workers)
        if o and t:
            add(f"{impl} / torch, s3 {lat:g} ms, {workers} workers", o["img_per_s"] / t["img_per_s"],
                targets.get("vs_torch_at_latency"), f"{o['img_per_s']:.0f} vs {t['img_per_s']:.0f} img/s", o, t)
        if o and s:
            add(f"{impl} / s3torchconnector, s3 {lat:g} ms", o["img_per_s"] / s["img_per_s"],
                targets.get("vs_s3torchconnector_at_latency"), f"{o['img_per_s']:.0f} vs {s['img_per_s']:.0f} img/s", o, s)
        if o and o0:
            add(f"{impl} at {lat:g} ms / at 0 ms (latency hiding)", o["img_per_s"] / o0["img_per_s"],
                targets.get("latency_hiding"), f"{o['img_per_s']:.0f} vs {o0['img_per_s']:.0f} img/s", o, o0)
        if sc and sct:
            add(f"{impl} / torch, scratch 0 ms", sc["img_per_s"] / sct["img_per_s"], targets.get("scratch_vs_torch"),
                f"{sc['img_per_s']:.0f} vs {sct['img_per_s']:.0f} img/s", sc, sct)
    for impl in ours:
        oa = best(lambda r: r["storage"] == "s3" and r["latency_ms"] == lat and r["loader"] == impl
                  and r["num_workers"] == workers and is_default_fetch(r), "archive")
        ta = best(lambda r: r["storage"] == "s3" and r["latency_ms"] == lat and r["loader"] == "torch"
                  and r["num_workers"] == workers, "archive")
        if oa and ta:
            add(f"{impl} / torch, one S3 archive (ranged GETs) {lat:g} ms, {workers} workers",
                oa["img_per_s"] / ta["img_per_s"], targets.get("archive_vs_torch_at_latency"),
                f"{oa['img_per_s']:.0f} vs {ta['img_per_s']:.0f} img/s", oa, ta)
    if client_cpu:
        for name in ("lean-sync", "lean-async"):
            if name in client_cpu:
                # lower is better: report as budget / value so ">= 1" means within budget
                budget = targets.get("client_cpu_ms_per_get")
                v = client_cpu[name]
                checks.append({"check": f"{name} client CPU ms per GET", "value": v, "target": budget,
                               "detail": f"botocore {client_cpu.get('botocore', float('nan')):.3f}, aiobotocore "
                                         f"{client_cpu.get('aiobotocore', float('nan')):.3f} ms",
                               "pass": None if budget is None else v <= budget})
    return checks


def spec_of(row: dict[str, Any]) -> RunSpec:
    """The grid point a result row was measured at."""
    return RunSpec(**{f.name: row[f.name] for f in fields(RunSpec) if f.name in row})


def close_calls(checks: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """Checks whose value is within ``margin`` (relative) of the target, either side."""
    out = []
    for c in checks:
        v, t = c.get("value"), c.get("target")
        if c.get("runs") and v is not None and t and abs(v - t) <= margin * t:
            out.append(c)
    return out


def _default_fetch(rows: list[dict[str, Any]], workers: int) -> Callable[[dict[str, Any]], bool]:
    """The most common (num_fetch_workers, batch_pool) among our runs and S3 client among S3 runs:
    the grid's defaults, so a sweep point (or the botocore comparison) is not taken for the main result."""
    from collections import Counter

    counts = Counter((r["num_fetch_workers"], r["batch_pool"]) for r in rows
                     if r["loader"] in ("ours-threaded", "ours-asyncio") and r.get("format") != "shards")
    clients = Counter(r["s3_client"] for r in rows if r["storage"] == "s3" and r["loader"] != "s3torchconnector")
    if not counts:
        return lambda r: True
    nfw, pool = counts.most_common(1)[0][0]
    client = clients.most_common(1)[0][0] if clients else None
    return lambda r: (r["num_fetch_workers"] == nfw and r["batch_pool"] == pool
                      and (r["storage"] != "s3" or client is None or r["s3_client"] == client))


def run_benchmark(cfg: BenchConfig, data_root: Path, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole grid. Returns ``{"rows", "checks", "ceiling", "client_cpu", "decode_ms", ...}``."""
    from tqdm import tqdm

    from .make_synthetic import SyntheticSpec, make_synthetic
    from .s3_bench import client_cpu_subprocess, server_ceiling
    from .s3_server import ServerProcess

    ds_cfg = dict(cfg.dataset)
    data_dir = Path(ds_cfg.pop("dir", "")) if ds_cfg.get("dir") else None
    spec = SyntheticSpec(**{**ds_cfg, "seed": cfg.seed})
    if data_dir is None:
        data_dir = data_root / (f"synthetic-{spec.train}x{spec.width}x{spec.height}-{spec.classes}c-"
                                f"{spec.target_kb:g}kb-s{spec.seed}")
    manifest = make_synthetic(data_dir, spec, progress=progress)
    log(f"dataset: {manifest['images']} JPEGs, mean {manifest.get('mean_kb')} KB, in {data_dir}")
    formats = prepare_formats(data_dir, {r.format for r in cfg.runs}, cfg.formats, progress=progress, log=log)
    s3_formats = {r.format for r in cfg.runs if r.storage == "s3" and r.format != "jpeg"}

    needs_s3 = any(r.storage == "s3" for r in cfg.runs)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", CREDS["aws_access_key_id"])
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", CREDS["aws_secret_access_key"])
    os.environ.setdefault("AWS_REGION", CREDS["region_name"])
    buckets: dict[str, Any] = {BUCKET: data_dir, **({FORMAT_BUCKET: None} if s3_formats else {})}
    server = ServerProcess(buckets=buckets, seed=cfg.seed) if needs_s3 else None
    out: dict[str, Any] = {"config": cfg.name, "dataset": manifest, "rows": [], "ceiling": None, "client_cpu": {},
                           "decode_ms": {}, "formats": {
                               name: {"files": len(fd.files), "size_mb": round(fd.size_bytes / 1e6, 1),
                                      "images": fd.images, "make_img_per_s": round(fd.images / max(fd.seconds, 1e-9)),
                                      "made_now": fd.made_now, "path": str(fd.root)}
                               for name, fd in formats.items()}}
    try:
        exclude = {server.proc.pid} if server is not None else set()
        import json

        keys = json.loads((data_dir / "index-s3-train.json").read_text())[:256]
        if server is not None:
            out["ceiling"] = server_ceiling(server, BUCKET, keys, cfg.ceiling_seconds)
            c = out["ceiling"]
            log(f"server ceiling: {c['gets_per_s']:,.0f} GET/s at 0 ms (server CPU {c['server_cpu_ms_per_get']:.3f} "
                f"ms/GET, {c['server_core_utilisation']:.0%} of a core; CPU-bound limit "
                f"{c['cpu_bound_gets_per_s']:,.0f} GET/s)")
            for client in cfg.client_cpu_clients:
                r = client_cpu_subprocess(client, server.endpoint_url, BUCKET, keys, cfg.client_cpu_gets, 16)
                out["client_cpu"][client] = r["cpu_ms_per_get"]
            log("client CPU per GET: " + ", ".join(f"{k} {v:.3f} ms" for k, v in out["client_cpu"].items()))
            if s3_formats:
                secs = upload_formats(server, formats, s3_formats, progress=progress)
                log(f"uploaded {', '.join(sorted(s3_formats))} to the server's in-memory bucket in {secs:.1f} s")
        for t in sorted({r.transform for r in cfg.runs if r.format not in FIXED_SIZE}):
            out["decode_ms"][t] = measure_decode_ms(data_dir, t)
        for t in sorted({r.transform for r in cfg.runs if r.format in FIXED_SIZE}):
            pixels = next(formats[f] for f in FIXED_SIZE if f in formats)
            out["decode_ms"][t + "+pixels"] = measure_decode_ms(data_dir, t, pixels=pixels)
        log("decode+transform CPU per image: " + ", ".join(f"{k} {v:.2f} ms" for k, v in out["decode_ms"].items()))

        # NOTE: repeats run in rounds over the whole grid (not back to back), so a burst of load
        # from elsewhere on the machine hits different loaders rather than all repeats of one;
        # each grid point keeps its best repeat.
        attempts: dict[RunSpec, list[dict[str, Any]]] = {r: [] for r in cfg.runs}
        out["load_avg_start"] = os.getloadavg()

        def rounds(specs: list[RunSpec], n: int, desc: str) -> None:
            bar = tqdm(total=len(specs) * n, desc=desc, unit="run", disable=not progress)
            for _round in range(n):
                for spec_ in specs:
                    bar.set_postfix_str(f"{spec_.storage} {spec_.format} {spec_.latency_ms:g}ms {spec_.loader} "
                                        f"nw={spec_.num_workers} nfw={spec_.num_fetch_workers}")
                    if attempts[spec_] and not attempts[spec_][0].get("status", "").startswith("ok"):
                        bar.update(1)  # n/a or broken: do not retry
                        continue
                    try:
                        row = measure_run(spec_, cfg, data_dir, server, exclude, formats=formats)
                    except ImportError as exc:
                        row = {**asdict(spec_), "status": f"n/a: {exc}"}
                    except Exception as exc:  # one broken loader must not lose the other results
                        row = {**asdict(spec_), "status": f"error: {type(exc).__name__}: {str(exc)[:300]}"}
                    attempts[spec_].append(row)
                    bar.update(1)
            bar.close()

        def best_rows() -> list[dict[str, Any]]:
            rows = []
            for spec_ in cfg.runs:
                tries = attempts[spec_]
                good = [r for r in tries if r.get("status") == "ok"]
                row = dict(max(good, key=lambda r: r["img_per_s"]) if good else tries[0])
                if good:
                    row["img_per_s_repeats"] = [round(r["img_per_s"], 1) for r in good]
                _split_cpu(row, out)
                rows.append(row)
            return rows

        rounds(cfg.runs, cfg.repeats, cfg.name)
        rows = best_rows()
        out["confirmed"] = []
        if cfg.confirm_rounds:
            close = close_calls(ratios_and_checks(rows, cfg.targets, out["client_cpu"]), cfg.confirm_margin)
            specs = list(dict.fromkeys(s_ for c in close for s_ in c["runs"] if s_ in attempts))
            if specs:
                log(f"{len(close)} target(s) within {cfg.confirm_margin:.0%} of the threshold: "
                    f"{cfg.confirm_rounds} more round(s) of the {len(specs)} runs they compare")
                rounds(specs, cfg.confirm_rounds, "confirm")
                out["confirmed"] = [c["check"] for c in close]
                rows = best_rows()
        out["load_avg_end"] = os.getloadavg()
        out["rows"] = rows
    finally:
        if server is not None:
            server.stop()
    out["checks"] = ratios_and_checks(out["rows"], cfg.targets, out["client_cpu"])
    for c in out["checks"]:
        c["runs"] = [asdict(r) for r in c.get("runs", [])]
    return out


def _split_cpu(row: dict[str, Any], out: dict[str, Any]) -> None:
    """CPU ms per image split into client (S3 GET), decode+transform, and the rest (loader, IPC, collate)."""
    if row.get("status") != "ok":
        return
    decode = out["decode_ms"].get(_decode_key(row))
    client_name = _client_for(row)
    client = out["client_cpu"].get(client_name) if client_name else (0.0 if row["storage"] == "scratch" else None)
    row["decode_ms_per_img"] = decode
    row["client_ms_per_img"] = client
    row["ceiling_gets_per_s"] = (out.get("ceiling") or {}).get("gets_per_s")
    if decode is not None:
        row["other_ms_per_img"] = row["loader_cpu_ms_per_img"] - decode - (client or 0.0)
