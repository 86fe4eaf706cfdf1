"""WebDataset: tar shards written by ``ShardWriter``, streamed over plain HTTP GETs.

Best mode (webdataset 1.0.2 README, its pipeline example: shuffle the shards, ``split_by_worker``,
``tarfile_to_samples``, a sample shuffle buffer "usually ... like 1000", decode, ``batched`` at the
end; and the author's distributed example tmbdev/wds-distributed: batch **inside** the workers with
``WebLoader(batch_size=None)`` because "transferring individual samples is slow"): one sequential
GET per shard through its own ``gopen`` (``curl`` for http URLs), ``shardshuffle=<number of shards>``
(1.x warns unless it is an integer), the default ``split_by_worker``, ``.shuffle(shuffle_buffer)``,
``.batched(batch_size)``. Endpoint: shards are plain URLs on the benchmark server
(``http://HOST:PORT/bucket/key``); the server does not check signatures, so unsigned GETs work.
The JPEG bytes are decoded by the shared recipe (same code as every peer) instead of
``.decode("pil")``, which does the same PIL decode.
"""

from __future__ import annotations

from typing import Any

from benchmarking.peers._common import (Recipe, Spec, download_images, fresh_dir, is_prepared, log,
                                        loader_kwargs, mark_prepared, main, prepared_tag, s3_client, shard_count,
                                        SHARD_PATTERN, timed_epoch, upload_dir, write_order)

PEER = "webdataset"
PATTERN = SHARD_PATTERN


def prepare(spec: Spec, version: str) -> dict[str, Any]:
    import webdataset as wds

    client = s3_client(spec)
    tag = prepared_tag(spec, PEER, version)
    if is_prepared(spec, client, tag):
        return {"skipped": True, "objects": shard_count(spec), "bytes": 0}
    files = download_images(spec, client)
    out = fresh_dir(spec.workpath("out"))
    with wds.ShardWriter(str(out / PATTERN), maxcount=spec.shard_size, verbose=0) as sink:
        for n in write_order(spec):
            path, label = files[n]
            sink.write({"__key__": f"{n:08d}", "jpg": path.read_bytes(), "cls": label})
    objects, nbytes = upload_dir(spec, client, out)
    if objects != shard_count(spec):
        raise RuntimeError(f"ShardWriter wrote {objects} shards, expected {shard_count(spec)}")
    mark_prepared(spec, client, tag, shards=objects)
    log(f"webdataset: {objects} shards, {nbytes / 1e6:.1f} MB uploaded")
    return {"skipped": False, "objects": objects, "bytes": nbytes}


def _as_int(value: Any) -> int:
    return int(value)


def run(spec: Spec, version: str) -> dict[str, Any]:
    import webdataset as wds

    n_shards = shard_count(spec)
    urls = [spec.http_url(spec.peer_prefix + PATTERN % i) for i in range(n_shards)]
    recipe = Recipe(spec.decoder, spec.image_size)

    def build() -> Any:
        ds = (wds.WebDataset(urls, shardshuffle=n_shards, seed=spec.seed, empty_check=False)
              .shuffle(spec.shuffle_buffer)
              .to_tuple("jpg", "cls", "__key__")
              .map_tuple(recipe, _as_int, _as_int)
              .batched(spec.batch_size, partial=True))
        return wds.WebLoader(ds, batch_size=None, **loader_kwargs(spec))

    out = timed_epoch(build)
    out["sampling"] = (f"shuffle buffer {spec.shuffle_buffer} (+ shard shuffle, {n_shards} shards "
                       "written in shuffled order)")
    out["settings"] = {"shards": n_shards, "shard_size": spec.shard_size, "shardshuffle": n_shards,
                       "shuffle_buffer": spec.shuffle_buffer, "batching": "in workers (WebLoader batch_size=None)",
                       "transport": "HTTP GET via webdataset gopen (curl)", **loader_kwargs(spec),
                       "batch_size": spec.batch_size, "decoder": spec.decoder}
    return out


if __name__ == "__main__":
    raise SystemExit(main(PEER, module="webdataset", dist="webdataset"))
