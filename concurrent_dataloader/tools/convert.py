"""Convert an ImageFolder-style directory into a converted format (memmap, hdf5, parquet, ipc, tar).

Examples::

    python -m concurrent_dataloader.tools.convert memmap /data/train /data/train-memmap \\
        --images-per-file 1000 --batch-size 100 --num-workers 4 --shape 224 224 --mode RGB
    python -m concurrent_dataloader.tools.convert parquet /data/train /data/train-parquet --images-per-file 1000
    torchrun --nproc_per_node 8 -m concurrent_dataloader.tools.convert ipc /data/train /data/train-ipc --dist
    python -m concurrent_dataloader.tools.convert --list-formats

A rerun with the same arguments resumes an interrupted conversion. The exit status is 0 on
success, 2 for bad arguments or an output path holding another dataset, 1 for other errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from ..formats.converted import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m concurrent_dataloader.tools.convert",
        description="Convert an image folder (root/<class>/<image>) into a format that reads fast; "
                    "see docs/converted.md for the file layouts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="formats:\n" + "\n".join(f"  {name:13s} {spec.description}" for name, spec in sorted(FORMATS.items())
                                        if not name.startswith("dense")),
    )
    p.add_argument("format", nargs="?", help="output format (see below)")
    p.add_argument("input", nargs="?", help="input directory, ImageFolder layout")
    p.add_argument("output", nargs="?", help="output directory")
    p.add_argument("--list-formats", action="store_true", help="print the known formats and exit")
    p.add_argument("--images-per-file", type=int, default=1000, help="samples per output file (default 1000)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="loader batch size; must divide --images-per-file (default: largest divisor <= 100)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--num-fetch-workers", type=int, default=8, help="concurrent reads per worker (default 8)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                   help="fixed-size formats: image height and width")
    p.add_argument("--mode", default=None, help="fixed-size formats: image mode, e.g. RGB or L")
    p.add_argument("--reencode", choices=["JPEG", "PNG", "WEBP"], default=None,
                   help="flexible-size formats: re-encode images (default: keep the original bytes)")
    p.add_argument("--quality", type=int, default=None, help="JPEG/WEBP quality with --reencode")
    p.add_argument("--no-verify-images", action="store_true",
                   help="flexible-size formats: skip checking that each image decodes")
    p.add_argument("--row-group-size", type=int, default=None, help="parquet: rows per row group (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset at the output path")
    p.add_argument("--dist", action="store_true",
                   help="distributed conversion: rank/world from --rank/--num-replicas, torchrun or SLURM")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--num-replicas", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verify", action="store_true",
                   help="after converting, read every sample back through the reader and report")
    return p


def _default_batch(images_per_file: int) -> int:
    return max(d for d in range(1, min(100, images_per_file) + 1) if images_per_file % d == 0)


def _verify(spec, output: str) -> dict:
    from ..loader.dataloader import DataLoader

    reader = spec.reader(output)
    start = time.perf_counter()
    count = 0
    with DataLoader(reader, batch_size=64, num_workers=0, collate_fn=lambda b: len(b)) as loader:
        for n in loader:
            count += n
    if count != len(reader):
        raise RuntimeError(f"verify: read {count} samples, metadata says {len(reader)}")
    return {"verified_samples": count, "verify_seconds": round(time.perf_counter() - start, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import ConfigError
    from ..formats.converted import FORMATS, get_format

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_formats:
        for name, spec in sorted(FORMATS.items()):
            kind = "fixed-size" if spec.fixed_size else "flexible-size"
            print(f"{name:13s} {kind:14s} {spec.converter.__name__:22s} {spec.reader.__name__:20s} {spec.description}")
        return 0
    if not (args.format and args.input and args.output):
        parser.error("format, input and output are required (or --list-formats)")
    try:
        spec = get_format(args.format)
        if spec.converter.dense:
            raise ConfigError(f"{args.format} needs a Dataset yielding (image, label_map); use the Python API")
        kwargs: dict = dict(num_workers=args.num_workers, dist=args.dist, rank=args.rank,
                            num_replicas=args.num_replicas, overwrite=args.overwrite,
                            progress=not args.no_progress, num_fetch_workers=args.num_fetch_workers)
        if spec.fixed_size:
            if args.shape is None or args.mode is None:
                raise ConfigError(f"{args.format} stores fixed-size images: pass --shape HEIGHT WIDTH and --mode")
            kwargs.update(shape=tuple(args.shape), im_mode=args.mode)
        else:
            if args.shape or args.mode:
                raise ConfigError(f"{args.format} keeps each image's own size; --shape/--mode apply to memmap/hdf5")
            kwargs.update(reencode=args.reencode, quality=args.quality, verify_images=not args.no_verify_images)
            if args.row_group_size is not None:
                if args.format != "parquet":
                    raise ConfigError("--row-group-size applies to parquet only")
                kwargs["row_group_size"] = args.row_group_size
        batch = args.batch_size or _default_batch(args.images_per_file)
        converter = spec.converter(args.input, args.output, args.images_per_file, batch, **kwargs)
        result = converter.convert()
        summary = {"format": result.format, "output": result.output_path, "rank": result.rank,
                   "num_replicas": result.num_replicas, "files_written": result.files_written,
                   "files_skipped": result.files_skipped, "images_written": result.images_written,
                   "total_files": result.total_files, "seconds": round(result.seconds, 3),
                   "images_per_second": round(result.images_per_second, 1)}
        if args.verify and result.rank == 0:
            summary.update(_verify(spec, args.output))
        print(json.dumps(summary))
        return 0
    except ValueError as exc:  # ConfigError, DataFormatError, OutputExistsError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
