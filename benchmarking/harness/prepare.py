"""Preparing the data a run reads: the storage formats made once from the synthetic JPEGs (cached
next to them), their upload to the server's in-memory bucket, and the peers' own formats (each
peer's ``prepare``, in its venv; see benchmarking/peers/README.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from concurrent_dataloader._atomic import atomic_open, atomic_write_bytes

from .config import BUCKET, CREDS, FIXED_SIZE, FORMAT_BUCKET, FormatSettings

__all__ = ["FormatData", "prepare_formats", "upload_formats", "write_index", "peer_spec"]


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
# Peers: the spec their runners read (benchmarking/peers/README.md)
# ---------------------------------------------------------------------------------------------

def write_index(data_dir: Path, out: Path) -> Path:
    """The peers' index: ``[{"key", "label"}]`` of the training JPEGs, in index order (written once)."""
    if out.exists():
        return out
    keys = json.loads((data_dir / "index-s3-train.json").read_text())
    classes = json.loads((data_dir / "imagenet-train-classes.json").read_text())
    index = [{"key": k, "label": int(classes[k.split("/")[-1].split("_")[0]]["id"])} for k in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps(index).encode())
    return out


def peer_spec(spec: Any, endpoint: str, index: Path, workdir: Path, images: int, settings: FormatSettings,
              seed: int) -> dict[str, Any]:
    """SPEC.json of one peer run. The converted data is keyed by image count and shard size, so a
    different dataset or setting never reuses it; it persists in the dataset folder between runs."""
    shard = settings.shard_size(images)
    return {"endpoint": endpoint, "bucket": BUCKET, "region": CREDS["region_name"],
            "access_key": CREDS["aws_access_key_id"], "secret_key": CREDS["aws_secret_access_key"],
            "images_prefix": "", "index": str(index), "workdir": str(workdir / spec.loader),
            "images_dir": str(index.parent),  # the local copy of the JPEGs: prepare need not download them
            "peer_prefix": f"peers/{spec.loader}-{images}x{shard}/", "shard_size": shard,
            "num_workers": spec.num_workers, "batch_size": spec.batch_size, "num_images": images,
            "shuffle_buffer": settings.shuffle_buffer, "seed": seed, "decoder": spec.decoder, "image_size": 224}
