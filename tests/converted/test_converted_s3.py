"""Readers over real S3 (moto on 127.0.0.1, real botocore/aiobotocore clients): one ranged GET
per sample after each file's metadata is read once per process."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import PILToTensor

from concurrent_dataloader import DataLoader
from concurrent_dataloader.errors import DataFormatError
from concurrent_dataloader.formats.converted import DenseIpcConverter, DenseMemmapConverter, get_format, open_converted
from tests.converted.helpers import ALL, DenseDataset, converter_kwargs, upload_dir, write_folder

pytest.importorskip("botocore")

N = 10


@pytest.fixture(scope="module")
def local_conversions(tmp_path_factory):
    base = tmp_path_factory.mktemp("s3conv")
    files = write_folder(base / "src", N, fmt="JPEG", ext=".jpg")
    outs = {}
    for fmt in ALL:
        outs[fmt] = base / fmt
        get_format(fmt).converter(str(base / "src"), outs[fmt], 4, 2, progress=False, **converter_kwargs(fmt)).convert()
    dense = DenseDataset(6)
    outs["dense_memmap"] = base / "dense_memmap"
    DenseMemmapConverter(dense, outs["dense_memmap"], 4, 2, progress=False, shape=(24, 40), im_mode="RGB").convert()
    outs["dense_ipc"] = base / "dense_ipc"
    DenseIpcConverter(dense, outs["dense_ipc"], 4, 2, progress=False).convert()
    return outs, files


@pytest.fixture(scope="module")
def s3_conversions(local_conversions, s3_options):
    """Uploaded once per module (read-only for the tests that use it)."""
    import boto3

    outs, files = local_conversions
    client = boto3.client("s3", **s3_options)
    bucket = f"converted-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    for fmt, path in outs.items():
        upload_dir(client, bucket, f"converted/{fmt}", path)
    client.close()
    return {fmt: f"s3://{bucket}/converted/{fmt}" for fmt in outs}, outs, files


def _tensors(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("fmt", ALL + ["dense_memmap", "dense_ipc"])
def test_s3_reader_matches_local(s3_conversions, s3_options, fmt, fetch_impl):
    urls, outs, _ = s3_conversions
    dense = fmt.startswith("dense")
    tt = (lambda m: torch.from_numpy(np.array(m))) if dense else None
    local = open_converted(outs[fmt], transform=PILToTensor(), target_transform=tt)
    remote = open_converted(urls[fmt], transform=PILToTensor(), target_transform=tt, storage_options=s3_options)
    with DataLoader(local, batch_size=4, num_workers=0) as a, \
            DataLoader(remote, batch_size=4, num_workers=0, num_fetch_workers=8, fetch_impl=fetch_impl) as b:
        (xa, ya), (xb, yb) = _tensors(a), _tensors(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("fmt", ["memmap", "hdf5", "parquet", "ipc", "tar"])
def test_s3_one_get_per_sample(s3_conversions, s3_options, fmt):
    urls, outs, files = s3_conversions
    reader = open_converted(urls[fmt], storage_options=s3_options)
    reader[4]  # file 1's footer/header/labels are now cached in this process
    before = reader.store.stats()["requests"]
    image, label = reader[6]
    assert reader.store.stats()["requests"] - before == 1
    assert label == files[6][1]
    if fmt in ("parquet", "ipc", "tar"):  # original bytes, fetched with one ranged GET
        assert reader.image_bytes(reader.fetch_raw(7)) == files[7][0].read_bytes()
    else:
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(files[6][0])))


def test_s3_reader_in_worker_processes(s3_conversions, s3_options):
    urls, outs, _ = s3_conversions
    reader = open_converted(urls["parquet"], transform=PILToTensor(), storage_options=s3_options)
    reader[0]  # the parent has a client now; forked workers must build their own
    local = open_converted(outs["parquet"], transform=PILToTensor())
    with DataLoader(reader, batch_size=3, num_workers=2, fetch_impl="asyncio") as loader:
        x, y = _tensors(loader)
    assert torch.equal(x, torch.stack([local[i][0] for i in range(N)]))


def test_s3_missing_metadata_is_clear(s3_client, s3_bucket, s3_options, local_conversions):
    outs, _ = local_conversions
    upload_dir(s3_client, s3_bucket, "partial", outs["memmap"])
    s3_client.delete_object(Bucket=s3_bucket, Key="partial/metadata/metadata.json")
    with pytest.raises(DataFormatError, match="metadata.json not found"):
        get_format("memmap").reader(f"s3://{s3_bucket}/partial", storage_options=s3_options)


def test_s3_short_file_is_clear(s3_client, s3_bucket, s3_options, local_conversions):
    outs, _ = local_conversions
    upload_dir(s3_client, s3_bucket, "short", outs["ipc"])
    key = "short/images/images_0.arrow"
    body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body[: len(body) - 100])
    reader = get_format("ipc").reader(f"s3://{s3_bucket}/short", storage_options=s3_options)
    with pytest.raises(DataFormatError, match="images_0.arrow"):
        reader[1]
    assert "DO-NOT-LEAK" not in repr(reader) + reader.describe(1)
