"""Shared fixtures: a real moto S3 server over HTTP on 127.0.0.1, and generated image datasets.

Nothing is downloaded; every image is made here.
"""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

S3_TEST_ACCESS_KEY = "testing-access-key"
S3_TEST_SECRET = "testing-secret-DO-NOT-LEAK-7f3a9c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free port. Yields its endpoint URL; stopped after the session."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_options(s3_server):
    """Keyword arguments for our S3 store / datasets pointing at the test server."""
    return {
        "endpoint_url": s3_server,
        "region_name": "us-east-1",
        "aws_access_key_id": S3_TEST_ACCESS_KEY,
        "aws_secret_access_key": S3_TEST_SECRET,
    }


@pytest.fixture
def s3_client(s3_options):
    """A plain boto3 client for arranging test data (created in the test process)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", config=Config(max_pool_connections=32), **s3_options)
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_client):
    """A fresh, empty bucket name for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def make_jpeg(seed: int, size: tuple[int, int] = (48, 32), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A small deterministic image (width, height) = size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size=(48, 32), ext=".JPEG") -> list[Path]:
    """ImageNet-style tree ``root/<wnid>/<wnid>_<n><ext>``; returns the files in sorted order."""
    files = []
    for c in range(classes):
        wnid = f"n{c:08d}"
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            p = root / wnid / f"{wnid}_{k}{ext}"
            p.write_bytes(make_jpeg(c * 1000 + k, size))
            files.append(p)
    return sorted(files)


@pytest.fixture
def image_folder(tmp_path):
    """A small ImageFolder tree (3 classes x 4 JPEGs, 48x32) plus index and classes JSON files.

    Returns a dict: root, files, index_file (relative keys), classes_file.
    """
    root = tmp_path / "train"
    files = write_image_folder(root)
    index = [str(p.relative_to(tmp_path)) for p in files]
    index_file = tmp_path / "index-train.json"
    index_file.write_text(json.dumps(index))
    classes = {f"n{c:08d}": {"id": c, "name": f"class_{c}"} for c in range(3)}
    classes_file = tmp_path / "train-classes.json"
    classes_file.write_text(json.dumps(classes))
    return {"base": tmp_path, "root": root, "files": files, "index": index,
            "index_file": index_file, "classes_file": classes_file}


def pytest_collection_finish(session):
    """Freeze what importing the test modules created (torch, botocore, moto: ~370k objects).

    Several tests call ``gc.collect()`` to drop a loader or an iterator on purpose; a full collection
    walks every tracked object, ~0.5-1.2 s each in this process. Frozen objects are skipped, so a
    collection costs only what the tests themselves made since.
    """
    import gc

    gc.collect()
    gc.freeze()
