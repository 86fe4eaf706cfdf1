"""Write tar shards (WebDataset convention) from an ImageFolder tree or an index file.

    python -m concurrent_dataloader.tools.make_shards data/train out/ --prefix train --shard-size 256MB
    python -m concurrent_dataloader.tools.make_shards --index-file index-train.json --base data out/
    python -m concurrent_dataloader.tools.make_shards data/train s3://bucket/shards --endpoint-url http://...

Each image becomes one record: ``<key>.<ext>`` (the image bytes, unchanged) and ``<key>.cls``
(the class index as text), where ``<key>`` is the image's path relative to the source without
its extension (dots in the file name become ``_`` so the WebDataset key rule holds). Shards are
``<prefix>-000000.tar`` ... (``.tar.gz`` with ``--gzip``), each closed once it would exceed
``--shard-size`` bytes or ``--max-count`` records; a manifest ``<prefix>.json`` lists the brace
template, shard names, record counts and class names.

Every shard and the manifest are written atomically (temp file + rename locally; one PUT to S3),
so a reader never sees a partial shard. S3 credentials come from the usual AWS environment
variables or config files, never from the command line.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import re
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .._atomic import AtomicFile
from ..errors import ConfigError, DataFormatError

__all__ = ["ShardWriter", "ShardSample", "collect_image_folder", "collect_index_file", "write_shards", "parse_size",
           "main"]

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(text: str | int) -> int:
    """``'256MB'`` -> 256000000, ``'1GiB'`` -> 1073741824, ``'4096'`` -> 4096."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m or m.group(2) is not None and m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MB, 1GiB, 100000)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


@dataclass(frozen=True)
class ShardSample:
    path: Path   # the image file
    rel: str     # its path relative to the source root, '/'-separated
    label: int


