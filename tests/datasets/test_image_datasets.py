"""S3 and scratch image datasets through our DataLoader and the stock torch DataLoader.

Real moto S3 over HTTP; images generated in the tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from tests.datasets.helpers import make_jpeg, upload_folder
from PIL import Image

from benchmarking.misc.init_benchmarking import get_dataset as seed_get_dataset
from concurrent_dataloader import DataLoader, S3ImageDataset, ScratchImageDataset, get_dataset
from concurrent_dataloader.storage import ObjectNotFoundError, RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def s3_images(image_folder, s3_client, s3_bucket, s3_options):
    """The image_folder tree uploaded to a fresh bucket (keys = index entries)."""
    upload_folder(s3_client, s3_bucket, image_folder["base"], image_folder["files"])
    return dict(image_folder, bucket=s3_bucket)


def expected_pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def make(kind: str, data: dict, s3_options: dict, **kwargs):
    if kind == "s3":
        opts = dict(s3_options, bucket=data["bucket"], retry=FAST_RETRY)
    else:
        opts = dict(root=data["base"])
    opts.update(kwargs)
    return get_dataset(kind, "train", index_file=data["index_file"], classes_file=data["classes_file"], **opts)


def collect(loader) -> tuple[list[np.ndarray], torch.Tensor]:
    images, labels = [], []
    for x, y in loader:
        assert y.dtype == torch.int64
        images.extend(t.numpy() for t in x)
        labels.append(y)
    return images, torch.cat(labels)


def check_all(images, labels, data) -> None:
    assert len(images) == len(data["files"])
    for img, path in zip(images, data["files"]):
        np.testing.assert_array_equal(img, expected_pixels(path))
    want = [int(p.parent.name[1:]) for p in data["files"]]  # class n0000000c has id c
    assert labels.tolist() == want


@pytest.mark.parametrize("kind", ["s3", "scratch"])
@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_our_dataloader_reads_every_image(kind, fetch_impl, num_workers, s3_images, s3_options):
    ds = make(kind, s3_images, s3_options)
    assert isinstance(ds, S3ImageDataset if kind == "s3" else ScratchImageDataset)
    ds.set_transform(T.PILToTensor())
    with DataLoader(ds, batch_size=5, num_workers=num_workers, num_fetch_workers=4, fetch_impl=fetch_impl) as loader:
        for _epoch in range(2):
            images, labels = collect(loader)
            check_all(images, labels, s3_images)


@pytest.mark.parametrize("kind", ["s3", "scratch"])
def test_stock_torch_dataloader(kind, s3_images, s3_options):
    ds = make(kind, s3_images, s3_options, transform=T.PILToTensor())
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    images, labels = collect(loader)
    check_all(images, labels, s3_images)


def test_spawn_workers(s3_images, s3_options):
    ds = make("s3", s3_images, s3_options, transform=T.PILToTensor(), limit=4)
    with DataLoader(ds, batch_size=2, num_workers=1, multiprocessing_context="spawn", fetch_impl="asyncio",
                    num_fetch_workers=2) as loader:
        images, labels = collect(loader)
    check_all(images, labels, dict(s3_images, files=s3_images["files"][:4]))


def test_seed_import_path_and_describe(s3_images, s3_options):
    ds = seed_get_dataset("S3", dataset_type="train", limit=None, use_cache=False,
                          index_file=s3_images["index_file"], classes_file=s3_images["classes_file"],
                          s3_credential_file=None, bucket=s3_images["bucket"], **s3_options)
    assert len(ds) == len(s3_images["files"])
    assert ds.describe(0) == f"s3://{s3_images['bucket']}/{s3_images['index'][0]}"
    img, label = ds[0]
    assert img.mode == "RGB" and label == 0
    scratch = make("scratch", s3_images, s3_options)
    assert scratch.describe(1) == str(s3_images["base"] / s3_images["index"][1])


def test_limit_takes_the_first_n(s3_images, s3_options):
    ds = make("scratch", s3_images, s3_options, limit=5)
    assert len(ds) == 5 and ds.keys == s3_images["index"][:5]
    assert len(make("scratch", s3_images, s3_options, limit=1000)) == len(s3_images["index"])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="limit"):
            make("scratch", s3_images, s3_options, limit=bad)


@pytest.mark.parametrize("kind", ["s3", "scratch"])
def test_val_classes_by_position(kind, s3_images, s3_options, tmp_path):
    n = len(s3_images["index"])
    val = {str(i): (7 * i) % 5 for i in range(n)}
    val_file = tmp_path / "val-classes.json"
    val_file.write_text(json.dumps(val))
    opts = dict(s3_options, bucket=s3_images["bucket"]) if kind == "s3" else dict(root=s3_images["base"])
    ds = get_dataset(kind, "val", index_file=s3_images["index_file"], classes_file=val_file,
                     transform=T.PILToTensor(), **opts)
    with DataLoader(ds, batch_size=4, num_workers=0, fetch_impl="asyncio") as loader:
        images, labels = collect(loader)
    assert labels.tolist() == [val[str(i)] for i in range(n)]


# --------------------------------------------------------------------------- errors during loading
def _corrupt_and_delete(data, s3_client, kind):
    """Entry 3 truncated, entry 6 missing; returns their keys."""
    corrupt, missing = data["index"][3], data["index"][6]
    full = (data["base"] / corrupt).read_bytes()
    if kind == "s3":
        s3_client.put_object(Bucket=data["bucket"], Key=corrupt, Body=full[: len(full) // 3])
        s3_client.delete_object(Bucket=data["bucket"], Key=missing)
    else:
        (data["base"] / corrupt).write_bytes(full[: len(full) // 3])
        (data["base"] / missing).unlink()
    return corrupt, missing


def _load_error_texts(ds, loader_kind: str, num_workers: int) -> tuple[str, str]:
    """Load entries 0-2 (fine), then [2, 3] (3 corrupt) and [5, 6] (6 missing); return the two messages.

    A Subset is used on purpose: the message must still name the position in the dataset's index.
    """
    def load(indices):
        sub = torch.utils.data.Subset(ds, indices)
        if loader_kind == "torch":
            loader = torch.utils.data.DataLoader(sub, batch_size=2, num_workers=num_workers)
        else:
            loader = DataLoader(sub, batch_size=2, num_workers=num_workers, fetch_impl=loader_kind,
                                num_fetch_workers=2)
        try:
            return list(loader)
        finally:
            if hasattr(loader, "close"):
                loader.close()

    assert len(load([0, 1, 2])) == 2
    with pytest.raises(Exception) as info:
        load([2, 3])
    corrupt_text = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    with pytest.raises(FileNotFoundError) as info:
        load([5, 6])
    missing_text = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    return corrupt_text, missing_text


@pytest.mark.parametrize("kind", ["s3", "scratch"])
@pytest.mark.parametrize("loader_kind", ["threaded", "asyncio", "torch"])
def test_missing_object_and_corrupt_image_name_key_and_index(kind, loader_kind, s3_images, s3_options, s3_client):
    ds = make(kind, s3_images, s3_options, transform=T.PILToTensor())
    corrupt, missing = _corrupt_and_delete(s3_images, s3_client, kind)
    corrupt_text, missing_text = _load_error_texts(ds, loader_kind, num_workers=0)
    assert "cannot decode image" in corrupt_text and corrupt in corrupt_text and "index 3" in corrupt_text
    assert missing in missing_text and "index 6" in missing_text, missing_text
    if kind == "s3":
        assert f"s3://{s3_images['bucket']}/{missing}" in missing_text


@pytest.mark.parametrize("loader_kind", ["asyncio", "torch"])
def test_loading_errors_cross_worker_processes(loader_kind, s3_images, s3_options, s3_client):
    ds = make("s3", s3_images, s3_options, transform=T.PILToTensor())
    corrupt, missing = _corrupt_and_delete(s3_images, s3_client, "s3")
    corrupt_text, missing_text = _load_error_texts(ds, loader_kind, num_workers=1)
    assert "worker process" in missing_text  # really raised in a worker
    assert "cannot decode image" in corrupt_text and corrupt in corrupt_text and "index 3" in corrupt_text
    assert f"s3://{s3_images['bucket']}/{missing}" in missing_text and "index 6" in missing_text


def test_missing_object_in_main_process_keeps_type(s3_images, s3_options, s3_client):
    ds = make("s3", s3_images, s3_options)
    s3_client.delete_object(Bucket=s3_images["bucket"], Key=s3_images["index"][2])
    with pytest.raises(ObjectNotFoundError) as info:
        ds[2]
    assert any("index 2" in n for n in info.value.__notes__)
    with pytest.raises(Exception, match="cannot decode"):
        ds.decode(0, b"not an image")


def test_repr_is_short_and_secret_free(s3_images, s3_options):
    ds = make("s3", s3_images, s3_options)
    text = repr(ds)
    assert s3_images["bucket"] in text and s3_options["aws_secret_access_key"] not in text
    assert len(text) < 300


def test_keys_are_packed_but_behave_like_a_list(tmp_path):
    names = ["n00000000/n00000000_é.JPEG", "n00000000/n00000000_日本.JPEG", "n00000001/n00000001_x.JPEG"]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(make_jpeg(i))
    ds = ScratchImageDataset(tmp_path, names, [0, 0, 1], transform=T.PILToTensor())
    assert ds.keys == names and ds.labels == [0, 0, 1] and ds.key(-1) == names[-1]
    assert ds.describe(1) == str(tmp_path / names[1])
    assert ds[1][0].shape == (3, 16, 24) and type(ds[2][1]) is int
    with pytest.raises(IndexError, match="out of range"):
        ds.fetch_raw(3)
    import pickle

    clone = pickle.loads(pickle.dumps(ds))
    assert clone.keys == names and torch.equal(clone[0][0], ds[0][0])
