"""Builders for the tar tests: deterministic images and tar archives made in the test.

A separate module (not conftest) so spawn workers and several test files can import it.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from pathlib import Path
from typing import Iterable

import numpy as np


def jpeg(seed: int, size: tuple[int, int] = (40, 24), fmt: str = "JPEG") -> bytes:
    """A small deterministic image (width, height) = size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def tar_bytes(members: Iterable[tuple], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """Build a tar in memory. A member is (name, data) for a file, (name, None) for a directory,
    or (name, None, tarfile_type, linkname) for links/devices/FIFOs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            name, data = m[0], m[1]
            info = tarfile.TarInfo(name)
            if data is None and len(m) == 2:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif data is None:
                info.type = m[2]
                info.linkname = m[3] if len(m) > 3 else ""
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, kind: str | None) -> bytes:
    if kind is None:
        return data
    return {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data)


def write_tar(path: Path, members: Iterable[tuple], kind: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(tar_bytes(members), kind))
    return path


def class_members(classes=("cat", "dog", "eel"), per_class: int = 3, prefix: str = "", ext: str = ".jpg",
                  seed: int = 0) -> list[tuple[str, bytes]]:
    """``<prefix><class>/<n><ext>`` image members, with directory entries first."""
    out: list[tuple] = []
    for c, cls in enumerate(classes):
        out.append((f"{prefix}{cls}", None))
        for k in range(per_class):
            out.append((f"{prefix}{cls}/{k}{ext}", jpeg(seed + 100 * c + k)))
    return out
