"""DatasetAccessor (our datasets as batchup array-likes, fetched concurrently) and
DataSourceDataset (batchup data sources as torch Datasets)."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.batchup.helpers import PROXY_LATENCY_S, FileImageDataset, LeakCheck, S3BytesDataset, write_images
from concurrent_dataloader import DataLoader
from concurrent_dataloader.batchup import DatasetAccessor, DataSourceDataset, data_source, work_pool

IMPLS = ["threaded", "asyncio"]


@pytest.fixture
def images(tmp_path):
    paths = write_images(tmp_path / "img", [(f"im{k:02d}.png", (12, 8)) for k in range(20)])
    pixels = np.stack([np.array(Image.open(p)) for p in paths])
    return paths, pixels


@pytest.mark.parametrize("impl", IMPLS)
def test_accessor_indexing(images, impl):
    paths, pixels = images
    with DatasetAccessor(FileImageDataset(paths), num_fetch_workers=4, fetch_impl=impl) as acc:
        assert len(acc) == 20
        np.testing.assert_array_equal(acc[3], pixels[3])
        np.testing.assert_array_equal(acc[np.int64(3)], pixels[3])
        np.testing.assert_array_equal(acc[-1], pixels[19])
        idx = np.array([7, 0, 19, 7])
        batch = acc[idx]
        assert isinstance(batch, np.ndarray) and batch.shape == (4, 8, 12, 3)
        np.testing.assert_array_equal(batch, pixels[idx])
        np.testing.assert_array_equal(acc[2:11:3], pixels[2:11:3])
        np.testing.assert_array_equal(acc[np.array([-2], dtype=np.int32)], pixels[[18]])
        assert acc[np.array([], dtype=np.int64)].shape == (0,)


def test_accessor_bad_indices_give_the_seed_errors(images):
    paths, _ = images
    acc = DatasetAccessor(FileImageDataset(paths), num_fetch_workers=2)
    with pytest.raises(ValueError, match=r"^index array should only have 1 dimension, not 2$"):
        acc[np.zeros((2, 2), dtype=int)]
    with pytest.raises(TypeError, match=r"^index should be an integer or a NumPy array, not a <class 'list'>$"):
        acc[[1, 2]]
    with pytest.raises(TypeError, match="index should be an integer or a NumPy array"):
        acc["3"]
    with pytest.raises(TypeError, match="index should be an integer"):
        acc[True]
    with pytest.raises(TypeError, match="integer dtype, not float64"):
        acc[np.array([1.0, 2.0])]
    with pytest.raises(IndexError, match="index 20 is out of range"):
        acc[np.array([0, 20])]
    with pytest.raises(IndexError):
        acc[-21]
    acc.close()


def test_accessor_collate_and_field(tmp_path):
    sizes = [(10, 8), (10, 8), (6, 4)]
    paths = write_images(tmp_path, [(f"x{k}.png", s) for k, s in enumerate(sizes)])
    labels = np.array([5, 6, 7])
    ds = FileImageDataset(paths, labels=labels)
    with DatasetAccessor(ds, collate="list") as acc:
        out = acc[np.array([2, 0])]
        assert isinstance(out, list) and out[0][0].shape == (4, 6, 3) and out[1][1] == 5
    with DatasetAccessor(ds) as acc:
        imgs, labs = acc[np.array([0, 1])]  # tuple samples: stacked per field
        assert imgs.shape == (2, 8, 10, 3) and labs.tolist() == [5, 6]
        with pytest.raises(ValueError, match=r"index 0 has shape \(8, 10, 3\) but index 2 has shape \(4, 6, 3\).*collate='list'"):
            acc[np.array([0, 2])]
    with DatasetAccessor(ds, field=1) as acc:
        assert acc[np.array([2, 1, 0])].tolist() == [7, 6, 5]
        assert acc[1] == 6
    with DatasetAccessor(ds, field=0, collate=lambda xs: [x.shape for x in xs]) as acc:
        assert acc[np.array([0, 2])] == [(8, 10, 3), (4, 6, 3)]
    with pytest.raises(ValueError, match="collate"):
        DatasetAccessor(ds, collate="concat")
    with pytest.raises(TypeError, match="map-style"):
        DatasetAccessor(object())


@pytest.mark.parametrize("impl", IMPLS)
def test_accessor_fetch_error_names_the_sample(tmp_path, impl):
    paths = write_images(tmp_path, [(f"x{k}.png", (4, 4)) for k in range(4)])
    os.remove(paths[2])
    with DatasetAccessor(FileImageDataset(paths), fetch_impl=impl) as acc:
        with pytest.raises(FileNotFoundError) as info:
            acc[np.arange(4)]
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "index 2" in notes and paths[2] in notes


@pytest.mark.parametrize("impl", IMPLS)
def test_accessor_in_array_data_source(images, impl):
    paths, pixels = images
    y = np.arange(20) * 10
    with DatasetAccessor(FileImageDataset(paths), num_fetch_workers=8, fetch_impl=impl) as acc:
        ds = data_source.ArrayDataSource([acc, y], indices=np.arange(2, 20), include_indices=True)
        order = np.arange(2, 20)[np.random.RandomState(12345).permutation(18)]
        seen = []
        for idx, bx, by in ds.batch_iterator(batch_size=5, shuffle=np.random.RandomState(12345)):
            np.testing.assert_array_equal(bx, pixels[idx])
            np.testing.assert_array_equal(by, y[idx])
            seen.append(idx)
        np.testing.assert_array_equal(np.concatenate(seen), order)


def test_accessor_pickles_without_its_fetcher_and_works_in_pools(images):
    paths, pixels = images
    leaks = LeakCheck()
    acc = DatasetAccessor(FileImageDataset(paths), num_fetch_workers=4)
    acc[np.arange(3)]  # the parent now owns fetch threads; forked workers must build their own
    clone = pickle.loads(pickle.dumps(acc))
    assert clone._state is None
    np.testing.assert_array_equal(clone[np.array([1, 2])], pixels[[1, 2]])
    clone.close()
    ds = data_source.ArrayDataSource([acc, np.arange(20)])
    for pool in (work_pool.WorkerThreadPool(2), work_pool.WorkerProcessPool(2)):
        with pool:
            got = list(pool.parallel_data_source(ds, 3).batch_iterator(6, shuffle=np.random.RandomState(0)))
        order = np.random.RandomState(0).permutation(20)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), pixels[order])
        np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), order)
    acc.close()
    leaks.assert_clean()
    np.testing.assert_array_equal(acc[np.array([4])], pixels[[4]])  # usable again after close
    acc.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_dataset_as_accessor(impl):
    tds = torch.utils.data.TensorDataset(torch.arange(30).reshape(10, 3), torch.arange(10) * 2)
    with DatasetAccessor(tds, fetch_impl=impl, field=0) as xs, DatasetAccessor(tds, fetch_impl=impl, field=1) as ys:
        ds = data_source.ArrayDataSource([xs, ys])
        for bx, by in ds.batch_iterator(4):
            assert bx.shape[1:] == (3,)
            np.testing.assert_array_equal(bx[:, 0] // 3 * 2, by)


# -- DataSourceDataset ---------------------------------------------------------------------------

def test_data_source_dataset_items():
    X, y = np.arange(40).reshape(20, 2), np.arange(20) * 3
    sub = np.arange(20)[::-2]
    tds = DataSourceDataset(data_source.ArrayDataSource([X, y], indices=sub, repeats=4))
    assert len(tds) == 10  # the subset; repeats and shuffling are the torch sampler's business
    x0, y0 = tds[0]
    np.testing.assert_array_equal(x0, X[19])
    assert y0 == y[19]
    assert [int(s[1]) for s in tds.__getitems__([0, 9, 4])] == [y[19], y[1], y[11]]
    assert int(tds[-1][1]) == y[1]
    with pytest.raises(IndexError):
        tds[10]
    with pytest.raises(TypeError):
        tds[1.5]
    mapped = DataSourceDataset(data_source.ArrayDataSource([X, y]).map(lambda a, b: (a * 10, b)))
    np.testing.assert_array_equal(mapped[3][0], X[3] * 10)
    with pytest.raises(TypeError, match="ArrayDataSource"):
        DataSourceDataset(data_source.CompositeDataSource([data_source.ArrayDataSource([X])]))


class CountingAccessor:
    """Array-like that records how it is called (module level: DataLoader workers pickle it)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if not isinstance(index, np.ndarray):
            raise AssertionError("DataSourceDataset should gather whole batches with index arrays")
        return np.stack([np.full((2,), i, dtype=np.float32) for i in index])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_source_dataset_with_our_dataloader(images, impl, num_workers):
    paths, pixels = images
    labels = np.arange(20) % 3
    acc = DatasetAccessor(FileImageDataset(paths), num_fetch_workers=4, fetch_impl=impl)
    acc[np.arange(2)]  # fetch threads in the parent: forked workers must leave them alone and build their own
    tds = DataSourceDataset(data_source.ArrayDataSource([acc, labels, CountingAccessor(20)]))
    with DataLoader(tds, batch_size=6, num_workers=num_workers, fetch_impl=impl, num_fetch_workers=2) as dl:
        batches = list(dl)
    assert [len(b[0]) for b in batches] == [6, 6, 6, 2]
    np.testing.assert_array_equal(torch.cat([b[0] for b in batches]).numpy(), pixels)
    np.testing.assert_array_equal(torch.cat([b[1] for b in batches]).numpy(), labels)
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches])[:, 0].numpy(), np.arange(20))
    acc.close()