def _key_for(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    head, _, base = stem.rpartition("/")
    base = base.replace(".", "_")
    return f"{head}/{base}" if head else base


def collect_image_folder(root: Path, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> tuple[list[ShardSample], list[str]]:
    """Images under ``root/<class>/...`` (any depth), classes sorted and numbered from 0."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder not found: {root}")
    exts = tuple(e.lower() for e in extensions)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[ShardSample] = []
    for idx, cls in enumerate(classes):
        for dirpath, dirnames, files in os.walk(root / cls):
            dirnames.sort()
            for name in sorted(files):
                if name.lower().endswith(exts):
                    p = Path(dirpath) / name
                    samples.append(ShardSample(p, p.relative_to(root).as_posix(), idx))
    if not samples:
        raise DataFormatError(f"no images with extensions {list(exts)} in class folders under {root}")
    return samples, classes


def collect_index_file(index_file: Path, base: Path | None = None,
                       classes_file: Path | None = None) -> tuple[list[ShardSample], list[str]]:
    """Images listed in an index file: a JSON list of paths (relative to ``base``, default the
    index file's folder) or a text file with one path per line. The class is the parent folder
    name; its number comes from ``classes_file`` (``{name: {"id": n}}`` or ``{name: n}``) or the
    sorted class names."""
    index_file = Path(index_file)
    text = index_file.read_text(encoding="utf-8")
    try:
        paths = json.loads(text)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise DataFormatError(f"{index_file}: expected a JSON list of paths")
    except json.JSONDecodeError:
        paths = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    base = Path(base) if base is not None else index_file.parent
    names = sorted({Path(p).parent.name for p in paths})
    if classes_file is not None:
        raw = json.loads(Path(classes_file).read_text(encoding="utf-8"))
        mapping = {k: int(v["id"] if isinstance(v, dict) else v) for k, v in raw.items()}
        unknown = sorted(set(names) - set(mapping))
        if unknown:
            raise DataFormatError(f"{classes_file} has no id for classes {unknown[:5]}")
        classes = [c for c, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    else:
        mapping = {c: i for i, c in enumerate(names)}
        classes = names
    samples = []
    for p in paths:
        full = base / p
        if not full.is_file():
            raise FileNotFoundError(f"{index_file} lists {p!r}, but {full} does not exist")
        samples.append(ShardSample(full, Path(p).as_posix(), mapping[Path(p).parent.name]))
    if not samples:
        raise DataFormatError(f"{index_file} lists no images")
    return samples, classes


class _Output:
    """Where shards go: a local directory (temp file + rename) or a store URL (one PUT)."""

    def __init__(self, output: str, storage_options: dict) -> None:
        from ..storage.url import is_remote_url, local_path

        self.remote = is_remote_url(output)
        if self.remote:
            from ..storage import open_store

            self.store = open_store(output, **storage_options)
            self.dir = Path(tempfile.gettempdir())
        else:
            self.store = None
            self.dir = local_path(output)
            self.dir.mkdir(parents=True, exist_ok=True)
        self.output = output

    def temp(self, name: str) -> "AtomicFile | _Upload":
        """Where ``name`` is written before :meth:`commit` publishes it (``.file``, ``.discard()``)."""
        if self.store is None:
            return AtomicFile(self.dir / name, "w+b", fsync=True)
        return _Upload()

    def commit(self, staged: "AtomicFile | _Upload", name: str) -> str:
        if isinstance(staged, AtomicFile):
            return str(staged.commit())
        try:
            staged.file.seek(0)
            self.store.put(name, staged.file.read())
        finally:
            staged.discard()
        return self.store.describe(name)

    def put_bytes(self, name: str, data: bytes) -> str:
        staged = self.temp(name)
        try:
            staged.file.write(data)
        except BaseException:
            staged.discard()
            raise
        return self.commit(staged, name)


class _Upload:
    """A shard on its way to a remote store: an anonymous temporary file (no name, no mode)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile("w+b")

    def discard(self) -> None:
        self.file.close()


class ShardWriter:
    """Writes records to numbered shards, starting a new one past ``max_size`` bytes or
    ``max_count`` records. A record is ``(key, {ext: bytes})``."""

    def __init__(self, output: _Output, prefix: str, max_size: int, max_count: int = 0, compress: bool = False) -> None:
        self.output, self.prefix = output, prefix
        self.max_size, self.max_count, self.compress = max_size, max_count, compress
        self.suffix = ".tar.gz" if compress else ".tar"
        self.shards: list[dict[str, Any]] = []
        self._file = self._tar = self._staged = self._gz = None
        self._size = self._count = 0

    @staticmethod
    def record_size(files: dict[str, bytes]) -> int:
        return sum(512 + (len(d) + 511) // 512 * 512 for d in files.values())

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}{self.suffix}"
        self._staged = self.output.temp(name)
        self._file = self._staged.file
        self._name = name
        target = self._file
        if self.compress:
            # mtime=0 and no file name in the header: identical inputs give identical shards.
            self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._file, mtime=0)
            target = self._gz
        self._tar = tarfile.open(fileobj=target, mode="w", format=tarfile.PAX_FORMAT)
        self._size = self._count = 0

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        location = self.output.commit(self._staged, self._name)
        self.shards.append({"name": self._name, "records": self._count, "location": location})
        self._tar = self._file = self._gz = self._staged = None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        size = self.record_size(files)
        full = self._tar is not None and self._count > 0 and (
            (self.max_size and self._size + size > self.max_size) or (self.max_count and self._count >= self.max_count))
        if full:
            self._close()
        if self._tar is None:
            self._open()
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self._tar.addfile(info, io.BytesIO(data))
        self._size += size
        self._count += 1

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        """Drop the shard being written (its temp file); finished shards stay."""
        for obj in (self._tar, self._gz):
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        if self._staged is not None:
            self._staged.discard()
        self._tar = self._file = self._gz = self._staged = None


def write_shards(samples: list[ShardSample], classes: list[str], output: str, prefix: str = "shard",
                 shard_size: int = 256 * 1000**2, max_count: int = 0, compress: bool = False,
                 shuffle: bool = False, seed: int = 0, storage_options: dict | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Write ``samples`` as shards plus a manifest; returns the manifest."""
    from braceexpand import braceexpand
    from tqdm.auto import tqdm

    keys: dict[str, str] = {}
    for s in samples:
        key = _key_for(s.rel)
        if key in keys:
            raise ConfigError(f"{s.rel!r} and {keys[key]!r} map to the same record key {key!r}; rename one")
        keys[key] = s.rel
    order = list(samples)
    if shuffle:
        random.Random(seed).shuffle(order)
    out = _Output(output, dict(storage_options or {}))
    writer = ShardWriter(out, prefix, shard_size, max_count, compress)
    try:
        for s in tqdm(order, desc=f"writing {prefix} shards", unit="img", disable=not progress):
            ext = s.path.suffix.lower().lstrip(".") or "img"
            writer.write(_key_for(s.rel), {ext: s.path.read_bytes(), "cls": str(s.label).encode()})
        writer.close()
    except BaseException:
        writer.abort()
        raise
    n = len(writer.shards)
    template = f"{prefix}-{{{0:06d}..{n - 1:06d}}}{writer.suffix}" if n > 1 else writer.shards[0]["name"]
    assert list(braceexpand(template)) == [s["name"] for s in writer.shards]
    manifest = {"template": template, "shards": writer.shards, "records": len(order), "classes": classes,
                "shuffled": shuffle, "seed": seed if shuffle else None}
    out.put_bytes(f"{prefix}.json", json.dumps(manifest, indent=1).encode("utf-8"))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m concurrent_dataloader.tools.make_shards",
        description="Write tar shards (WebDataset convention: <key>.<ext> + <key>.cls) from an ImageFolder tree "
                    "or an index file, to a local folder or an s3:// prefix. Writes are atomic.")
    parser.add_argument("source", nargs="?", help="ImageFolder root (class folders); omit with --index-file")
    parser.add_argument("output", help="output folder, or s3://bucket/prefix")
    parser.add_argument("--index-file", type=Path, help="JSON list (or text lines) of image paths instead of a tree")
    parser.add_argument("--base", type=Path, help="folder the index file's paths are relative to "
                                                  "(default: the index file's folder)")
    parser.add_argument("--classes-file", type=Path, help="JSON {class: {'id': n}} or {class: n} for --index-file")
    parser.add_argument("--prefix", default="shard", help="shard name prefix (default: shard -> shard-000000.tar)")
    parser.add_argument("--shard-size", type=parse_size, default=parse_size("256MB"),
                        help="target bytes per shard, e.g. 256MB, 1GiB (default 256MB)")
    parser.add_argument("--max-count", type=int, default=0, help="at most this many records per shard (0: no limit)")
    parser.add_argument("--gzip", action="store_true", help="write .tar.gz shards")
    parser.add_argument("--extensions", default=",".join(DEFAULT_EXTENSIONS),
                        help="image extensions for a tree source, comma separated, case-insensitive")
    parser.add_argument("--shuffle", action="store_true", help="shuffle records across shards (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--endpoint-url", help="S3 endpoint for an s3:// output (credentials from the environment)")
    parser.add_argument("--region", help="S3 region")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.index_file is not None and args.source is not None:
        parser.error("give either a source folder or --index-file, not both")
    if args.index_file is None and args.source is None:
        parser.error("a source folder or --index-file is required")
    try:
        if args.index_file is not None:
            samples, classes = collect_index_file(args.index_file, args.base, args.classes_file)
        else:
            exts = [e if e.startswith(".") else "." + e for e in args.extensions.split(",") if e]
            samples, classes = collect_image_folder(Path(args.source), exts)
        options = {k: v for k, v in (("endpoint_url", args.endpoint_url), ("region_name", args.region)) if v}
        manifest = write_shards(samples, classes, args.output, args.prefix, args.shard_size, args.max_count,
                                args.gzip, args.shuffle, args.seed, options, progress=not args.no_progress)
    except (ConfigError, DataFormatError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {manifest['records']} records in {len(manifest['shards'])} shard(s): {manifest['template']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
