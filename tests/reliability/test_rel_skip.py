"""The opt-in skip policy: permanent failures become reported gaps; transient ones are still retried
(never skipped); without the opt-in the epoch raises (test_rel_permanent.py)."""

from __future__ import annotations

import json

import pytest
import torch

from concurrent_dataloader import DataLoader
from concurrent_dataloader.errors import ConfigError
from concurrent_dataloader.skip import SkipErrors, SkippedSample, skip_collate
from tests.reliability.helpers import IMPLS, checksum_dataset, put_images, record

N = 48
MISSING, DENIED, CORRUPT = 5, 17, 30


def _bad_dataset(fault_srv, injector, store="s3lean"):
    objs = put_images(fault_srv, "bkt", N)
    injector.on_key(objs.keys[MISSING], "missing")
    injector.on_key(objs.keys[DENIED], "access_denied")
    fault_srv.put_object("bkt", objs.keys[CORRUPT], b"not an image at all")
    return objs, checksum_dataset(store, fault_srv.endpoint_url, objs)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_opted_in_skips_are_reported_and_nothing_else_is_lost(fault_srv, injector, tmp_path, fetch_impl, num_workers):
    objs, ds = _bad_dataset(fault_srv, injector)
    injector.set_rate(0.05, {"slowdown": 1, "reset": 1, "truncate": 1}, seed=5)  # transient: retried, not skipped
    report = tmp_path / "skipped.jsonl"
    wrapped = SkipErrors(ds, report_file=report)
    with DataLoader(wrapped, batch_size=8, num_workers=num_workers, fetch_impl=fetch_impl,
                    collate_fn=skip_collate()) as loader:
        indices, sums = [], []
        for idx, digests, _labels in loader:
            indices += [int(i) for i in idx]
            sums += list(digests)
        stats = loader.stats()
    bad = {MISSING, DENIED, CORRUPT}
    good = [i for i in range(N) if i not in bad]
    assert indices == good  # only the three bad samples are missing, the rest in order
    assert sums == [objs.checksums[objs.keys[i]] for i in good]
    skipped = sorted(wrapped.skipped(), key=lambda r: r["index"])
    assert [r["index"] for r in skipped] == sorted(bad)
    assert [r["key"] for r in skipped] == [f"s3://bkt/{objs.keys[i]}" for i in sorted(bad)]
    assert "ObjectNotFoundError" in skipped[0]["error"] and "S3AccessDeniedError" in skipped[1]["error"]
    assert "cannot decode image" in skipped[2]["error"]
    assert all(json.loads(line) for line in report.read_text().splitlines())
    assert stats["fetch_errors"] == 3 and stats["gave_up"] == 0
    assert stats["retries"] == injector.counts()["injected"] - 2  # every transient fault retried
    record(faults=injector.counts()["injected"], retries=stats["retries"], samples=len(good), epochs=1)


def test_transient_failures_that_outlast_the_retries_are_not_skipped(fault_srv, injector):
    objs = put_images(fault_srv, "bkt", 8)
    injector.on_key(objs.keys[3], "internal_error")  # every attempt: retries run out
    wrapped = SkipErrors(checksum_dataset("s3", fault_srv.endpoint_url, objs))
    with pytest.raises(Exception, match="InternalError") as info, \
            DataLoader(wrapped, batch_size=4, collate_fn=skip_collate()) as loader:
        list(loader)
    assert "gave up after 5 attempt(s)" in "".join(info.value.__notes__)
    assert wrapped.skipped() == []
    wrapped.close()


def test_max_skipped_stops_an_epoch_that_is_mostly_failing(fault_srv, injector):
    objs = put_images(fault_srv, "bkt", 12)
    for key in objs.keys[2:]:
        injector.on_key(key, "missing")
    wrapped = SkipErrors(checksum_dataset("s3lean", fault_srv.endpoint_url, objs), max_skipped=3)
    with pytest.raises(FileNotFoundError) as info, \
            DataLoader(wrapped, batch_size=4, num_fetch_workers=1, collate_fn=skip_collate()) as loader:
        list(loader)
    assert "max_skipped=3" in "".join(info.value.__notes__)
    assert len(wrapped.skipped()) == 3


def test_all_skipped_batch_is_none_and_private_report_is_removed(fault_srv, injector):
    import os

    objs = put_images(fault_srv, "bkt", 8)
    for key in objs.keys[4:]:
        injector.on_key(key, "missing")
    wrapped = SkipErrors(checksum_dataset("s3", fault_srv.endpoint_url, objs))
    batches = list(DataLoader(wrapped, batch_size=4, collate_fn=skip_collate()))
    assert batches[1] is None and [int(i) for i in batches[0][0]] == [0, 1, 2, 3]
    assert len(wrapped.skipped()) == 4
    path = wrapped.report_file
    assert os.path.exists(path)
    wrapped.close()
    assert not os.path.exists(path)


def test_skip_policy_validates_and_passes_through():
    class Plain(torch.utils.data.Dataset):
        classes = ["a", "b"]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 1:
                raise FileNotFoundError("gone")
            return i

    with pytest.raises(ConfigError):
        SkipErrors(Plain(), errors=["FileNotFoundError"])
    with pytest.raises(ConfigError):
        SkipErrors(Plain(), max_skipped=-1)
    w = SkipErrors(Plain())
    assert w.classes == ["a", "b"] and len(w) == 3
    assert w[0] == 0 and isinstance(w[1], SkippedSample)
    assert skip_collate()([w[0], w[1], w[2]]).tolist() == [0, 2]
    w.close()
