"""MosaicML Streaming: ``MDSWriter`` shards in the bucket, read by ``StreamingDataset(remote=s3://...)``.

Best mode (Streaming docs, "Shuffling" and "Performance Tuning"): the defaults are documented as
giving "great performance out-of-the-box", and "merely setting shuffle=True is performant in nearly
all cases": ``shuffle=True`` with the default ``shuffle_algo='py1e'`` and default block size
(``max(4e6 / num_canonical_nodes, 1<<18)`` samples, larger than our datasets, so the shuffle spans
the whole dataset), default ``predownload`` (8 x batch size per worker) and no ``cache_limit``;
``batch_size`` is passed to the dataset as the docs require for its partitioning, and the loader is
``StreamingDataLoader`` with the spec's workers, started with ``forkserver`` (see NOTE [mosaic and
fork]: with fork, workers share the parent's S3 connection). Samples are written in a seeded shuffled order and
the ``size_limit`` is set so a shard holds about ``shard_size`` images. Each run starts from an
empty ``local`` cache (and stale shared memory is cleaned) so the data really streams.
Endpoint: the ``S3_ENDPOINT_URL`` environment variable the docs give for S3-compatible stores;
credentials from the usual ``AWS_*`` variables.
"""

from __future__ import annotations

import json
import os
from typing import Any

from benchmarking.peers._common import (Recipe, Spec, download_images, fresh_dir, is_prepared, log,
                                        loader_kwargs, mark_prepared, main, prepared_tag, s3_client, timed_epoch,
                                        upload_dir, write_order)

PEER = "mosaic"
COLUMNS = {"jpg": "bytes", "cls": "int", "idx": "int"}
# NOTE [mosaic and fork]: each Stream keeps one CloudDownloader whose boto3 client is created on
# first use and dropped only when pickled. The parent uses it to fetch index.json, so forked
# DataLoader workers inherit its open keep-alive connection and share one socket: on the plain
# http benchmark server their responses cross (a worker stored shard 0's bytes as shard 3, and
# the epoch repeated images); on TLS it would break the stream. forkserver workers receive the
# dataset pickled, so each builds its own client.
CONTEXT = "forkserver"


def prepare(spec: Spec, version: str) -> dict[str, Any]:
    from streaming import MDSWriter

    client = s3_client(spec)
    tag = prepared_tag(spec, PEER, version)
    if is_prepared(spec, client, tag):
        return {"skipped": True, "objects": 0, "bytes": 0}
    files = download_images(spec, client)
    sizes = [p.stat().st_size for p, _ in files]
    # MDS closes a shard by bytes, not by count: aim at shard_size images of the mean size.
    size_limit = int(sum(sizes) / len(sizes) * spec.shard_size * 1.02) + 64 * spec.shard_size
    out = fresh_dir(spec.workpath("out"))
    with MDSWriter(out=str(out), columns=COLUMNS, size_limit=size_limit, progress_bar=False) as writer:
        for n in write_order(spec):
            path, label = files[n]
            writer.write({"jpg": path.read_bytes(), "cls": label, "idx": n})
    shards = len(json.loads((out / "index.json").read_text())["shards"])
    objects, nbytes = upload_dir(spec, client, out)
    mark_prepared(spec, client, tag, shards=shards)
    log(f"mosaic: {shards} shards, {nbytes / 1e6:.1f} MB uploaded")
    return {"skipped": False, "objects": objects, "bytes": nbytes, "shards": shards}


try:  # at module level so the class pickles for forkserver workers; absent -> main() says "not installed"
    from streaming import StreamingDataset as _Base
except ImportError:  # pragma: no cover - exercised by the "not installed" path
    _Base = object


class Images(_Base):  # type: ignore[misc, valid-type]
    """The documented way to transform: subclass StreamingDataset and override ``__getitem__``."""

    def __init__(self, *, recipe: Recipe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe = recipe

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        item = super().__getitem__(index)
        return self.recipe(item["jpg"]), int(item["cls"]), int(item["idx"])


def run(spec: Spec, version: str) -> dict[str, Any]:
    from streaming import StreamingDataLoader
    from streaming.base.util import clean_stale_shared_memory

    os.environ["S3_ENDPOINT_URL"] = spec.endpoint
    clean_stale_shared_memory()
    local = fresh_dir(spec.workpath("cache"))
    info: dict[str, Any] = {}

    def build() -> Any:
        ds = Images(remote=spec.s3_url(spec.peer_prefix.rstrip("/")), local=str(local), shuffle=True,
                        shuffle_seed=spec.seed, batch_size=spec.batch_size,
                        recipe=Recipe(spec.decoder, spec.image_size))
        block = ds.shuffle_block_size or "default max(4e6/num_canonical_nodes, 1<<18)"
        info.update(shards=len(ds.shards), block=block, predownload=ds.predownload)
        kw = loader_kwargs(spec)
        if spec.num_workers:
            import multiprocessing

            # the server imports these once; each worker is then a cheap fork of it
            multiprocessing.set_forkserver_preload(["torch", "torchvision", "streaming", __name__])
            kw["multiprocessing_context"] = CONTEXT
        return StreamingDataLoader(ds, batch_size=spec.batch_size, **kw)

    out = timed_epoch(build)
    out["sampling"] = (f"py1e shuffle, block {info.get('block')} samples (+ shard shuffle, {info.get('shards')} "
                       "shards written in shuffled order)")
    out["settings"] = {"shuffle": True, "shuffle_algo": "py1e (default)", "shuffle_block_size": info.get("block"),
                       "predownload": info.get("predownload"), "cache_limit": None, "shards": info.get("shards"),
                       "loader": "StreamingDataLoader", **loader_kwargs(spec),
                       "multiprocessing_context": CONTEXT if spec.num_workers else None, "batch_size": spec.batch_size,
                       "decoder": spec.decoder}
    return out


if __name__ == "__main__":
    raise SystemExit(main(PEER, module="streaming", dist="mosaicml-streaming"))
