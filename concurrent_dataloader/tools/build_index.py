"""Build the seed's index and classes JSON files from an ImageFolder tree, local or in S3.

    python -m concurrent_dataloader.tools.build_index scratch/imagenet/train \\
        --index index-scratch-train.json --classes imagenet-train-classes.json
    python -m concurrent_dataloader.tools.build_index s3://my-bucket/imagenet/train \\
        --index index-s3-train.json --classes imagenet-train-classes.json --endpoint-url http://127.0.0.1:9000
    python -m concurrent_dataloader.tools.build_index scratch/imagenet/val --type val \\
        --train-classes imagenet-train-classes.json --index index-scratch-val.json --classes imagenet-val-classes.json

The class of an image is its parent folder (``<wnid>/<wnid>_<n>.JPEG``). Train classes are
``{wnid: {"id", "name"}}`` with ids in sorted wnid order (or taken from ``--train-classes``);
val classes are ``{"<position in index>": id}``. Both files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from ..datasets.cli import add_s3_arguments, s3_options_from_args
from ..datasets.files import TrainClasses, parse_classes, read_json, write_json_atomic
from ..errors import ConfigError, DataFormatError

__all__ = ["main", "list_local", "list_s3", "build"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def _wanted(name: str, extensions: tuple[str, ...]) -> bool:
    return not posixpath.basename(name).startswith(".") and name.lower().endswith(extensions)


def list_local(root: str, relative_to: str | None, extensions: tuple[str, ...], progress: bool) -> list[str]:
    """Image files under ``root``, as ``root``-joined paths (or relative to ``relative_to``), sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source directory {root} does not exist")
    entries = []
    with tqdm(desc=f"scanning {root}", unit="file", disable=not progress) as bar:
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for name in sorted(files):
                if _wanted(name, extensions):
                    path = os.path.join(dirpath, name)
                    if os.path.samefile(dirpath, root):
                        raise ConfigError(f"{path!r} is not inside a class folder: expected <source>/<class>/<image>")
                    if relative_to is not None:
                        path = os.path.relpath(path, relative_to)
                    entries.append(path.replace(os.sep, "/"))
                    bar.update(1)
    return sorted(entries)


def list_s3(url: str, relative_to: str | None, extensions: tuple[str, ...], progress: bool,
            s3_options: dict) -> list[str]:
    """Object keys under an ``s3://bucket/prefix`` (ListObjectsV2, paginated), sorted.

    Keys are bucket-relative (what ``get_dataset("s3", bucket=...)`` expects), or relative to
    the key prefix ``relative_to``.
    """
    from ..storage.s3 import S3Store, parse_s3_url

    bucket, prefix = parse_s3_url(url)
    store = S3Store(bucket, **s3_options)
    try:
        store.check()
        with tqdm(desc=f"listing {url}", unit="key", disable=not progress) as bar:
            keys = []
            for key in store.list(prefix):
                if _wanted(key, extensions):
                    if "/" not in key[len(prefix):].lstrip("/"):
                        raise ConfigError(f"s3://{bucket}/{key} is not inside a class folder: expected "
                                          "<prefix>/<class>/<image>")
                    if relative_to is not None:
                        base = relative_to.rstrip("/") + "/"
                        if not key.startswith(base):
                            raise ConfigError(f"key {key!r} is not under --relative-to {relative_to!r}")
                        key = key[len(base):]
                    keys.append(key)
                    bar.update(1)
    finally:
        store.close()
    return keys


def _read_names(path: str | None) -> dict[str, str]:
    """``{wnid: name}`` JSON, or ImageNet's ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``)."""
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DataFormatError(f"names file {path}: expected a JSON object {{wnid: name}}")
        return data
    names = {}
    for line in text.splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name.split(",")[0].strip().replace(" ", "_") or wnid
    return names


def build(entries: Iterable[str], dataset_type: str, names: dict[str, str],
          train_classes: TrainClasses | None) -> tuple[list[str], dict]:
    """The index and the classes object for ``entries`` (class = parent folder name)."""
    index = list(entries)
    if not index:
        raise ConfigError("no images found (check the source and --extensions)")
    wnids = [posixpath.basename(posixpath.dirname(e)) for e in index]
    if any(not w for w in wnids):
        first = next(e for e, w in zip(index, wnids) if not w)
        raise ConfigError(f"{first!r} is not inside a class folder: expected <source>/<class>/<image>")
    if train_classes is not None:
        unknown = sorted(set(wnids) - set(train_classes.ids))
        if unknown:
            raise DataFormatError(f"--train-classes {train_classes.source}: has no class for folder(s) {unknown[:5]}")
        ids = train_classes.ids
        all_names = train_classes.names
    else:
        ids = {w: i for i, w in enumerate(sorted(set(wnids)))}
        all_names = {w: names.get(w, w) for w in ids}
    if dataset_type == "train":
        used = sorted(set(wnids), key=lambda w: ids[w])
        return index, {w: {"id": ids[w], "name": all_names.get(w, w)} for w in used}
    return index, {str(i): ids[w] for i, w in enumerate(wnids)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m concurrent_dataloader.tools.build_index",
        description="Write the index and classes JSON files for get_dataset from an ImageFolder tree "
                    "(a local directory or an s3://bucket/prefix).")
    parser.add_argument("source", help="local directory or s3://bucket/prefix; images in <class>/ subfolders")
    parser.add_argument("--index", required=True, metavar="JSON", help="index file to write")
    parser.add_argument("--classes", required=True, metavar="JSON", help="classes file to write")
    parser.add_argument("--type", dest="dataset_type", choices=["train", "val"], default="train",
                        help="train: {wnid: {id, name}}; val: {\"<position>\": id} (default train)")
    parser.add_argument("--relative-to", metavar="DIR_OR_PREFIX",
                        help="write entries relative to this directory (local) or key prefix (S3); default: local "
                             "entries start with SOURCE as given, S3 entries are bucket-relative keys")
    parser.add_argument("--train-classes", metavar="JSON", help="take class ids from this train classes file")
    parser.add_argument("--names", metavar="FILE", help="class names: JSON {wnid: name} or LOC_synset_mapping.txt")
    parser.add_argument("--extensions", default=",".join(IMAGE_EXTENSIONS),
                        help="comma-separated image extensions (case-insensitive)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_s3_arguments(parser)
    args = parser.parse_args(argv)
    extensions = tuple(e.strip().lower() if e.strip().startswith(".") else "." + e.strip().lower()
                       for e in args.extensions.split(",") if e.strip())
    try:
        train_classes = None
        if args.train_classes:
            parsed = parse_classes(read_json(args.train_classes, "classes"), args.train_classes)
            if not isinstance(parsed, TrainClasses):
                raise DataFormatError(f"--train-classes {args.train_classes}: expected a train classes file "
                                      '{wnid: {"id": int, "name": str}}')
            train_classes = parsed
        if args.source.startswith("s3://"):
            entries = list_s3(args.source, args.relative_to, extensions, not args.no_progress,
                              s3_options_from_args(args))
        else:
            entries = list_local(args.source, args.relative_to, extensions, not args.no_progress)
        index, classes = build(entries, args.dataset_type, _read_names(args.names), train_classes)
        write_json_atomic(args.index, index)
        write_json_atomic(args.classes, classes, indent=1)
    except (OSError, ValueError) as exc:
        print(f"build_index: error: {exc}", file=sys.stderr)
        return 1
    n_classes = len(set(classes.values())) if args.dataset_type == "val" else len(classes)
    print(f"wrote {args.index} ({len(index)} entries) and {args.classes} ({n_classes} classes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
