"""Storage formats: tar archive, tar shards, tfrecord (this package) and converted formats (`converted/`).

* :class:`ImageArchive` (``tar_archive``): one TAR archive with an index table, random access
  by (offset, size) from a local file, a shared mmap, or one S3 object via ranged GETs.
* :class:`TarShardDataset` / :class:`TarShardSource` (alias ``AisDataset``) (``shards``): tar
  shards in object storage, WebDataset convention, streamed or loaded with ``load_from_tar``.
* ``tfrecord``: TFRecord files of ``tf.train.Example`` without TensorFlow.
"""

from .shards import (AisDataset, ExampleImageParser, ImageRecordDecoder, InMemoryDataset, TarShardDataset, TarShardSource,
                     default_record_parser, default_record_to_example, default_record_to_pair, expand_template,
                     iter_records)
from .tar_archive import ImageArchive, load_labels_file
from .tfrecord import Example, TFRecordDataset, TFRecordWriter, decode_example, encode_example, read_tfrecords

__all__ = [
    "ImageArchive", "load_labels_file",
    "TarShardDataset", "TarShardSource", "AisDataset", "InMemoryDataset", "ImageRecordDecoder",
    "ExampleImageParser",
    "default_record_parser", "default_record_to_example", "default_record_to_pair", "expand_template", "iter_records",
    "Example", "TFRecordDataset", "TFRecordWriter", "decode_example", "encode_example", "read_tfrecords",
]
