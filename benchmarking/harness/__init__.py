"""The loader benchmark: every loader side by side on the same data, storage and latency.

``python -m benchmarking.run --config configs/quick.yaml`` drives it (see docs/benchmarks.md). One run:

1. writes (or reuses) a synthetic ImageNet-like dataset (:mod:`benchmarking.make_synthetic`) and the
   storage formats the grid asks for (:mod:`.prepare`);
2. starts our fast S3 server (:mod:`benchmarking.s3_server`) in its own process, serving that folder
   as a bucket, measures its GET/s ceiling and each S3 client's CPU per GET, and lets every peer
   convert the images to its own format in the bucket (each peer's ``prepare``, in its venv);
3. runs the grid in interleaved rounds (:mod:`.grid`): each point is one epoch in a subprocess, ours
   and stock torch through :mod:`.runner`, the peers through ``benchmarking/peers/<name>.py``, all
   measured from outside the same way (:mod:`.measure`: peak PSS of the process tree, CPU per
   image, time to first batch, the server's GET/s);
4. evaluates the targets (:mod:`.checks`: medians, per-round spread, PASS / FAIL / inconclusive).

Modules: :mod:`.config` (grid points, settings, YAML), :mod:`.prepare`, :mod:`.build` (datasets and
loaders, inside the run's process), :mod:`.runner`, :mod:`.measure`, :mod:`.grid`, :mod:`.checks`.

Loaders: ``torch`` (stock DataLoader), ``ours-threaded`` / ``ours-asyncio`` (our DataLoader),
``torch+getitems`` (stock DataLoader over ``concurrent_getitems``), and the peers ``webdataset``,
``litdata``, ``mosaic``, ``s3torch_map``, ``s3torch_iterable`` (benchmarking/peers/README.md).
Formats of the same images (ours and torch): ``jpeg`` (one object per image), ``archive`` (one TAR,
a ranged GET per image), ``archive-mmap``, ``shards`` (tar shards, ``TarShardDataset``), ``memmap``
``hdf5`` (decoded pixels), ``parquet`` ``ipc`` ``tar`` (converted, JPEG bytes).
"""

from .build import build_dataset, build_loader, fast_transform, make_transform, realistic_transform
from .checks import close_calls, exit_code, ratios_and_checks, spec_of, verdict
from .config import (BUCKET, CREDS, FORMAT_BUCKET, FORMATS, LOADERS, OUR_LOADERS, PEER_LOADERS, STORAGES,
                     BenchConfig, FormatSettings, RunSpec, expand_grid, load_config)
from .grid import aggregate, run_benchmark
from .measure import cpu_between, measure_decode_ms, run_measured
from .prepare import FormatData, prepare_formats, upload_formats

__all__ = ["LOADERS", "OUR_LOADERS", "PEER_LOADERS", "STORAGES", "FORMATS", "BUCKET", "FORMAT_BUCKET", "CREDS",
           "RunSpec", "BenchConfig", "FormatSettings", "FormatData", "load_config", "expand_grid", "prepare_formats",
           "upload_formats", "build_dataset", "build_loader", "realistic_transform", "fast_transform",
           "make_transform", "run_benchmark", "aggregate", "run_measured", "cpu_between", "measure_decode_ms",
           "ratios_and_checks", "close_calls", "spec_of", "verdict", "exit_code"]
