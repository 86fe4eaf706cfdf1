"""Mid-epoch resume: save at step k, restore in a fresh loader/process, and the concatenated batches
equal an uninterrupted run, including the following epoch (no epoch dropped or shortened)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from concurrent_dataloader import DataLoader
from tests.core.datasets import RangeDataset
from tests.core.test_differential import assert_same

N, BS = 30, 4  # 8 batches per epoch (last one short)


def make_loader(fetch_impl, num_workers, persistent=False, use_generator=True, sampler=None):
    kwargs = dict(batch_size=BS, num_workers=num_workers, fetch_impl=fetch_impl, batch_pool=4,
                  num_fetch_workers=4, persistent_workers=persistent and num_workers > 0)
    if sampler is not None:
        kwargs["sampler"] = sampler
    else:
        kwargs["shuffle"] = True
        if use_generator:
            kwargs["generator"] = torch.Generator().manual_seed(42)
    return DataLoader(RangeDataset(N), **kwargs)


def ids(batches):
    return [b["x"][:, 0].tolist() for b in batches]


def uninterrupted(epochs, **kw):
    torch.manual_seed(0)
    dl = make_loader(**kw)
    out = []
    for _ in range(epochs):
        out += list(dl)
    dl.close()
    return out


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("use_generator", [True, False])
@pytest.mark.parametrize("epoch,step", [(0, 3), (1, 5)])
def test_resume_equals_uninterrupted(fetch_impl, num_workers, persistent, use_generator, epoch, step):
    kw = dict(fetch_impl=fetch_impl, num_workers=num_workers, persistent=persistent, use_generator=use_generator)
    expected = uninterrupted(3, **kw)

    torch.manual_seed(0)
    first = make_loader(**kw)
    head = []
    for _ in range(epoch):
        head += list(first)
    it = iter(first)
    for _ in range(step):
        head.append(next(it))
    # With batch_pool=4 (and 2 workers) several more batches are in flight now; they must be
    # neither lost nor delivered twice by the resume.
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able
    assert state["batches_yielded"] == step
    first.close()
    del it, first
    assert_same(head, expected[: len(head)])

    torch.manual_seed(999)  # a restarted process has some other global RNG state
    second = make_loader(**kw)
    second.load_state_dict(state)
    rest = list(second)          # the rest of the interrupted epoch
    rest_next = list(second)     # and the following epoch, whole
    second.close()
    assert len(rest) == 8 - step
    assert len(rest_next) == 8
    assert_same(head + rest + rest_next, expected[: (epoch + 2) * 8])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_state_at_epoch_boundaries(num_workers):
    kw = dict(fetch_impl="threaded", num_workers=num_workers)
    expected = uninterrupted(2, **kw)
    torch.manual_seed(0)
    dl = make_loader(**kw)
    fresh = dl.state_dict()
    assert fresh["batches_yielded"] == 0
    epoch0 = list(dl)
    boundary = dl.state_dict()
    dl.close()

    torch.manual_seed(5)
    again = make_loader(**kw)
    again.load_state_dict(fresh)
    assert_same(list(again), expected[:8])
    again.load_state_dict(boundary)
    assert_same(epoch0 + list(again), expected)
    again.close()


def test_distributed_sampler_resume():
    ds = RangeDataset(N)

    def run(sampler_epoch_start, loader, epochs):
        out = []
        for e in range(sampler_epoch_start, sampler_epoch_start + epochs):
            loader.sampler.set_epoch(e)
            out += list(loader)
        return out

    ref_loader = make_loader("asyncio", 2, sampler=DistributedSampler(ds, num_replicas=2, rank=1, seed=3))
    expected = run(0, ref_loader, 2)
    ref_loader.close()

    dl = make_loader("asyncio", 2, sampler=DistributedSampler(ds, num_replicas=2, rank=1, seed=3))
    dl.sampler.set_epoch(1)
    it = iter(dl)
    head = [next(it), next(it)]
    state = json.loads(json.dumps(dl.state_dict()))
    assert state["sampler_epoch"] == 1
    dl.close()
    del it

    resumed = make_loader("asyncio", 2, sampler=DistributedSampler(ds, num_replicas=2, rank=1, seed=3))
    resumed.load_state_dict(state)  # restores the sampler's epoch too
    tail = list(resumed)
    resumed.close()
    assert_same(head + tail, expected[len(expected) // 2:])


def test_resume_in_a_new_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        import torch
        from tests.core.test_resume import make_loader, ids
        mode, state_file = sys.argv[1], sys.argv[2]
        torch.manual_seed(0 if mode == "first" else 77)
        dl = make_loader("asyncio", 2, persistent=True, use_generator=False)
        if mode == "first":
            it = iter(dl)
            out = [next(it) for _ in range(3)]
            json.dump({{"state": dl.state_dict(), "ids": ids(out)}}, open(state_file, "w"))
            import os; os._exit(0)   # a crash: no clean shutdown
        saved = json.load(open(state_file))
        dl.load_state_dict(saved["state"])
        print(json.dumps(saved["ids"] + ids(list(dl)) + ids(list(dl))))
        dl.close()
    """))
    state_file = tmp_path / "state.json"
    subprocess.run([sys.executable, str(script), "first", str(state_file)], check=True, timeout=120)
    out = subprocess.run([sys.executable, str(script), "second", str(state_file)], check=True, timeout=120,
                         capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected = ids(uninterrupted(2, fetch_impl="asyncio", num_workers=2, persistent=True, use_generator=False))
    assert got == expected


def test_bad_state_is_rejected():
    dl = make_loader("threaded", 0)
    for bad, word in [({}, "version"), ({"version": 1, "batches_yielded": -1, "rng": None}, "batches_yielded"),
                      ({"version": 1, "batches_yielded": 99, "rng": None}, "only 8 batches"),
                      ({"version": 1, "batches_yielded": 1, "rng": [1, 2]}, "rng")]:
        with pytest.raises(ValueError, match=word):
            dl.load_state_dict(bad)
