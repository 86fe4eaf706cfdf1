"""``get_dataset``: the seed's entry point, building an S3 or scratch image dataset from its JSON files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..storage.cache import DiskCache
from ..storage.retry import RetryPolicy
from ..storage.s3 import DEFAULT_MAX_POOL_CONNECTIONS
from .files import (
    S3Credentials,
    TrainClasses,
    ValClasses,
    compute_labels,
    parse_classes,
    parse_index,
    read_json,
    resolve_credentials,
    write_json_atomic,
)
from .image import ImageDataset, S3ImageDataset, ScratchImageDataset

__all__ = ["get_dataset", "DATASETS", "DATASET_TYPES"]

log = logging.getLogger(__name__)

DATASETS = ("s3", "scratch")
DATASET_TYPES = ("train", "val")
DEFAULT_CACHE_MAX_BYTES = 50 * 2**30


def _load_json_file(kind: str, what: str, given: str | os.PathLike | None, dataset_type: str,
                    creds: S3Credentials | None, s3_options: dict[str, Any]) -> tuple[Any, str]:
    """Read the index or classes file, honouring the credential file's ``*_download_url`` entries.

    * ``given`` is an ``s3://`` URL: download it.
    * ``given`` is an existing local file: read it.
    * ``given`` is missing locally but the credential file has ``<type>_<kind>_file_download_url``:
      download that and save it (atomically) at ``given``, so the next run reads it locally.
    * ``given`` is None: download the URL into memory.
    """
    url = (creds.download_urls if creds else {}).get(f"{dataset_type}_{kind}_file_download_url")
    if given is not None:
        loc = os.fspath(given)
        if loc.startswith("s3://"):
            return read_json(loc, what, s3_options), loc
        path = Path(loc).expanduser()
        if path.exists() or url is None:
            return read_json(path, what), str(path)
        data = read_json(url, what, s3_options)
        write_json_atomic(path, data)
        log.info("downloaded %s file %s to %s", what, url, path)
        return data, url
    if url is None:
        hint = f" or set {dataset_type}_{kind}_file_download_url in the credential file" if creds else ""
        raise ConfigError(f"no {what} file: pass {kind}_file=...{hint}")
    return read_json(url, what, s3_options), url


def get_dataset(dataset: str, dataset_type: str = "train", limit: int | None = None, use_cache: bool = False,
                index_file: str | os.PathLike | None = None, classes_file: str | os.PathLike | None = None,
                s3_credential_file: str | os.PathLike | None = None, *,
                transform: Callable[[Any], Any] | None = None,
                root: str | os.PathLike | None = None,
                bucket: str | None = None, prefix: str = "",
                endpoint_url: str | None = None, region_name: str | None = None,
                addressing_style: str | None = None, profile_name: str | None = None,
                verify: bool | str | None = None,
                aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS, retry: RetryPolicy | None = None,
                cache_dir: str | os.PathLike | None = None, cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
                decoder: str = "pil", validate: bool = True, s3_client: str = "botocore",
                max_object_bytes: int | None = None, verify_etag: bool = False,
                decode_device: str = "cpu") -> ImageDataset:
    """Build the seed's image dataset from its index, classes and credential files.

    dataset
        ``"s3"`` (objects in a bucket) or ``"scratch"`` (files under ``root``; default: the
        current directory, as in the seed's ``scratch/imagenet/...`` index entries).
    dataset_type
        ``"train"`` or ``"val"``: picks the ``*_download_url`` entries of the credential file.
        The classes file may be in either seed format (train ``{wnid: {"id", "name"}}``, labels
        from the filename prefix before ``_``; or val ``{"<position>": id}``); its shape decides.
    limit
        Keep the **first** ``limit`` entries of the index (in index order, not a random sample);
        ``None`` keeps all. The whole index and classes file are still validated.
    use_cache
        Keep every fetched object in an on-disk cache (``cache_dir``, default
        ``$CDL_CACHE_DIR`` or ``~/.cache/concurrent_dataloader``) shared by all worker
        processes, bounded to ``cache_max_bytes`` with LRU eviction. Later epochs read from disk.
    s3_credential_file
        JSON with ``access_key``/``secret`` or ``aws_access_key_id``/``aws_secret_access_key``,
        optionally ``bucket_name``, ``endpoint_url``, ``region_name`` and ``*_download_url``.
        Key precedence: explicit ``aws_*`` arguments, this file, the environment, ``~/.aws``.

    S3 options (``endpoint_url``, ``region_name``, ``addressing_style``, ``profile_name``,
    ``verify``, ``max_pool_connections``, ``retry``) point the dataset at MinIO/Ceph/moto;
    arguments win over the credential file, which wins over botocore's own settings
    (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the profile's ``endpoint_url``...).
    ``max_object_bytes`` refuses larger objects (before reading them); ``verify_etag`` checks each
    whole-object body against its MD5 ETag (off by default: SSE-KMS ETags are not MD5s).
    ``s3_client``: ``"botocore"`` (boto3/aiobotocore) or ``"lean"`` (our SigV4 client, ~10x less
    CPU per GET; same endpoint, addressing, TLS and credential settings), see :class:`S3ImageDataset`.
    ``decoder``: ``"pil"`` (default; samples are RGB ``PIL.Image`` objects) or ``"torchvision"`` (``uint8``
    CHW RGB tensors, for :mod:`concurrent_dataloader.transforms`); ``decode_device="cuda"`` leaves
    decoding to the main process (see docs/decode.md).
    With ``validate=True`` a bad bucket or wrong credentials fail here (one HeadBucket request)
    rather than in the first batch.
    """
    kind = str(dataset).lower()
    if kind not in DATASETS:
        raise ConfigError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    dtype = str(dataset_type).lower()
    if dtype not in DATASET_TYPES:
        raise ConfigError(f"dataset_type must be one of {DATASET_TYPES}, got {dataset_type!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be None or an int >= 1, got {limit!r}")

    creds: S3Credentials | None = None
    s3_options: dict[str, Any] = {}
    if kind == "s3" or s3_credential_file is not None:
        creds = resolve_credentials(s3_credential_file, aws_access_key_id=aws_access_key_id,
                                    aws_secret_access_key=aws_secret_access_key)
        s3_options = dict(creds.client_options(), max_pool_connections=max_pool_connections)
        if retry is not None:
            s3_options["retry"] = retry
        for name, value in (("endpoint_url", endpoint_url or creds.endpoint_url),
                            ("region_name", region_name or creds.region_name),
                            ("addressing_style", addressing_style),
                            ("profile_name", profile_name),
                            ("verify", verify),
                            ("max_object_bytes", max_object_bytes),
                            ("verify_etag", verify_etag or None)):
            if value is not None:
                s3_options[name] = value

    index_data, index_src = _load_json_file("index", "index", index_file, dtype, creds, s3_options)
    index = parse_index(index_data, index_src)
    classes_data, classes_src = _load_json_file("classes", "classes", classes_file, dtype, creds, s3_options)
    classes = parse_classes(classes_data, classes_src)
    labels = compute_labels(index, classes, index_src)
    if limit is not None:
        index, labels = index[:limit], labels[:limit]
    class_ids = classes.ids if isinstance(classes, TrainClasses) else None

    if kind == "s3":
        assert creds is not None
        bucket_name = bucket or creds.bucket_name
        if not bucket_name:
            raise ConfigError("no S3 bucket: pass bucket=... or set bucket_name in the credential file")
        cache = (DiskCache(cache_dir, namespace=f"s3|{s3_options.get('endpoint_url') or ''}|{bucket_name}|{prefix}",
                           max_bytes=cache_max_bytes) if use_cache else None)
        ds: ImageDataset = S3ImageDataset(bucket_name, index, labels, prefix=prefix, transform=transform,
                                          cache=cache, decoder=decoder, classes=class_ids, s3_client=s3_client,
                                          decode_device=decode_device, **s3_options)
        if validate:
            ds.store.check()  # type: ignore[attr-defined]
            ds.store.close()  # no sockets for forked workers to inherit
    else:
        base = Path(root).expanduser() if root is not None else Path()
        cache = (DiskCache(cache_dir, namespace=f"file|{base.resolve()}", max_bytes=cache_max_bytes)
                 if use_cache else None)
        ds = ScratchImageDataset(base, index, labels, transform=transform, cache=cache, decoder=decoder,
                                 classes=class_ids, decode_device=decode_device)
        if validate:
            first = ds.store.path(index[0])  # type: ignore[attr-defined]
            if not first.is_file():
                raise FileNotFoundError(f"index file {index_src}: entry 0 ({index[0]!r}) not found at {first} "
                                        f"(root={str(base.resolve())!r}; pass root=... if the entries are relative "
                                        "to another directory)")
    log.info("%s %s dataset: %d images (%s)", kind, dtype, len(ds), "val classes" if isinstance(classes, ValClasses)
             else "train classes")
    return ds
