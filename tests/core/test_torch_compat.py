"""Guards for every private torch API we depend on (``_torch_compat.PRIVATE_SYMBOLS``, with the torch
versions where each was seen). If one fails after a torch upgrade, update
concurrent_dataloader/loader/_torch_compat.py (the only module touching them) before anything else.
Future layouts are simulated in test_torch_layouts.py."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.utils.data as tud
from torch.utils.data import dataloader as tdl
from torch.utils.data._utils import worker as tworker

from concurrent_dataloader.loader import _torch_compat

# The symbols that only one worker layout has.
_LAYOUT_SYMBOLS = {
    "worker_loop": "torch.utils.data._utils.worker._worker_loop",
    "process_worker_loop": "torch.utils.data._utils.worker._process_worker_loop",
}


def _resolve(path: str):
    module, _, rest = path.partition(".utils.data.")
    obj = torch.utils.data
    for part in rest.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_installed_torch_has_a_layout_we_bind():
    # torch 2.14.1 (pinned) and 2.15.0 have the worker_loop layout; the development branch has
    # process_worker_loop. A new torch that has neither still works through the fallback
    # (test_torch_layouts.py), but must be looked at: this fails to say so.
    assert _torch_compat.WORKER_LAYOUT in ("worker_loop", "process_worker_loop"), _torch_compat.UNKNOWN_LAYOUT_REASON
    assert _torch_compat.SINGLE_PROCESS_OK
    assert _torch_compat.TORCH_WORKER_LOOP.__module__ == "torch.utils.data._utils.worker"


@pytest.mark.parametrize("path", [p for p in _torch_compat.PRIVATE_SYMBOLS if p.startswith("torch.")])
def test_every_module_and_class_level_private_symbol_exists(path):
    other_layouts = {v for k, v in _LAYOUT_SYMBOLS.items() if k != _torch_compat.WORKER_LAYOUT}
    if path in other_layouts:
        pytest.skip(f"{path}: another worker layout ({_torch_compat.PRIVATE_SYMBOLS[path]})")
    if path.endswith(("DataLoader._dataset_kind", "DataLoader._iterator")):  # instance attributes
        loader = tud.DataLoader(list(range(4)), persistent_workers=False)
        assert hasattr(loader, path.rsplit(".", 1)[1])
        return
    if path.endswith("DataLoader._index_sampler"):
        assert isinstance(inspect.getattr_static(tud.DataLoader, "_index_sampler"), property)
        return
    _resolve(path)  # raises AttributeError, naming the symbol, if it is gone


def test_iterator_internals_exist_on_real_iterators():
    base = ("_next_index", "_next_data", "_reset", "_num_yielded", "_collate_fn", "_auto_collation",
            "_pin_memory", "_pin_memory_device")
    single = iter(tud.DataLoader(list(range(4)), batch_size=2))
    for name in base:
        assert hasattr(single, name), name
    multi = iter(tud.DataLoader(list(range(4)), batch_size=2, num_workers=1, persistent_workers=True))
    try:
        for name in base + ("_shutdown_workers", "_workers", "_shutdown", "_persistent_workers", "_send_idx",
                            "_rcvd_idx"):
            assert hasattr(multi, name), name
    finally:
        multi._shutdown_workers()
    listed = " ".join(_torch_compat.PRIVATE_SYMBOLS)
    for name in base + ("_shutdown_workers", "_rcvd_idx"):
        assert name in listed, f"{name} is used but not listed in PRIVATE_SYMBOLS"


def test_worker_loop_signature_has_the_parameters_we_bind_by_name():
    params = list(inspect.signature(_torch_compat.TORCH_WORKER_LOOP).parameters)
    missing = [p for p in _torch_compat.REQUIRED_WORKER_PARAMS if p not in params]
    assert not missing, f"torch {torch.__version__} renamed worker-loop parameters: {missing}; got {params}"
    assert _torch_compat._DATASET_PARAM in params


def test_worker_loop_source_uses_create_fetcher_and_index_queue_get():
    # In the development branch the body moved to _base_worker_loop; read both.
    src = inspect.getsource(_torch_compat.TORCH_WORKER_LOOP)
    if hasattr(tworker, "_base_worker_loop"):
        src += inspect.getsource(tworker._base_worker_loop)
    assert "_DatasetKind.create_fetcher(" in src
    assert "index_queue.get(timeout=" in src
    assert "_ResumeIteration" in src and "r is None" in src
    assert "fetcher.fetch(" in src


def test_dataset_kind_and_resume_iteration():
    assert hasattr(tdl._DatasetKind, "Map") and hasattr(tdl._DatasetKind, "Iterable")
    assert list(inspect.signature(tdl._DatasetKind.create_fetcher).parameters) == [
        "kind", "dataset", "auto_collation", "collate_fn", "drop_last"]
    assert tud._DatasetKind is tdl._DatasetKind  # the loop imports it from torch.utils.data
    assert _torch_compat.is_control_message(tworker._ResumeIteration(None))
    assert _torch_compat.is_control_message(None)


def test_iterator_init_reads_what_the_view_overrides():
    src = inspect.getsource(tdl._MultiProcessingDataLoaderIter.__init__)
    name = _torch_compat.TORCH_WORKER_LOOP.__name__
    for needle in ("loader.multiprocessing_context", "multiprocessing_context.Process(",
                   f"target=_utils.worker.{name}"):
        assert needle in src, f"_MultiProcessingDataLoaderIter.__init__ no longer contains {needle!r}"
    parent = inspect.getsource(tdl._MultiProcessingDataLoaderIter)
    if "_ParallelDataLoaderIter" in parent:  # development branch: prefetch/init_fn read by the base
        parent += inspect.getsource(tdl._ParallelDataLoaderIter.__init__)
    for needle in ("loader.prefetch_factor", "loader.worker_init_fn"):
        assert needle in parent
    base = inspect.getsource(tdl._BaseDataLoaderIter.__init__)
    assert "loader._index_sampler" in base and "loader.dataset" in base
    assert "_iterator" in inspect.getsource(tud.DataLoader.__iter__)
    assert "_get_iterator()" in inspect.getsource(tud.DataLoader.__iter__)
