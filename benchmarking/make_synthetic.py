"""Write a synthetic ImageNet-like dataset: JPEGs, the seed's JSON index/classes files, optionally a bucket.

Why synthetic: benchmarks and tests must run anywhere without downloading ImageNet, but the
loader's cost depends on realistic objects (about 500x375 pixels and 100 KB per JPEG, so
decoding costs what it costs on ImageNet). Each class has its own colour tint and shapes, so a
small model can actually learn something from it.

Layout under ``--out`` (keys in the bucket are the same relative paths)::

    train/<wnid>/<wnid>_<n>.JPEG            val/ILSVRC2012_val_<8 digits>.JPEG
    index-scratch-train.json  index-s3-train.json   (lists of relative paths / keys)
    index-scratch-val.json    index-s3-val.json
    imagenet-train-classes.json   {"<wnid>": {"id": i, "name": "..."}}
    imagenet-val-classes.json     {"<position in the val index>": class id}
    s3_credentials.json       (only with --endpoint-url: endpoint, bucket and the given keys)
    synthetic.json            (what was generated; written last, so its presence means "complete")

Scratch index entries are relative to ``--out`` (pass it as the dataset root).

    python -m benchmarking.make_synthetic --out data/synthetic --train 2000 --val 200 --classes 100
    python -m benchmarking.make_synthetic --out data/synthetic --endpoint-url http://127.0.0.1:9000 --bucket synthetic
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SyntheticSpec", "Painter", "make_synthetic", "wnid", "main"]

MANIFEST = "synthetic.json"


def wnid(c: int) -> str:
    """An ImageNet-style class id (``n`` + 8 digits) for class number ``c``."""
    return f"n{c:08d}"


@dataclass(frozen=True)
class SyntheticSpec:
    train: int = 2000
    val: int = 200
    classes: int = 100
    width: int = 500
    height: int = 375
    target_kb: float = 100.0
    seed: int = 0

    def validate(self) -> "SyntheticSpec":
        if self.train < 0 or self.val < 0 or self.train + self.val < 1:
            raise ValueError(f"need at least one image (train={self.train}, val={self.val})")
        if self.classes < 1:
            raise ValueError(f"classes must be >= 1, got {self.classes}")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"images must be at least 16x16, got {self.width}x{self.height}")
        if self.target_kb <= 0:
            raise ValueError(f"target_kb must be > 0, got {self.target_kb}")
        return self

    def train_keys(self) -> list[tuple[str, int]]:
        """(relative path, class) of every training image, class by class as in ImageNet."""
        per, extra = divmod(self.train, self.classes)
        out = []
        for c in range(self.classes):
            w = wnid(c)
            out += [(f"train/{w}/{w}_{n}.JPEG", c) for n in range(per + (1 if c < extra else 0))]
        return out

    def val_keys(self) -> list[tuple[str, int]]:
        rng = np.random.default_rng([self.seed, 7])
        labels = rng.integers(0, self.classes, self.val)
        return [(f"val/ILSVRC2012_val_{i + 1:08d}.JPEG", int(labels[i])) for i in range(self.val)]


class Painter:
    """Makes the images: a crop of a shared noisy texture, tinted per class, with class-coloured shapes.

    The texture is computed once, so an image costs a crop, a tint and a JPEG encode (a few ms).
    ``quality`` is calibrated so the average JPEG is close to ``target_kb``.
    """

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 1])
        h, w = 2 * spec.height, 2 * spec.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        tex = np.stack([
            128 + 70 * np.sin(xx / 23.0 + 1.0) + 30 * np.cos(yy / 17.0),
            128 + 70 * np.sin(yy / 29.0 + 2.0) + 30 * np.sin((xx - yy) / 41.0),
            128 + 60 * np.cos((xx + yy) / 31.0),
        ], -1)
        self._texture = tex
        self._noise = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
        self.noise = 14.0
        self.quality = 88
        self._tex8: np.ndarray | None = None
        self._calibrate()

    def _bake(self) -> None:
        self._tex8 = np.clip(self._texture + self.noise * self._noise, 0, 255).astype(np.uint8)

    def _calibrate(self) -> None:
        target = self.spec.target_kb * 1000
        samples = [(c % self.spec.classes, c) for c in range(8)]
        for _ in range(4):  # noise sets entropy (and decode cost), quality fine-tunes the size
            self._bake()
            lo, hi = 40, 95
            while lo < hi:
                self.quality = (lo + hi + 1) // 2
                mean = np.mean([len(self.encode(c, n)) for c, n in samples])
                if mean > target:
                    hi = self.quality - 1
                else:
                    lo = self.quality
            self.quality = lo
            mean = np.mean([len(self.encode(c, n)) for c, n in samples])
            if abs(mean - target) / target < 0.15:
                return
            self.noise *= min(4.0, max(0.25, (target / mean) ** 1.5))

    def image(self, cls: int, n: int) -> Any:
        from PIL import Image, ImageDraw

        spec = self.spec
        if self._tex8 is None:
            self._bake()
        rng = np.random.default_rng([spec.seed, cls, n])
        y = int(rng.integers(0, spec.height))
        x = int(rng.integers(0, spec.width))
        crop = self._tex8[y:y + spec.height, x:x + spec.width]  # type: ignore[index]
        crng = np.random.default_rng([spec.seed, 99, cls])
        tint = crng.integers(-70, 70, 3).astype(np.int16)
        arr = np.clip(crop.astype(np.int16) + tint, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(img)
        color = tuple(int(v) for v in crng.integers(0, 256, 3))
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = int(rng.integers(0, spec.width)), int(rng.integers(0, spec.height))
            r = int(rng.integers(spec.height // 12, spec.height // 4))
            box = [cx - r, cy - r, cx + r, cy + r]
            (draw.ellipse if cls % 2 == 0 else draw.rectangle)(box, fill=color)
        return img

    def encode(self, cls: int, n: int) -> bytes:
        buf = io.BytesIO()
        self.image(cls, n).save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def make_synthetic(out: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec(), *, store: Any = None,
                   workers: int | None = None, progress: bool = True, reuse: bool = True,
                   credentials: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the dataset under ``out`` (and into ``store``, a ByteStore such as an S3 bucket).

    With ``reuse`` and a complete earlier run of the same spec in ``out`` (its manifest matches),
    the local files are kept and only the upload (if any) is done. Returns the manifest.
    """
    from tqdm import tqdm

    from concurrent_dataloader.storage.local import LocalStore

    spec = spec.validate()
    root = Path(out)
    local = LocalStore(root)
    manifest_path = root / MANIFEST
    items = [(k, c, n) for n, (k, c) in enumerate(spec.train_keys())] + \
            [(k, c, 10**7 + n) for n, (k, c) in enumerate(spec.val_keys())]
    have = False
    if reuse and manifest_path.exists():
        try:
            have = json.loads(manifest_path.read_text()).get("spec") == asdict(spec)
        except (ValueError, OSError):
            have = False
    if not have and manifest_path.exists():
        manifest_path.unlink()  # about to rewrite: never leave a manifest for a half-written dataset
    painter = None if have else Painter(spec)

    def one(item: tuple[str, int, int]) -> int:
        key, cls, n = item
        data = local.get(key) if have else painter.encode(cls, n)  # type: ignore[union-attr]
        if not have:
            local.put(key, data)
        if store is not None:
            store.put(key, data)
        return len(data)

    total = 0
    if not have or store is not None:
        desc = ("uploading" if have else "writing") + f" {len(items)} images"
        with cf.ThreadPoolExecutor(workers or max(2, min(16, 2 * (os.cpu_count() or 1)))) as pool, \
                tqdm(total=len(items), desc=desc, unit="img", disable=not progress) as bar:
            for size in pool.map(one, items):
                total += size
                bar.update(1)

    train, val = spec.train_keys(), spec.val_keys()
    files: dict[str, Any] = {
        "index-scratch-train.json": [k for k, _ in train],
        "index-s3-train.json": [k for k, _ in train],
        "index-scratch-val.json": [k for k, _ in val],
        "index-s3-val.json": [k for k, _ in val],
        "imagenet-train-classes.json": {wnid(c): {"id": c, "name": f"synthetic_class_{c}"}
                                        for c in range(spec.classes)},
        "imagenet-val-classes.json": {str(i): c for i, (_, c) in enumerate(val)},
    }
    if credentials is not None:
        files["s3_credentials.json"] = credentials
    for name, obj in files.items():
        data = _json_bytes(obj)
        local.put(name, data)
        if store is not None and name != "s3_credentials.json":
            store.put(name, data)
    manifest = {"spec": asdict(spec), "images": len(items), "quality": painter.quality if painter else None}
    if have:
        manifest = json.loads(manifest_path.read_text())
    else:
        manifest["mean_kb"] = round(total / max(1, len(items)) / 1000, 1)
        local.put(MANIFEST, _json_bytes(manifest))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.make_synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    d = SyntheticSpec()
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=d.train, help=f"training images (default {d.train})")
    p.add_argument("--val", type=int, default=d.val, help=f"validation images (default {d.val})")
    p.add_argument("--classes", type=int, default=d.classes, help=f"classes (default {d.classes})")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--target-kb", type=float, default=d.target_kb, help="mean JPEG size to aim for (default 100)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=None, help="threads encoding/uploading")
    p.add_argument("--endpoint-url", default=None, help="also upload to this S3 endpoint")
    p.add_argument("--bucket", default="synthetic", help="bucket for the upload, created if missing")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--access-key", default=None, help="default: $AWS_ACCESS_KEY_ID, else 'bench' (local servers)")
    p.add_argument("--secret", default=None, help="default: $AWS_SECRET_ACCESS_KEY, else 'bench-secret'")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    args = p.parse_args(argv)
    spec = SyntheticSpec(args.train, args.val, args.classes, args.width, args.height, args.target_kb, args.seed)
    try:
        spec.validate()
    except ValueError as exc:
        p.error(str(exc))
    store = None
    credentials = None
    if args.endpoint_url:
        from concurrent_dataloader.storage.s3 import S3Error
        from concurrent_dataloader.storage.s3_http import LeanS3Store

        explicit = args.access_key is not None and args.secret is not None
        key = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID") or "bench"
        secret = args.secret or os.environ.get("AWS_SECRET_ACCESS_KEY") or "bench-secret"
        store = LeanS3Store(args.bucket, endpoint_url=args.endpoint_url, region_name=args.region,
                            aws_access_key_id=key, aws_secret_access_key=secret)
        try:
            store.client.create_bucket(args.bucket)
        except S3Error as exc:
            if getattr(exc, "code", "") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        credentials = {"bucket_name": args.bucket, "endpoint_url": args.endpoint_url, "region_name": args.region}
        if explicit or key == "bench":
            # NOTE: keys are written only when given on the command line or the local placeholders;
            # keys from the environment stay there.
            credentials.update(aws_access_key_id=key, aws_secret_access_key=secret)
    manifest = make_synthetic(args.out, spec, store=store, workers=args.workers, reuse=not args.force,
                              credentials=credentials)
    if store is not None:
        store.close()
    print(f"{manifest['images']} images (mean {manifest.get('mean_kb')} KB, JPEG quality {manifest.get('quality')}) "
          f"in {args.out}" + (f" and s3://{args.bucket} at {args.endpoint_url}" if store is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
