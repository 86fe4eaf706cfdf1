"""Guards for every private torch API we depend on. If one fails after a torch upgrade, update
concurrent_dataloader/loader/_torch_compat.py (the only module touching them) before anything else."""

from __future__ import annotations

import inspect

import torch
import torch.utils.data as tud
from torch.utils.data import dataloader as tdl
from torch.utils.data._utils import worker as tworker

from concurrent_dataloader.loader import _torch_compat


def test_worker_loop_signature_has_the_parameters_we_bind_by_name():
    params = list(inspect.signature(tworker._worker_loop).parameters)
    missing = [p for p in _torch_compat.REQUIRED_WORKER_PARAMS if p not in params]
    assert not missing, f"torch {torch.__version__} renamed worker-loop parameters: {missing}; got {params}"
    # dataset_holder is a one-element list that torch's loop pops
    assert "dataset_holder" in params


def test_worker_loop_source_uses_create_fetcher_and_index_queue_get():
    src = inspect.getsource(_torch_compat.TORCH_WORKER_LOOP)
    assert "_DatasetKind.create_fetcher(" in src
    assert "index_queue.get(timeout=" in src
    assert "_ResumeIteration" in src and "r is None" in src
    assert "fetcher.fetch(index)" in src


def test_dataset_kind_and_resume_iteration():
    assert hasattr(tdl._DatasetKind, "Map") and hasattr(tdl._DatasetKind, "Iterable")
    assert callable(tdl._DatasetKind.create_fetcher)
    assert list(inspect.signature(tdl._DatasetKind.create_fetcher).parameters) == [
        "kind", "dataset", "auto_collation", "collate_fn", "drop_last"]
    assert tud._DatasetKind is tdl._DatasetKind  # the loop imports it from torch.utils.data
    assert _torch_compat.is_control_message(tworker._ResumeIteration(None))
    assert _torch_compat.is_control_message(None)


def test_iterator_classes_and_attributes():
    src = inspect.getsource(tdl._MultiProcessingDataLoaderIter.__init__)
    for needle in ("loader.prefetch_factor", "loader.worker_init_fn", "loader.multiprocessing_context",
                   "multiprocessing_context.Process(", "target=_utils.worker._worker_loop"):
        assert needle in src, f"_MultiProcessingDataLoaderIter.__init__ no longer contains {needle!r}"
    assert callable(getattr(tdl._MultiProcessingDataLoaderIter, "_shutdown_workers"))
    single = inspect.getsource(tdl._SingleProcessDataLoaderIter)
    assert "def _next_data" in single
    base = inspect.getsource(tdl._BaseDataLoaderIter.__init__)
    for attr in ("self._collate_fn", "self._auto_collation", "self._pin_memory", "self._pin_memory_device"):
        assert attr in base
    assert callable(tdl._BaseDataLoaderIter._next_index)
    assert "_iterator" in inspect.getsource(tud.DataLoader.__iter__)


def test_captured_worker_loop_is_torchs():
    assert _torch_compat.TORCH_WORKER_LOOP.__module__ == "torch.utils.data._utils.worker"
