"""Two loaders in one process (train and val) each count only their own work in ``stats()``.

Store-backed datasets: a real moto S3 server on 127.0.0.1 (every GET is a counted request) and
local files. The loaders are interleaved batch by batch, so a shared sink would mix their counts.
"""

from __future__ import annotations

import pytest
import torchvision.transforms as T

from concurrent_dataloader import DataLoader, get_dataset
from concurrent_dataloader.storage import RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def images(image_folder, s3_client, s3_bucket):
    for f in image_folder["files"]:
        s3_client.put_object(Bucket=s3_bucket, Key=f.relative_to(image_folder["base"]).as_posix(), Body=f.read_bytes())
    return dict(image_folder, bucket=s3_bucket)


def make(kind, data, s3_options, **kwargs):
    if kind in ("s3", "s3lean"):
        opts = dict(s3_options, bucket=data["bucket"], retry=FAST_RETRY,
                    s3_client="lean" if kind == "s3lean" else "botocore")
        kind = "s3"
    else:
        opts = dict(root=data["base"])
    return get_dataset(kind, "train", index_file=data["index_file"], classes_file=data["classes_file"], **opts,
                       transform=T.PILToTensor(), **kwargs)


def interleave(a, b):
    """Draw one batch from each loader in turn until both are exhausted; return the sample counts."""
    iters, seen = [iter(a), iter(b)], [0, 0]
    while any(it is not None for it in iters):
        for k, it in enumerate(iters):
            if it is None:
                continue
            try:
                x, _ = next(it)
            except StopIteration:
                iters[k] = None
                continue
            seen[k] += len(x)
    return seen


@pytest.mark.parametrize("kind", ["s3", "s3lean", "scratch"])
@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("workers", [(0, 0), (0, 2)])
def test_train_and_val_loaders_count_only_their_own_work(kind, fetch_impl, workers, images, s3_options):
    train_ds, val_ds = make(kind, images, s3_options), make(kind, images, s3_options, limit=5)
    n_train, n_val = len(train_ds), len(val_ds)
    sizes = {k: len(images["files"][k].read_bytes()) for k in range(n_train)}
    with DataLoader(train_ds, batch_size=4, num_workers=workers[0], fetch_impl=fetch_impl,
                    num_fetch_workers=4) as train, \
            DataLoader(val_ds, batch_size=2, num_workers=workers[1], fetch_impl=fetch_impl,
                       num_fetch_workers=4) as val:
        for epoch in range(2):
            assert interleave(train, val) == [n_train, n_val]
            s_train, s_val = train.stats(), val.stats()
            assert (s_train["samples"], s_val["samples"]) == (n_train, n_val), f"epoch {epoch}"
            assert s_train["bytes"] == sum(sizes.values())
            assert s_val["bytes"] == sum(sizes[k] for k in range(n_val))
            if kind != "scratch":  # one GET per image, counted by the store's retry policy
                assert (s_train["requests"], s_val["requests"]) == (n_train, n_val), f"epoch {epoch}"
            else:
                assert (s_train["requests"], s_val["requests"]) == (0, 0)
