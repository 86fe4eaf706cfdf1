"""The seed's import paths and its monkeypatch usage keep working."""

from __future__ import annotations

import torch
import torch.utils.data._utils.worker as torch_worker

from tests.core.datasets import SleepyDataset
from tests.core.test_differential import assert_same
from tests.core.datasets import RangeDataset


def test_seed_import_paths():
    from concurrent_dataloader.dataloader_mod.dataloader import DataLoader as DataLoaderParallel
    from concurrent_dataloader.dataloader_mod.worker import _worker_loop as _worker_loop_parallel
    from concurrent_dataloader import DataLoader
    from concurrent_dataloader.loader.worker import _worker_loop

    assert DataLoaderParallel is DataLoader
    assert _worker_loop_parallel is _worker_loop
    assert issubclass(DataLoaderParallel, torch.utils.data.DataLoader)


def test_private_worker_loop_is_importable_but_not_public():
    import concurrent_dataloader
    import concurrent_dataloader.loader as loader_pkg

    assert not [name for name in loader_pkg.__all__ if name.startswith("_")]
    assert not [name for name in concurrent_dataloader.__all__ if name.startswith("_") and name != "__version__"]
    namespace: dict = {}
    exec("from concurrent_dataloader.loader import *", namespace)
    assert "_worker_loop" not in namespace
    from concurrent_dataloader.loader import _worker_loop  # still importable where it always was

    assert callable(_worker_loop)


def test_monkeypatch_usage_as_in_the_seed(monkeypatch):
    from concurrent_dataloader.dataloader_mod.dataloader import DataLoader as DataLoaderParallel
    from concurrent_dataloader.dataloader_mod.worker import _worker_loop as _worker_loop_parallel

    ds = SleepyDataset(n=32, batch_size=4, delay=0.05)
    loader = DataLoaderParallel(dataset=ds, batch_size=4, num_workers=2, shuffle=False, prefetch_factor=2,
                                num_fetch_workers=8, fetch_impl="threaded", batch_pool=2, pin_memory=False)
    monkeypatch.setattr(torch_worker, "_worker_loop", _worker_loop_parallel)
    rows = torch.cat(list(loader))
    assert rows[:, 0].tolist() == list(range(32))
    assert int(rows[:, 1].max()) >= 8


def test_monkeypatched_stock_loader_is_concurrent_and_identical(monkeypatch):
    from concurrent_dataloader.dataloader_mod.worker import _worker_loop as _worker_loop_parallel

    ref = list(torch.utils.data.DataLoader(RangeDataset(30), batch_size=4, num_workers=2, shuffle=True,
                                           generator=torch.Generator().manual_seed(3)))
    monkeypatch.setattr(torch_worker, "_worker_loop", _worker_loop_parallel)
    out = list(torch.utils.data.DataLoader(RangeDataset(30), batch_size=4, num_workers=2, shuffle=True,
                                           generator=torch.Generator().manual_seed(3)))
    assert_same(out, ref)
    ds = SleepyDataset(n=16, batch_size=4, delay=0.05)
    rows = torch.cat(list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)))
    assert int(rows[:, 1].max()) >= 4  # the default config fetches a batch's samples concurrently
