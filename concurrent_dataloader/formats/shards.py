"""Tar shards in object storage (seed 003, AIS tar2tf), the WebDataset way.

A *shard* is a tar file (plain, or gzip/bz2/xz-compressed). Its members are grouped into
*records* by key: the member path up to the first dot of its basename. A record is a dict with
``__key__`` (the key), ``__url__`` (the shard) and one ``bytes`` entry per extension (the rest
of the basename after that first dot, lower-cased), so ``n01/img7.jpg`` + ``n01/img7.cls``
becomes ``{"__key__": "n01/img7", "jpg": b"...", "cls": b"3"}``. This is the WebDataset
convention: shards written by webdataset read here, and shards we write read there.

Shard names are brace templates (``train-{0..7}.tar``, ``shard-{000..127}.tar``,
``x-{0..10..2}.tar``, ``{a,b}-{0..3}.tar``) expanded with ``braceexpand``.

* :class:`TarShardDataset` streams shards (S3 or local) as an ``IterableDataset``: shards split
  across DataLoader workers and distributed ranks, seeded shuffles, several shards downloading
  at once in threads.
* :class:`TarShardSource` (alias ``AisDataset``) is the seed's entry point: a bucket + endpoint,
  and ``load_from_tar`` to make an in-memory dataset or a TFRecord file.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import os
import random
import tarfile
import warnings
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..decoding import check_decoder, decode_image
from ..errors import ConfigError, DataFormatError
from ..storage.base import ByteStore, open_store
from ..storage.local import LocalStore
from ..storage.url import is_remote_url, split_object_url
from ._tarutil import SkippedMembers, check_end_of_archive, decompress_all, detect_compression, iter_tar_members
from .tfrecord import TFRecordWriter, decode_example

__all__ = [
    "expand_template",
    "split_key",
    "iter_records",
    "TarShardDataset",
    "TarShardSource",
    "AisDataset",
    "InMemoryDataset",
    "ImageRecordDecoder",
    "ExampleImageParser",
    "default_record_to_pair",
    "default_record_to_example",
    "default_record_parser",
    "record_image_bytes",
    "record_label",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff", "gif", "img", "image")
LABEL_EXTENSIONS = ("cls", "class", "label", "cls.txt", "label.txt", "target")


# --------------------------------------------------------------------------- names
def expand_template(template: str | Sequence[str]) -> list[str]:
    """Shard names from one brace template or a list of them (each expanded, order kept)."""
    from braceexpand import braceexpand

    templates = [template] if isinstance(template, str) else list(template)
    names: list[str] = []
    for t in templates:
        names.extend(braceexpand(t))
    if not names:
        raise ConfigError(f"template {template!r} names no shards")
    return names


def split_key(name: str) -> tuple[str, str] | None:
    """``dir/base.ext.more`` -> (``dir/base``, ``ext.more``); None when the basename has no dot."""
    dirname, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    if not stem:
        return None
    return (f"{dirname}/{stem}" if dirname else stem), ext.lower()


def iter_records(data: bytes | BinaryIO, shard: str = "<shard>") -> Iterator[dict[str, Any]]:
    """Records of one shard (its bytes, or a binary file object), in archive order.

    Consecutive members with the same key form one record. A repeated extension inside one
    record is an error (two different files would silently collapse into one). Members whose
    basename has no extension are skipped, as WebDataset does. Unsafe names, links and devices
    are skipped with a warning (see :mod:`._tarutil`). A truncated or corrupt shard raises
    :class:`DataFormatError` naming the shard and the member.
    """
    raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
    # The shard is in memory already (downloaded whole), so decompress it and read members by
    # offset: that allows the end-of-archive check that a pure stream read cannot do.
    buf = decompress_all(raw, detect_compression(raw[:8]), shard)
    del raw
    view = memoryview(buf)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(buf), mode="r:")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataFormatError(f"{shard}: not a tar shard ({exc})") from exc
    skipped = SkippedMembers(shard)
    current: dict[str, Any] | None = None
    last = ""

    def seen(info: tarfile.TarInfo) -> None:
        nonlocal last
        last = info.name
        if info.offset_data + info.size > len(buf):
            raise DataFormatError(f"{shard}: member {info.name!r} is truncated (shard has {len(buf)} bytes, "
                                  f"member needs {info.offset_data + info.size})")

    with tar:
        for name, info in iter_tar_members(tar, shard, skipped, seen):
            parts = split_key(name)
            if parts is None:
                continue
            key, ext = parts
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": shard}
            if ext in current:
                raise DataFormatError(f"{shard}: record {key!r} has two members with extension {ext!r}")
            current[ext] = bytes(view[info.offset_data:info.offset_data + info.size])
        check_end_of_archive(lambda o, n: bytes(view[o:o + n]), tar.offset, shard, last)
    if current is not None:
        yield current
    skipped.warn(stacklevel=4)


# --------------------------------------------------------------------------- record helpers
def record_image_bytes(record: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in record:
            return record[ext]
    raise DataFormatError(f"{record.get('__url__', '<shard>')}: record {record.get('__key__')!r} has no image "
                          f"(looked for extensions {IMAGE_EXTENSIONS}; it has {sorted(k for k in record if not k.startswith('__'))})")


def record_label(record: dict[str, Any]) -> int:
    for ext in LABEL_EXTENSIONS:
        if ext in record:
            value = record[ext]
            try:
                return int(value.decode("utf-8").strip() if isinstance(value, (bytes, bytearray)) else value)
            except ValueError:
                raise DataFormatError(f"{record.get('__url__', '<shard>')}: record {record.get('__key__')!r}: "
                                      f"label {value[:40]!r} is not an integer") from None
    raise DataFormatError(f"{record.get('__url__', '<shard>')}: record {record.get('__key__')!r} has no label "
                          f"(looked for extensions {LABEL_EXTENSIONS})")


def _open_image(data: bytes, where: str, decoder: str | None = None) -> Any:
    """``decoder=None``: the ``PIL.Image`` in its own mode; else the registry's decoder
    (``decoding.decode_image``: RGB). Either way a bad image is a DataFormatError naming ``where``."""
    from PIL import Image

    try:
        if decoder is not None:
            return decode_image(data, decoder)
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataFormatError(f"{where}: not a readable image ({exc})") from exc
    return img


def _where(record: dict[str, Any]) -> str:
    return f"{record.get('__url__', '<shard>')}: record {record.get('__key__')!r}"


def _to_float_chw(img: Any, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    import numpy as np
    from torchvision.transforms.functional import resize

    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    return resize(t, list(size), antialias=True)


def default_record_to_pair(record: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """The seed's default: the image decoded, as float32 in [0, 1], resized to 224x224, and the
    ``cls`` label. Channels first (3x224x224), as torch models expect (the TF seed was HWC)."""
    return _to_float_chw(_open_image(record_image_bytes(record), _where(record))), record_label(record)


def default_record_to_example(record: dict[str, Any]) -> dict[str, Any]:
    """The seed's ``tf.train.Example`` features: ``height, width, depth, label`` (int64) and
    ``image_raw`` (the encoded image bytes, as in the seed)."""
    data = record_image_bytes(record)
    img = _open_image(data, _where(record))
    depth = len(img.getbands())
    return {"height": img.height, "width": img.width, "depth": depth, "label": record_label(record),
            "image_raw": data}


def default_record_parser(serialized: bytes) -> tuple[torch.Tensor, int]:
    """Read back what :func:`default_record_to_example` wrote: (float32 3x224x224 in [0, 1], label)."""
    features = decode_example(serialized)
    try:
        height, width, depth = features["height"][0], features["width"][0], features["depth"][0]
        label, data = features["label"][0], features["image_raw"][0]
    except (KeyError, IndexError) as exc:
        raise DataFormatError(f"Example lacks feature {exc}; expected height, width, depth, label, image_raw") from None
    img = _open_image(data, "Example.image_raw")
    if (img.height, img.width, len(img.getbands())) != (height, width, depth):
        raise DataFormatError(f"Example image is {img.height}x{img.width}x{len(img.getbands())} but its features "
                              f"say {height}x{width}x{depth}")
    return _to_float_chw(img), int(label)


class ImageRecordDecoder:
    """A picklable ``map_fn`` for :class:`TarShardDataset`: record -> (transform(image), label).

    ``decoder="pil"``: a ``PIL.Image`` converted to ``mode`` (None keeps the file's mode);
    ``decoder="torchvision"``: a uint8 CHW RGB tensor (``mode`` must be ``"RGB"``), for
    :mod:`concurrent_dataloader.transforms`.
    """

    def __init__(self, transform: Callable | None = None, mode: str | None = "RGB", decoder: str = "pil") -> None:
        check_decoder(decoder)
        if decoder != "pil" and mode != "RGB":
            raise ConfigError(f"decoder={decoder!r} always gives RGB; mode={mode!r} needs decoder='pil'")
        self.transform = transform
        self.mode = mode
        self.decoder = decoder

    def __call__(self, record: dict[str, Any]) -> tuple[Any, int]:
        if self.decoder != "pil":
            img = _open_image(record_image_bytes(record), _where(record), self.decoder)
        else:
            img = _open_image(record_image_bytes(record), _where(record))
            if self.mode is not None and img.mode != self.mode:
                img = img.convert(self.mode)
        return (self.transform(img) if self.transform is not None else img), record_label(record)


class ExampleImageParser:
    """A picklable TFRecord ``parser`` (:class:`~concurrent_dataloader.formats.TFRecordDataset`):
    a serialized ``tf.train.Example`` -> ``(transform(image), label)``.

    The image is the encoded bytes of feature ``image_feature`` (``image_raw``, as
    :func:`default_record_to_example` writes it; ``image/encoded`` in TF's ImageNet scripts),
    decoded by ``decoder`` (``"pil"``: RGB ``PIL.Image``; ``"torchvision"``: uint8 CHW RGB tensor);
    the label is the first int of ``label_feature``. A bad image is a DataFormatError naming the
    feature and the label, since records have no key.
    """

    def __init__(self, transform: Callable | None = None, decoder: str = "pil", image_feature: str = "image_raw",
                 label_feature: str = "label") -> None:
        self.transform = transform
        self.decoder = check_decoder(decoder)
        self.image_feature = image_feature
        self.label_feature = label_feature

    def __call__(self, serialized: bytes) -> tuple[Any, int]:
        features = decode_example(serialized)
        try:
            data, label = features[self.image_feature][0], int(features[self.label_feature][0])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DataFormatError(f"Example lacks a usable feature ({type(exc).__name__}: {exc}); expected "
                                  f"{self.image_feature!r} (bytes) and {self.label_feature!r} (int64); it has "
                                  f"{sorted(features)}") from None
        img = _open_image(data, f"Example.{self.image_feature} (label {label}, {len(data)} bytes)", self.decoder)
        return (self.transform(img) if self.transform is not None else img), label


# --------------------------------------------------------------------------- shard locations
class _Shards:
    """Shard names resolved to (store, key); stores are shared per base and pickle without clients."""

    def __init__(self, names: list[str], store: ByteStore | str | None, storage_options: dict) -> None:
        self.names = names
        if isinstance(store, str):
            store = open_store(store, **storage_options)
        self.stores: dict[str, ByteStore] = {}
        self.locations: list[tuple[str, str]] = []
        for name in names:
            if store is not None:
                self.locations.append(("", name))
            else:
                base, key = split_object_url(name, "path/shard.tar")
                if base not in self.stores:
                    self.stores[base] = (open_store(base, **storage_options) if is_remote_url(base)
                                         else LocalStore(base))
                self.locations.append((base, key))
        if store is not None:
            self.stores[""] = store

    def describe(self, i: int) -> str:
        base, key = self.locations[i]
        return self.stores[base].describe(key)

    def get(self, i: int) -> bytes:
        base, key = self.locations[i]
        return self.stores[base].get(key)

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def _prefetched(shards: _Shards, order: Sequence[int], prefetch: int, threads: int) -> Iterator[tuple[int, bytes]]:
    """(shard number, bytes) in ``order``, with up to ``prefetch`` shards downloading at once.

    NOTE (concurrency): downloads run in a private thread pool; at most ``prefetch`` shards are
    in flight or buffered, which bounds memory to about ``prefetch`` shard sizes. The pool is
    shut down (pending downloads cancelled) when the consumer stops early.
    """
    if not order:
        return
    pool = cf.ThreadPoolExecutor(max(1, min(threads, prefetch)), thread_name_prefix="cdl-shard")
    pending: collections.deque[tuple[int, cf.Future]] = collections.deque()
    it = iter(order)
    try:
        for i in it:
            pending.append((i, pool.submit(shards.get, i)))
            if len(pending) >= prefetch:
                break
        while pending:
            i, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(shards.get, nxt)))
            try:
                data = fut.result()
            except Exception as exc:
                exc.add_note(f"while downloading shard {shards.describe(i)}")
                raise
            yield i, data
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _seed_for(*parts: int) -> int:
    # A stable mix (Python's hash() of ints is stable, but keep it explicit and 64-bit).
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- streaming dataset
class TarShardDataset(IterableDataset):
    """Streams the records of tar shards from S3 or local disk.

    shards
        A brace template or list of names/templates. Names are keys in ``store`` when it is
        given, else full locations (``s3://bucket/dir/x.tar``, ``/data/x.tar``).
    store, storage_options
        A :class:`ByteStore` or a base URL (``s3://bucket/prefix``, a directory), and options for
        ``open_store`` (``endpoint_url``, credentials, ...).
    map_fn
        Applied to each record in the worker (e.g. :class:`ImageRecordDecoder`); default: the
        record dict itself.
    shuffle, seed, shuffle_buffer
        ``shuffle`` permutes the shard order each epoch (the same permutation on every rank and
        worker, from ``seed`` and the epoch); ``shuffle_buffer`` > 1 also shuffles samples
        through a buffer of that many samples.
    rank, world_size
        Default: from ``torch.distributed`` when initialized, else 0 and 1.
    prefetch_shards, download_threads
        Shards downloading/buffered at once per worker (memory ~ that many shards), and threads.

    Shard ``order[k]`` goes to the (rank, worker) pair with ``k % (world_size * num_workers) ==
    rank * num_workers + worker_id``: every shard is read by exactly one worker of one rank per
    epoch. Ranks may get different record counts when shards differ in size (as in WebDataset);
    give each rank the same number of equal-size shards for DDP.

    Epochs: call :meth:`set_epoch` before each epoch (like ``DistributedSampler``). Each copy of
    the dataset also counts its own passes, so persistent workers reshuffle too.
    """

    def __init__(self, shards: str | Sequence[str], store: ByteStore | str | None = None, *,
                 storage_options: dict | None = None, map_fn: Callable[[dict], Any] | None = None,
                 shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 0,
                 rank: int | None = None, world_size: int | None = None,
                 prefetch_shards: int = 4, download_threads: int | None = None) -> None:
        self.shard_names = expand_template(shards)
        self._shards = _Shards(self.shard_names, store, dict(storage_options or {}))
        self.map_fn = map_fn
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        if (rank is None) != (world_size is None):
            raise ConfigError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= int(rank) < int(world_size):  # type: ignore[arg-type]
            raise ConfigError(f"rank {rank} is not in [0, {world_size})")
        self.rank, self.world_size = rank, world_size
        if prefetch_shards < 1:
            raise ConfigError(f"prefetch_shards must be >= 1, got {prefetch_shards}")
        self.prefetch_shards = int(prefetch_shards)
        self.download_threads = int(download_threads or prefetch_shards)
        self.epoch = 0
        self._passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        return f"TarShardDataset({len(self.shard_names)} shards, first={self._shards.describe(0)!r})"

    def shard_order(self, epoch: int | None = None) -> list[int]:
        """The (shuffled) shard order for an epoch; identical on every rank and worker."""
        order = list(range(len(self.shard_names)))
        if self.shuffle:
            random.Random(_seed_for(self.seed, self.epoch if epoch is None else epoch)).shuffle(order)
        return order

    def assigned_shards(self, rank: int, world_size: int, worker_id: int = 0, num_workers: int = 1,
                        epoch: int | None = None) -> list[int]:
        slot, slots = rank * num_workers + worker_id, world_size * num_workers
        return self.shard_order(epoch)[slot::slots]

    def __iter__(self) -> Iterator[Any]:
        rank, world = (self.rank, self.world_size) if self.world_size is not None else _dist_rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # NOTE: every rank/worker derives the same permutation: same seed, same epoch, same pass.
        epoch = _seed_for(self.epoch, self._passes)
        self._passes += 1
        mine = self.assigned_shards(rank, world, wid, nw, epoch)
        if len(self.shard_names) < world * nw and wid == 0 and rank == 0:
            warnings.warn(f"{len(self.shard_names)} shards for {world} rank(s) x {nw} worker(s): some workers get "
                          "no shard; use more, smaller shards", RuntimeWarning, stacklevel=2)
        samples = self._samples(mine)
        if self.shuffle_buffer > 1:
            samples = _shuffle_buffer(samples, self.shuffle_buffer,
                                      random.Random(_seed_for(self.seed, epoch, rank, wid, 1)))
        return samples

    def _samples(self, order: list[int]) -> Iterator[Any]:
        for i, data in _prefetched(self._shards, order, self.prefetch_shards, self.download_threads):
            for record in iter_records(data, self._shards.describe(i)):
                yield self.map_fn(record) if self.map_fn is not None else record

    def close(self) -> None:
        """Release this process's store clients (they reopen lazily)."""
        self._shards.close()


def _shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


# --------------------------------------------------------------------------- seed API
class InMemoryDataset(Dataset):
    """A map-style dataset over a list of samples (what ``load_from_tar`` returns without ``path``)."""

    def __init__(self, samples: list[Any]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


def _writable(x: Any) -> Any:
    import numpy as np

    return x.copy() if isinstance(x, np.ndarray) and not x.flags.writeable else x


def _apply_output_spec(pair: Any, output_types: Any, output_shapes: Any, where: str) -> Any:
    if output_types is None and output_shapes is None:
        return pair
    items = list(pair) if isinstance(pair, (tuple, list)) else [pair]
    if output_types is not None:
        types = list(output_types) if isinstance(output_types, (tuple, list)) else [output_types]
        if len(types) != len(items):
            raise ConfigError(f"output_types has {len(types)} entries but record_to_pair returned {len(items)}")
        items = [x if t is None else torch.as_tensor(_writable(x), dtype=t) for x, t in zip(items, types)]
    if output_shapes is not None:
        shapes = list(output_shapes) if isinstance(output_shapes, (tuple, list)) and (
            not output_shapes or isinstance(output_shapes[0], (tuple, list, torch.Size)) or output_shapes[0] is None
        ) else [output_shapes]
        if len(shapes) != len(items):
            raise ConfigError(f"output_shapes has {len(shapes)} entries but record_to_pair returned {len(items)}")
        for k, (x, shape) in enumerate(zip(items, shapes)):
            if shape is None:
                continue
            actual = tuple(x.shape) if hasattr(x, "shape") else tuple(torch.as_tensor(x).shape)
            if len(actual) != len(shape) or any(s is not None and s != a for s, a in zip(shape, actual)):
                raise DataFormatError(f"{where}: element {k} has shape {actual}, output_shapes wants {tuple(shape)}")
    return tuple(items) if isinstance(pair, (tuple, list)) else items[0]


def _path_generator(path: str) -> Iterator[str]:
    """``train.record`` -> train.record, 1train.record, ...; ``train-{}.record`` -> train-0.record, ..."""
    if "{}" in path:
        i = 0
        while True:
            yield path.format(i)
            i += 1
    yield path
    i = 1
    base, name = os.path.split(path)
    while True:
        yield os.path.join(base, f"{i}{name}")
        i += 1


class TarShardSource:
    """The seed's ``AisDataset``: tar shards in a bucket of an S3-compatible store.

    ``TarShardSource(bucket, endpoint_url, **storage_options)``; the endpoint may omit the
    scheme (``localhost:8080`` means ``http://localhost:8080``). ``bucket`` may also be a store
    URL (``s3://bucket/prefix``) or a local directory, or pass ``store=`` directly. Credentials
    go in ``storage_options`` (``aws_access_key_id``...) or the usual AWS environment/config.
    ``num_workers`` is how many shards download at once.
    """

    def __init__(self, bucket: str | None = None, endpoint_url: str | None = None, *, prefix: str = "",
                 store: ByteStore | None = None, num_workers: int = 4, **storage_options: Any) -> None:
        if store is None:
            if not bucket:
                raise ConfigError("give a bucket (or a store URL / local directory), or store=")
            # A plain name is a bucket; a URL or a path (with '/', or an existing folder when no
            # endpoint is given) is used as is.
            if "://" in bucket or "/" in bucket or (endpoint_url is None and os.path.isdir(bucket)):
                url = bucket
            else:
                url = f"s3://{bucket}/{prefix.strip('/')}" if prefix else f"s3://{bucket}"
            if endpoint_url is not None:
                if "://" not in endpoint_url:
                    endpoint_url = "http://" + endpoint_url
                storage_options["endpoint_url"] = endpoint_url
            store = open_store(url, **storage_options) if "://" in url else LocalStore(url)
        self.store = store
        self.bucket = bucket
        self.num_workers = max(1, int(num_workers))

    def __repr__(self) -> str:
        return f"TarShardSource({self.store!r})"

    def shards(self, template: str | Sequence[str]) -> list[str]:
        return expand_template(template)

    def records(self, template: str | Sequence[str]) -> Iterator[dict[str, Any]]:
        """Every record of the shards, in template order; shards download concurrently."""
        shards = _Shards(expand_template(template), self.store, {})
        order = list(range(len(shards.names)))
        for i, data in _prefetched(shards, order, self.num_workers, self.num_workers):
            yield from iter_records(data, shards.describe(i))

    def dataset(self, template: str | Sequence[str], **kwargs: Any) -> TarShardDataset:
        """A streaming :class:`TarShardDataset` over these shards (kwargs as for that class)."""
        kwargs.setdefault("prefetch_shards", self.num_workers)
        return TarShardDataset(template, self.store, **kwargs)

    def load_from_tar(self, template: str | Sequence[str], path: str | os.PathLike | None = None,
                      record_to_example: Callable[[dict], Any] = default_record_to_example,
                      record_to_pair: Callable[[dict], Any] | None = None,
                      output_types: Any = None, output_shapes: Any = None,
                      max_shard_size: int = 0) -> InMemoryDataset | list[str]:
        """Read the records of ``template``'s shards.

        Without ``path``: an in-memory map-style dataset of ``record_to_pair(record)`` (default
        :func:`default_record_to_pair`), each pair converted to ``output_types`` (torch dtypes)
        and checked against ``output_shapes`` (``None`` entries match any size) when given.

        With ``path``: a TFRecord file of ``record_to_example(record)`` (a features dict, an
        :class:`~.tfrecord.Example`, or serialized bytes). With ``max_shard_size`` > 0 bytes,
        a new file starts past that size (``path`` may contain ``{}`` for the file number).
        Files are written atomically. Returns the list of files written; read them with
        :class:`~.tfrecord.TFRecordDataset` and :func:`default_record_parser`.
        """
        if path is None:
            if max_shard_size:
                raise ConfigError("max_shard_size needs path=")
            to_pair = record_to_pair or default_record_to_pair
            samples = [_apply_output_spec(to_pair(r), output_types, output_shapes, _where(r))
                       for r in self.records(template)]
            return InMemoryDataset(samples)
        paths = _path_generator(os.fspath(path))
        written: list[str] = []
        writer = TFRecordWriter(next(paths))
        try:
            for record in self.records(template):
                example = record_to_example(record)
                writer.write(example)
                if max_shard_size > 0 and writer.bytes_written > max_shard_size:
                    writer.close()
                    written.append(str(writer.path))
                    writer = TFRecordWriter(next(paths))
        except BaseException:
            writer.abort()
            raise
        if writer.records or not written:
            writer.close()
            written.append(str(writer.path))
        else:
            writer.abort()
        return written

    def close(self) -> None:
        self.store.close()


# The seed's name. The proxy URL argument of AIS is the S3 endpoint here.
AisDataset = TarShardSource
