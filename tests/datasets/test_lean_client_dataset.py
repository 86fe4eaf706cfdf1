"""get_dataset(..., s3_client="lean"): the same samples through our SigV4 client as through botocore."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as F

from tests.datasets.helpers import upload_folder
from concurrent_dataloader import DataLoader, get_dataset
from concurrent_dataloader.storage import LeanS3Store, S3Store


def _build(image_folder, s3_bucket, s3_options, client):
    return get_dataset("s3", "train", index_file=image_folder["index_file"], classes_file=image_folder["classes_file"],
                       bucket=s3_bucket, s3_client=client, transform=F.pil_to_tensor, **s3_options)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_lean_client_matches_botocore(image_folder, s3_client, s3_bucket, s3_options, fetch_impl):
    upload_folder(s3_client, s3_bucket, image_folder["base"], image_folder["files"])
    lean = _build(image_folder, s3_bucket, s3_options, "lean")
    boto = _build(image_folder, s3_bucket, s3_options, "botocore")
    assert isinstance(lean.store, LeanS3Store) and isinstance(boto.store, S3Store)
    got = list(DataLoader(lean, batch_size=4, num_workers=2, fetch_impl=fetch_impl))
    ref = list(torch.utils.data.DataLoader(boto, batch_size=4))
    assert len(got) == len(ref) == 3
    for (gi, gl), (ri, rl) in zip(got, ref):
        assert torch.equal(gi, ri) and torch.equal(gl, rl) and gl.dtype == torch.int64


def test_lean_client_checks_the_bucket(image_folder, s3_options):
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        _build(image_folder, "no-such-bucket", s3_options, "lean")


def test_unknown_client_is_rejected(image_folder, s3_bucket, s3_options):
    with pytest.raises(ValueError, match="s3_client"):
        _build(image_folder, s3_bucket, s3_options, "curl")


@pytest.mark.parametrize("client", ["botocore", "lean"])
def test_max_object_bytes_reaches_the_store(image_folder, s3_client, s3_bucket, s3_options, client):
    upload_folder(s3_client, s3_bucket, image_folder["base"], image_folder["files"])
    ds = get_dataset("s3", "train", index_file=image_folder["index_file"], classes_file=image_folder["classes_file"],
                     bucket=s3_bucket, s3_client=client, max_object_bytes=64, verify_etag=True, **s3_options)
    with pytest.raises(OSError) as info:
        ds[0]
    assert "64" in str(info.value) and image_folder["index"][0] in str(info.value)
