"""litdata: ``optimize()`` into litdata chunks, read back with ``StreamingDataset`` from the bucket.

Best mode (litdata README, "Speed up model training" / "Shuffle, seed, and drop_last" / the
``StreamingDataset`` parameter table, v0.2.76): ``StreamingDataset("s3://...", shuffle=True)`` read
through ``StreamingDataLoader`` with the spec's workers (the README prefers it to the plain
DataLoader); on object storage ``shuffle=True`` permutes the chunk order globally and shuffles
items inside each chunk in windows of ``item_shuffle_window`` (default 256). Other knobs stay at
their documented defaults (``max_pre_download=2`` chunks per worker). The README's FAQ advises
shuffling the sample list before ``optimize`` when the source is ordered (ours is class by class),
so the writer gets a seeded permutation. Chunks hold ``shard_size`` items (``chunk_size``), like
the other shard peers. Each run starts from an empty ``cache_dir`` so the data really streams.
Endpoint: ``storage_options={"endpoint_url": ..., "aws_access_key_id": ..., "aws_secret_access_key": ...}``
(the README's "custom S3-compatible endpoint" example). Chunk downloads go through obstore, which
refuses a plain-http endpoint unless ``allow_http`` is set: see :func:`_allow_plain_http`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from benchmarking.peers._common import (Recipe, Spec, download_images, fresh_dir, is_prepared, log,
                                        loader_kwargs, mark_prepared, main, prepared_tag, s3_client, timed_epoch,
                                        upload_dir, write_order)

PEER = "litdata"


def _item(files: list[tuple[str, int]], n: int) -> dict[str, Any]:
    path, label = files[n]
    return {"jpg": Path(path).read_bytes(), "cls": label, "idx": n}


def prepare(spec: Spec, version: str) -> dict[str, Any]:
    import litdata as ld

    client = s3_client(spec)
    tag = prepared_tag(spec, PEER, version)
    if is_prepared(spec, client, tag):
        return {"skipped": True, "objects": 0, "bytes": 0}
    files = [(str(p), label) for p, label in download_images(spec, client)]
    out = spec.workpath("out")
    fresh_dir(out).rmdir()  # optimize() wants to create (or find empty) its output dir
    ld.optimize(fn=functools.partial(_item, files), inputs=write_order(spec), output_dir=str(out),
                chunk_size=spec.shard_size, num_workers=1, verbose=False)
    objects, nbytes = upload_dir(spec, client, out)
    mark_prepared(spec, client, tag, objects=objects)
    log(f"litdata: {objects} files, {nbytes / 1e6:.1f} MB uploaded")
    return {"skipped": False, "objects": objects, "bytes": nbytes}



def _dataset_class() -> Any:
    from litdata import StreamingDataset

    class Images(StreamingDataset):
        """The documented way to transform: override __getitem__ and call super()."""

        def __init__(self, *args: Any, recipe: Recipe, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.recipe = recipe

        def __getitem__(self, index: Any) -> tuple[Any, int, int]:
            item = super().__getitem__(index)
            return self.recipe(item["jpg"]), int(item["cls"]), int(item["idx"])

    return Images


def _allow_plain_http() -> None:
    """Let litdata's obstore chunk downloads reach the benchmark server's plain-http endpoint.

    litdata hands obstore a fixed client-options dict (timeouts, pool) that lacks ``allow_http``,
    so obstore refuses ``http://`` (reqwest "BadScheme"), and the ``AWS_ALLOW_HTTP`` variable is
    overridden by that dict. Real S3 is https and never needs this. Adding the one key keeps
    litdata on its default fast path (async obstore prefetch) instead of the boto3 fallback.
    """
    from litdata.streaming import downloader

    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = True


def run(spec: Spec, version: str) -> dict[str, Any]:
    from litdata import StreamingDataLoader

    cache = fresh_dir(spec.workpath("cache"))
    _allow_plain_http()
    options = {"endpoint_url": spec.endpoint, "aws_access_key_id": spec.access_key,
               "aws_secret_access_key": spec.secret_key}
    images_cls = _dataset_class()

    def build() -> Any:
        ds = images_cls(spec.s3_url(spec.peer_prefix.rstrip("/")), cache_dir=str(cache), shuffle=True,
                        seed=spec.seed, storage_options=options, recipe=Recipe(spec.decoder, spec.image_size))
        return StreamingDataLoader(ds, batch_size=spec.batch_size, **loader_kwargs(spec))

    out = timed_epoch(build)
    out["sampling"] = (f"litdata shuffle: chunk order permuted, items shuffled in windows of 256 within a chunk "
                       f"(chunks of {spec.shard_size}, written in shuffled order)")
    out["settings"] = {"chunk_size": spec.shard_size, "shuffle": True, "item_shuffle_window": "default (256)",
                       "max_pre_download": "default (2)", "loader": "StreamingDataLoader", **loader_kwargs(spec),
                       "batch_size": spec.batch_size, "decoder": spec.decoder}
    return out


if __name__ == "__main__":
    raise SystemExit(main(PEER, module="litdata", dist="litdata"))
