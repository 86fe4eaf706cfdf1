"""Image datasets over S3 or a local/network filesystem, built from the seed's JSON files.

``get_dataset("s3"|"scratch", dataset_type, limit, use_cache, index_file, classes_file,
s3_credential_file, ...)`` is the entry point; see ``docs/datasets.md``.
"""

from .factory import DATASET_TYPES, DATASETS, get_dataset
from .files import (
    S3Credentials,
    TrainClasses,
    ValClasses,
    compute_labels,
    load_credential_file,
    parse_classes,
    parse_index,
    read_json,
    resolve_credentials,
    write_json_atomic,
)
from .image import DECODERS, ImageDataset, S3ImageDataset, ScratchImageDataset, decode_image

__all__ = [
    "get_dataset", "DATASETS", "DATASET_TYPES",
    "ImageDataset", "S3ImageDataset", "ScratchImageDataset", "decode_image", "DECODERS",
    "S3Credentials", "TrainClasses", "ValClasses", "compute_labels", "load_credential_file", "parse_classes",
    "parse_index", "read_json", "resolve_credentials", "write_json_atomic",
]
