"""s3torchconnector ``S3IterableDataset`` over tar shards: one streamed GET per shard.

Best mode (s3torchconnector docs, "S3IterableDataset" and the README's "Sharding" notes): an
iterable dataset from the shard URIs with ``enable_sharding=True`` (the objects are split across
DataLoader workers), the default sequential reader (the whole shard is streamed, which is what the
iterable style is for), ``S3ClientConfig(force_path_style=True)`` for a path-style S3-compatible
endpoint (``endpoint=``; credentials from the environment). The connector stops at the object: it
yields one reader per shard, so the tar members are expanded here with the standard library, and a
shard shuffle (the URI list, seeded) plus a sample shuffle buffer give the same sampling as the
WebDataset peer.

Data: the same layout as the WebDataset peer (``shard-%06d.tar`` with ``<n>.jpg`` / ``<n>.cls``).
If the WebDataset peer already prepared the same images under this ``peer_prefix`` its shards are
reused; otherwise plain tar files are written with ``tarfile``.
"""

from __future__ import annotations

import io
import random
import tarfile
from typing import Any, Iterator

import torch.utils.data as tud

from benchmarking.peers._common import (Recipe, Spec, download_images, fresh_dir, is_prepared, log,
                                        loader_kwargs, mark_prepared, main, prepared_tag, s3_client, shard_count,
                                        SHARD_PATTERN, timed_epoch, upload_dir, write_order)

PEER = "s3torch_iterable"
PATTERN = SHARD_PATTERN


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def prepare(spec: Spec, version: str) -> dict[str, Any]:
    client = s3_client(spec)
    tag = prepared_tag(spec, PEER, version)
    if is_prepared(spec, client, tag):
        return {"skipped": True, "objects": shard_count(spec), "bytes": 0}
    if is_prepared(spec, client, tag, peer="webdataset"):
        mark_prepared(spec, client, tag, shards=shard_count(spec), reused="webdataset")
        return {"skipped": True, "objects": shard_count(spec), "bytes": 0, "reused": "webdataset"}
    files = download_images(spec, client)
    out = fresh_dir(spec.workpath("out"))
    order = write_order(spec)
    for s in range(shard_count(spec)):
        with tarfile.open(out / (PATTERN % s), "w", format=tarfile.USTAR_FORMAT) as tar:
            for n in order[s * spec.shard_size:(s + 1) * spec.shard_size]:
                path, label = files[n]
                _add(tar, f"{n:08d}.jpg", path.read_bytes())
                _add(tar, f"{n:08d}.cls", str(label).encode())
    objects, nbytes = upload_dir(spec, client, out)
    mark_prepared(spec, client, tag, shards=objects)
    log(f"s3torch_iterable: {objects} shards, {nbytes / 1e6:.1f} MB uploaded")
    return {"skipped": False, "objects": objects, "bytes": nbytes}


class _TarSamples(tud.IterableDataset):
    """Iterable of (image, label, index): the worker's shards, their members, a shuffle buffer."""

    def __init__(self, shards: Any, recipe: Recipe, buffer: int, seed: int) -> None:
        self.shards = shards
        self.recipe = recipe
        self.buffer = max(1, buffer)
        self.seed = seed

    def _members(self) -> Iterator[tuple[bytes, int, int]]:
        for reader in self.shards:
            pending: dict[str, dict[str, bytes]] = {}
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    stem, _, ext = member.name.rpartition(".")
                    f = tar.extractfile(member)
                    assert f is not None
                    sample = pending.setdefault(stem, {})
                    sample[ext] = f.read()
                    if "jpg" in sample and "cls" in sample:
                        del pending[stem]
                        yield sample["jpg"], int(sample["cls"]), int(stem.rsplit("/", 1)[-1])
            if pending:
                raise ValueError(f"shard {reader.key}: incomplete samples {sorted(pending)[:3]}")

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        info = tud.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        buf: list[tuple[bytes, int, int]] = []
        for item in self._members():
            buf.append(item)
            if len(buf) >= self.buffer:
                k = rng.randrange(len(buf))
                buf[k], buf[-1] = buf[-1], buf[k]
                jpg, label, n = buf.pop()
                yield self.recipe(jpg), label, n
        rng.shuffle(buf)
        for jpg, label, n in buf:
            yield self.recipe(jpg), label, n


def run(spec: Spec, version: str) -> dict[str, Any]:
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    n_shards = shard_count(spec)
    uris = [spec.s3_url(spec.peer_prefix + PATTERN % i) for i in range(n_shards)]
    random.Random(spec.seed).shuffle(uris)  # the shard shuffle

    def build() -> Any:
        shards = S3IterableDataset.from_objects(uris, region=spec.region, endpoint=spec.endpoint,
                                                enable_sharding=True,
                                                s3client_config=S3ClientConfig(force_path_style=True))
        ds = _TarSamples(shards, Recipe(spec.decoder, spec.image_size), spec.shuffle_buffer, spec.seed)
        return tud.DataLoader(ds, batch_size=spec.batch_size, **loader_kwargs(spec))

    out = timed_epoch(build)
    out["sampling"] = (f"shuffle buffer {spec.shuffle_buffer} (+ shard shuffle, {n_shards} shards "
                       "written in shuffled order)")
    out["settings"] = {"shards": n_shards, "shard_size": spec.shard_size, "enable_sharding": True,
                       "reader": "sequential (default)", "force_path_style": True,
                       "shuffle_buffer": spec.shuffle_buffer, **loader_kwargs(spec), "batch_size": spec.batch_size,
                       "decoder": spec.decoder}
    return out


if __name__ == "__main__":
    raise SystemExit(main(PEER, module="s3torchconnector", dist="s3torchconnector"))
