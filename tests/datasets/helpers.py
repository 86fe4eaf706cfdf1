"""Helpers shared by the dataset tests (a module, not conftest, so test files can import it)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_jpeg(seed: int, size: tuple[int, int] = (24, 16), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A small deterministic image (width, height) = size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def upload_folder(client, bucket: str, base: Path, files) -> list[str]:
    """Upload ``files`` (paths under ``base``) with keys relative to ``base``; return the keys."""
    keys = []
    for f in files:
        key = f.relative_to(base).as_posix()
        client.put_object(Bucket=bucket, Key=key, Body=f.read_bytes())
        keys.append(key)
    return keys
