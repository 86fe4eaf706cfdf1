"""Storage formats: tar archive, tar shards, tfrecord (this package) and converted formats (`converted/`)."""