def test_data_source_dataset_with_stock_torch_dataloader():
    X = np.arange(24, dtype=np.float32).reshape(12, 2)
    tds = DataSourceDataset(data_source.ArrayDataSource([X, CountingAccessor(12)]))
    batches = list(torch.utils.data.DataLoader(tds, batch_size=5, shuffle=False))
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.from_numpy(X))


# -- concurrency, counted on the (S3) server ------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_accessor_overlaps_the_fetches_of_a_batch_on_s3(latency_s3, s3_client, s3_bucket, s3_options, impl):
    endpoint, stats = latency_s3
    keys = [f"obj/{k:03d}.bin" for k in range(16)]
    for k, key in enumerate(keys):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes([k]) * (100 + k))
    ds = S3BytesDataset(s3_bucket, keys, endpoint, s3_options)
    with DatasetAccessor(ds, num_fetch_workers=16, fetch_impl=impl, collate="list") as acc:
        acc[0]  # warm up: create the client in the fetch thread pool
        stats.reset()
        t0 = time.perf_counter()
        batch = acc[np.arange(16)]
        elapsed = time.perf_counter() - t0
    assert [bytes(b[:1]) for b in batch] == [bytes([k]) for k in range(16)]
    assert [len(b) for b in batch] == [100 + k for k in range(16)]
    assert stats.total == 16
    # The GETs of the batch were in flight together on the server (3/4 of them at least: on a loaded
    # machine the first may finish before the last is sent; a serial accessor peaks at 1)...
    assert stats.peak >= 12, f"peak concurrent requests {stats.peak}"
    # ...so the batch beats the serial floor of 16 round trips. The peak above is the strict check:
    # timing alone flaked on a loaded CI machine (0.94 s there, against this 1.6 s floor).
    assert elapsed < 16 * PROXY_LATENCY_S, f"batch took {elapsed:.3f}s"


def test_serial_accessor_does_not_overlap_for_contrast(latency_s3, s3_client, s3_bucket, s3_options):
    endpoint, stats = latency_s3
    keys = [f"k{k}" for k in range(6)]
    for key in keys:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    ds = S3BytesDataset(s3_bucket, keys, endpoint, s3_options)
    with DatasetAccessor(ds, num_fetch_workers=1, collate="list") as acc:
        acc[0]
        stats.reset()
        acc[np.arange(6)]
    assert stats.total == 6 and stats.peak == 1


def test_batch_iterator_over_s3_accessor(latency_s3, s3_client, s3_bucket, s3_options):
    endpoint, stats = latency_s3
    keys = [f"s/{k}" for k in range(24)]
    for k, key in enumerate(keys):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes([k]) * 4)
    ds = S3BytesDataset(s3_bucket, keys, endpoint, s3_options)
    with DatasetAccessor(ds, num_fetch_workers=8) as acc:
        src = data_source.ArrayDataSource([acc, np.arange(24)])
        for bx, by in src.batch_iterator(8, shuffle=np.random.RandomState(2)):
            np.testing.assert_array_equal(bx[:, 0], by)
    assert stats.peak >= 8
