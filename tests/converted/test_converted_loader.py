"""Readers under our concurrent DataLoader (both fetch_impls, worker processes under fork and
spawn), the stock torch DataLoader, and pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import PILToTensor

from concurrent_dataloader import DataLoader
from concurrent_dataloader.formats.converted import DenseIpcConverter, DenseMemmapConverter, get_format, open_converted
from tests.converted.helpers import ALL, DenseDataset, converter_kwargs, write_folder

N = 10


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every format converted once from the same folder: {format: path}, plus the expected items."""
    base = tmp_path_factory.mktemp("conv")
    files = write_folder(base / "src", N)
    outs = {}
    for fmt in ALL:
        outs[fmt] = base / fmt
        get_format(fmt).converter(str(base / "src"), outs[fmt], 4, 2, progress=False, **converter_kwargs(fmt)).convert()
    dense = DenseDataset(6)
    outs["dense_memmap"] = base / "dense_memmap"
    DenseMemmapConverter(dense, outs["dense_memmap"], 4, 2, progress=False, shape=(24, 40), im_mode="RGB").convert()
    outs["dense_ipc"] = base / "dense_ipc"
    DenseIpcConverter(dense, outs["dense_ipc"], 4, 2, progress=False).convert()
    expected = [(torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1), lab) for p, lab in files]
    return outs, expected, dense


def _collect(loader):
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("fmt", ALL)
def test_reader_with_our_dataloader(converted, fmt, fetch_impl):
    outs, expected, _ = converted
    reader = open_converted(outs[fmt], transform=PILToTensor())
    with DataLoader(reader, batch_size=3, num_workers=0, num_fetch_workers=4, fetch_impl=fetch_impl) as loader:
        images, labels = _collect(loader)
    assert torch.equal(images, torch.stack([e[0] for e in expected]))
    assert labels.tolist() == [e[1] for e in expected]


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("fmt", ["dense_memmap", "dense_ipc"])
def test_dense_reader_with_target_transform(converted, fmt, fetch_impl):
    outs, _, dense = converted
    reader = open_converted(outs[fmt], transform=PILToTensor(),
                            target_transform=lambda m: torch.from_numpy(np.array(m, dtype=np.int64)))
    with DataLoader(reader, batch_size=4, num_workers=0, fetch_impl=fetch_impl) as loader:
        images, masks = _collect(loader)
    assert masks.dtype == torch.int64 and masks.shape == (6, 24, 40)
    for i in range(6):
        assert np.array_equal(masks[i].numpy(), np.asarray(dense.masks[i]))
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), np.asarray(dense.images[i]))


@pytest.mark.parametrize("fmt", ["memmap", "parquet", "tar"])
def test_worker_processes_fork_after_parent_reads(converted, fmt):
    """The parent opens descriptors first; forked workers must open their own."""
    outs, expected, _ = converted
    reader = open_converted(outs[fmt], transform=PILToTensor())
    reader[0]  # populate the parent's per-process state
    with DataLoader(reader, batch_size=4, num_workers=2, fetch_impl="threaded",
                    multiprocessing_context="fork") as loader:
        images, labels = _collect(loader)
    assert torch.equal(images, torch.stack([e[0] for e in expected]))
    assert labels.tolist() == [e[1] for e in expected]


@pytest.mark.parametrize("fmt", ["hdf5", "ipc"])
def test_worker_processes_spawn(converted, fmt):
    outs, expected, _ = converted
    reader = open_converted(outs[fmt], transform=PILToTensor())
    reader[0]
    with DataLoader(reader, batch_size=5, num_workers=1, fetch_impl="asyncio", multiprocessing_context="spawn",
                    worker_init_fn=type(reader).worker_init_fn) as loader:
        images, labels = _collect(loader)
    assert torch.equal(images, torch.stack([e[0] for e in expected]))


@pytest.mark.parametrize("fmt", ALL)
def test_stock_torch_dataloader_and_pickle(converted, fmt):
    outs, expected, _ = converted
    reader = open_converted(outs[fmt], transform=PILToTensor())
    reader[3]
    assert "_proc" in reader.__dict__
    clone = pickle.loads(pickle.dumps(reader))
    assert "_proc" not in clone.__dict__
    loader = torch.utils.data.DataLoader(clone, batch_size=4, num_workers=0)
    images, labels = _collect(loader)
    assert torch.equal(images, torch.stack([e[0] for e in expected]))
    reader.close()
    assert torch.equal(reader[9][0], expected[9][0])  # reopens lazily after close()


def test_describe_names_file_and_position(converted):
    outs, _, _ = converted
    reader = open_converted(outs["memmap"])
    assert reader.describe(5).endswith("images_1.npy [sample 1]")
    assert reader.describe(-1).endswith("images_2.npy [sample 1]")
    with pytest.raises(IndexError):
        reader[N]
