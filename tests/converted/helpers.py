"""Helpers for the converted-format tests: generated images, folders and torch Datasets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

FIXED = ["memmap", "hdf5"]
FLEXIBLE = ["parquet", "ipc", "tar"]
ALL = FIXED + FLEXIBLE
# (height, width): deliberately not square, so a swapped shape cannot pass.
SHAPE = (24, 40)


def make_image(seed: int, shape=SHAPE, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    h, w = shape
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_folder(root: Path, n: int = 10, classes: int = 3, shape=SHAPE, mode: str = "RGB",
                 fmt: str = "PNG", ext: str = ".png") -> list[tuple[Path, int]]:
    """ImageFolder tree with ``n`` images spread over ``classes``; returns (path, label) in
    ImageFolder order (sorted class folders, sorted files)."""
    out = []
    for i in range(n):
        c = i % classes
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img_{i:03d}{ext}"
        p.write_bytes(encode(make_image(i, shape, mode), fmt))
        out.append((p, c))
    return sorted(out, key=lambda t: (t[1], str(t[0])))


class PILDataset(Dataset):
    """In-memory dataset of (PIL image, int label), like a torchvision dataset with a transform."""

    def __init__(self, images, labels, classes=None):
        self.images = list(images)
        self.labels = list(labels)
        if classes is not None:
            self.classes = classes
            self.class_to_idx = {c: i for i, c in enumerate(classes)}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def pil_dataset(n: int = 10, shape=SHAPE, mode: str = "RGB") -> PILDataset:
    return PILDataset([make_image(100 + i, shape, mode) for i in range(n)], [i % 4 for i in range(n)],
                      classes=["a", "b", "c", "d"])


class DenseDataset(Dataset):
    """(image, label map) pairs, as a segmentation dataset yields them."""

    def __init__(self, n: int = 6, shape=SHAPE, label_mode: str = "L", as_bytes: bool = False):
        rng = np.random.default_rng(7)
        h, w = shape
        self.images = [make_image(200 + i, shape) for i in range(n)]
        self.masks = []
        for _ in range(n):
            m = rng.integers(0, 21, (h, w), dtype=np.uint8)
            img = Image.frombytes(label_mode, (w, h), m.tobytes())
            if label_mode == "P":  # values are palette indices
                img.putpalette([v for k in range(256) for v in (k, 255 - k, (k * 7) % 256)])
            self.masks.append(img)
        self.as_bytes = as_bytes

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.as_bytes:
            return encode(self.images[i]), encode(self.masks[i])
        return self.images[i], self.masks[i]


def converter_kwargs(fmt: str, mode: str = "RGB", shape=SHAPE) -> dict:
    return {"shape": shape, "im_mode": mode} if fmt in FIXED else {}


def pixels(img) -> np.ndarray:
    return np.asarray(img)


def upload_dir(s3_client, bucket: str, prefix: str, local: Path) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            s3_client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")
