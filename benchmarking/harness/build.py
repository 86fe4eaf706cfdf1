"""Building what a run reads: the dataset (any format, local or on the server, our S3 clients) and
the loader (stock torch, ours threaded/asyncio, torch over ``concurrent_getitems``). Runs inside
the run's subprocess (:mod:`.runner`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .config import BUCKET, CREDS, FORMAT_BUCKET, FormatSettings, RunSpec
from .prepare import FormatData

__all__ = ["realistic_transform", "fast_transform", "make_transform", "build_dataset", "build_loader",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def realistic_transform(normalize: bool = False) -> Callable[[Any], Any]:
    """The ImageNet training transform on a PIL image: RandomResizedCrop(224), horizontal flip,
    ToTensor (and Normalize with the ImageNet mean/std when ``normalize``)."""
    import torchvision.transforms as T

    steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()]
    if normalize:
        steps.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(steps)


def fast_transform() -> Callable[[Any], Any]:
    """The fast path's recipe on a uint8 tensor decoded by torchvision: our ``transforms.train_transform``
    (fused RandomResizedCrop(224) + flip, uint8 out; ``normalize`` runs on the batch, see the runner)."""
    from concurrent_dataloader.transforms import train_transform

    return train_transform(224)


class _PilToArray:
    """'decode' transform: keep the decoded pixels, as a tensor of the original size (no resize)."""

    def __call__(self, img: Any) -> Any:
        import numpy as np
        import torch

        return torch.from_numpy(np.asarray(img).copy())


def _collate_images(batch: list) -> Any:
    """Collate that tolerates images of different sizes (transform 'decode' or 'none')."""
    import torch
    from torch.utils.data import default_collate

    first = batch[0][0]
    if isinstance(first, torch.Tensor) and all(b[0].shape == first.shape for b in batch):
        return default_collate(batch)
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch])


def make_transform(name: str, decoder: str = "pil") -> Callable[[Any], Any] | None:
    if name in ("realistic", "normalize"):
        if decoder == "torchvision":
            return fast_transform()
        return realistic_transform(normalize=name == "normalize")
    if name == "decode":
        return _PilToArray()
    return None


def build_dataset(spec: RunSpec, data_dir: Path, endpoint_url: str | None, limit: int | None = None,
                  formats: dict[str, FormatData] | None = None, settings: FormatSettings | None = None,
                  seed: int = 0) -> Any:
    """The dataset a run reads. ``s3`` + ``lean`` swaps the botocore store for :class:`LeanS3Store`."""
    from concurrent_dataloader.datasets import ImageDataset, get_dataset

    transform = make_transform(spec.transform, spec.decoder)
    if spec.format != "jpeg":
        if not formats or spec.format not in formats:
            raise ValueError(f"format {spec.format!r} was not prepared (see prepare_formats)")
        return _format_dataset(spec, formats[spec.format], endpoint_url, transform, settings or FormatSettings(),
                               seed)
    common = dict(dataset_type="train", limit=limit, index_file=data_dir / f"index-{spec.storage}-train.json",
                  classes_file=data_dir / "imagenet-train-classes.json", transform=transform,
                  **({"decoder": spec.decoder} if spec.decoder != "pil" else {}))
    if spec.storage == "scratch":
        return get_dataset("scratch", root=data_dir, **common)
    pool = max(64, spec.num_fetch_workers)
    ds = get_dataset("s3", bucket=BUCKET, endpoint_url=endpoint_url, max_pool_connections=pool, **common, **CREDS)
    if spec.s3_client == "lean":
        from concurrent_dataloader.storage.s3_http import LeanS3Store

        store = LeanS3Store(BUCKET, endpoint_url=endpoint_url, max_pool_connections=pool, **CREDS)
        ds.close()
        ds = ImageDataset(store, ds.keys, ds.labels, transform=transform, classes=ds.classes,
                          **({"decoder": spec.decoder} if spec.decoder != "pil" else {}))
    return ds


def _format_dataset(spec: RunSpec, fd: FormatData, endpoint_url: str | None, transform: Any,
                    settings: FormatSettings, seed: int) -> Any:
    """The same images in another storage format: local files, or FORMAT_BUCKET on the server.

    On S3 the lean client is handed over as ``store=`` (each reader takes a ByteStore); with
    ``s3_client: botocore`` the readers open the ``s3://`` URL themselves.
    """
    store: Any = None
    url = options = None
    if spec.storage == "s3":
        pool = max(64, spec.num_fetch_workers)  # NOTE: >= concurrent fetches per process
        if spec.s3_client == "lean":
            from concurrent_dataloader.storage.s3_http import LeanS3Store

            store = LeanS3Store(FORMAT_BUCKET, f"{fd.name}/", endpoint_url=endpoint_url, max_pool_connections=pool,
                                **CREDS)
        else:
            url = f"s3://{FORMAT_BUCKET}/{fd.name}"
            options = dict(endpoint_url=endpoint_url, max_pool_connections=pool, **CREDS)
    fmt = spec.format
    if fmt in ("archive", "archive-mmap"):
        from concurrent_dataloader.formats import ImageArchive

        if spec.storage == "scratch":
            return ImageArchive(fd.archive, transform=transform, progress=False, data_in_memory=fmt == "archive-mmap")
        if store is not None:
            return ImageArchive("train.tar", ipath=fd.s3_archive_index, transform=transform, store=store,
                                progress=False)
        return ImageArchive(f"{url}/train.tar", ipath=fd.s3_archive_index, transform=transform,
                            storage_options=options, progress=False)
    if fmt == "shards":
        from concurrent_dataloader.formats import ImageRecordDecoder, TarShardDataset

        where = store if store is not None else (url or str(fd.root))
        return TarShardDataset(fd.template or "", where, storage_options=options,
                               map_fn=ImageRecordDecoder(transform), shuffle=True, seed=seed,
                               shuffle_buffer=settings.shuffle_buffer, prefetch_shards=spec.prefetch_shards)
    from concurrent_dataloader.formats.converted import get_format

    reader = get_format(fmt).reader
    if store is not None:
        return reader(None, transform, store=store)
    return reader(url or str(fd.root), transform, storage_options=options)


def build_loader(spec: RunSpec, dataset: Any, seed: int, timeout_s: float, images: int = 0) -> Any:
    """The run's loader. ``images`` < the dataset's length: a random sample of that many indices
    (``RandomSampler(num_samples=...)``, still drawn from the whole dataset: random access)."""
    import torch
    import torch.utils.data

    from concurrent_dataloader import DataLoader, concurrent_getitems

    g = torch.Generator()
    g.manual_seed(seed)
    common: dict[str, Any] = dict(batch_size=spec.batch_size, shuffle=True, generator=g, num_workers=spec.num_workers,
                                  collate_fn=None if spec.transform in ("realistic", "normalize") else _collate_images)
    if not isinstance(dataset, torch.utils.data.IterableDataset) and 0 < images < len(dataset):
        del common["shuffle"], common["generator"]
        common["sampler"] = torch.utils.data.RandomSampler(dataset, num_samples=images, generator=g)
    if spec.num_workers > 0:
        common.update(prefetch_factor=spec.prefetch_factor, timeout=timeout_s)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        # the dataset shuffles itself (shard order + buffer); torch refuses shuffle= here
        del common["shuffle"], common["generator"]
        if spec.loader == "torch":
            return torch.utils.data.DataLoader(dataset, **common)
        return DataLoader(dataset, fetch_impl=spec.loader.split("-", 1)[1], **common)
    if spec.loader == "torch":
        return torch.utils.data.DataLoader(dataset, **common)
    if spec.loader == "torch+getitems":
        return torch.utils.data.DataLoader(concurrent_getitems(dataset, num_fetch_workers=spec.num_fetch_workers),
                                           **common)
    impl = spec.loader.split("-", 1)[1]
    return DataLoader(dataset, num_fetch_workers=spec.num_fetch_workers, fetch_impl=impl, batch_pool=spec.batch_pool,
                      **common)
