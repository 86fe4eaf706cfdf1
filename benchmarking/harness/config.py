"""What a benchmark run is: the grid point (:class:`RunSpec`), the run's settings (:class:`BenchConfig`,
:class:`FormatSettings`) and the YAML loader.

NOTE [ Config defaults ]: every default is written once, on its dataclass field. A YAML section key
maps to a field through the field's metadata (``section``, ``key``); :func:`load_config` reads the
sections generically, so the loader repeats no default.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["LOADERS", "OUR_LOADERS", "PEER_LOADERS", "STORAGES", "FORMATS", "CONVERTED", "FIXED_SIZE", "TRANSFORMS",
           "DECODERS", "S3_CLIENTS", "BUCKET", "FORMAT_BUCKET", "CREDS", "RunSpec", "BenchConfig", "FormatSettings",
           "expand_grid", "load_config", "sampling_of"]

OUR_LOADERS = ("ours-threaded", "ours-asyncio")
# Peers run from benchmarking/peers/<name>.py in their own venvs (see benchmarking/peers/README.md).
PEER_LOADERS = ("webdataset", "litdata", "mosaic", "s3torch_map", "s3torch_iterable")
LOADERS = ("torch", *OUR_LOADERS, "torch+getitems", *PEER_LOADERS)
_ALIASES = {"s3torchconnector": "s3torch_map"}  # the loader's name before the peers moved out
STREAMING_PEERS = ("webdataset", "litdata", "mosaic", "s3torch_iterable")  # read shards / chunks
STORAGES = ("scratch", "s3")
FORMATS = ("jpeg", "archive", "archive-mmap", "shards", "memmap", "hdf5", "parquet", "ipc", "tar")
CONVERTED = ("memmap", "hdf5", "parquet", "ipc", "tar")
FIXED_SIZE = ("memmap", "hdf5")  # decoded pixels: no JPEG decode at read time
TRANSFORMS = ("realistic", "normalize", "decode", "none")
DECODERS = ("pil", "torchvision")
S3_CLIENTS = ("lean", "botocore")
BUCKET = "synthetic"       # the JPEGs (a directory bucket over the dataset folder); peers' data under peers/
FORMAT_BUCKET = "formats"  # in memory on the server: ranged GETs of big objects slice, not re-read, them
CREDS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret", "region_name": "us-east-1"}
_USES_FETCH = ("ours-threaded", "ours-asyncio", "torch+getitems")


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    storage: str = "s3"
    latency_ms: float = 0.0
    loader: str = "ours-asyncio"
    s3_client: str = "lean"
    num_workers: int = 2
    num_fetch_workers: int = 32
    batch_pool: int = 4
    batch_size: int = 32
    prefetch_factor: int = 2
    transform: str = "realistic"
    format: str = "jpeg"
    prefetch_shards: int = 4   # shards only: shards downloading at once per worker
    decoder: str = "pil"       # pil, or torchvision (torchvision.io.decode_jpeg + v2 crop/flip on uint8)
    images: int = 0            # images in the epoch: 0 = the config's measure.images (0 there: all)

    def normalized(self) -> "RunSpec":
        """Settings that do not apply to a loader are blanked, so duplicate runs collapse."""
        spec = self
        if spec.loader in _ALIASES:
            spec = _replace(spec, loader=_ALIASES[spec.loader])
        if spec.loader in PEER_LOADERS:
            # a peer reads its own format with its own client; only workers/batch/decoder/images apply
            return _replace(spec, format="peer", s3_client="-", num_fetch_workers=0, batch_pool=0, prefetch_shards=0,
                            prefetch_factor=0)
        if spec.loader not in _USES_FETCH or spec.format == "shards":
            # NOTE: an IterableDataset goes through our loader unchanged: no fetch settings.
            spec = _replace(spec, num_fetch_workers=0, batch_pool=0)
        elif spec.loader == "torch+getitems":
            spec = _replace(spec, batch_pool=0)
        if spec.format != "shards":
            spec = _replace(spec, prefetch_shards=0)
        if spec.storage == "scratch":
            spec = _replace(spec, s3_client="-", latency_ms=0.0)
        return spec

    def validate(self) -> "RunSpec":
        loader = _ALIASES.get(self.loader, self.loader)
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        if loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.storage == "s3" and self.s3_client not in S3_CLIENTS and loader not in PEER_LOADERS:
            raise ValueError(f"s3_client must be one of {S3_CLIENTS}, got {self.s3_client!r}")
        if loader in PEER_LOADERS:
            if self.storage != "s3":
                raise ValueError(f"peer {loader} reads from s3 (the benchmark server)")
            if self.transform != "realistic":
                raise ValueError(f"peer {loader} runs the realistic recipe only (transform: realistic)")
            return self
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.loader == "torch+getitems" and self.format == "shards":
            raise ValueError("torch+getitems needs a map-style dataset; shards are an IterableDataset")
        if self.format == "archive-mmap" and self.storage != "scratch":
            raise ValueError("archive-mmap maps a local file: storage must be scratch (use archive on s3)")
        if self.format == "shards" and self.prefetch_shards < 1:
            raise ValueError(f"prefetch_shards must be >= 1, got {self.prefetch_shards}")
        if self.decoder != "pil" and (self.format != "jpeg" or self.transform not in ("realistic", "normalize")):
            raise ValueError("decoder torchvision applies to per-image JPEGs (format jpeg) with the realistic "
                             "or normalize transform")
        if self.latency_ms < 0 or self.num_workers < 0 or self.batch_size < 1 or self.images < 0:
            raise ValueError(f"bad run settings: {self}")
        return self

    @property
    def is_peer(self) -> bool:
        return self.loader in PEER_LOADERS

    def label(self) -> str:
        """A short name for plots and logs."""
        extra = []
        if self.format not in ("jpeg", "peer"):
            extra.append(self.format)
        if self.decoder != "pil":
            extra.append(self.decoder)
        if self.transform != "realistic":
            extra.append(self.transform)
        return f"{self.loader}{'[' + ','.join(extra) + ']' if extra else ''} nw={self.num_workers}"


def sampling_of(spec: RunSpec, shuffle_buffer: int) -> str:
    """How our and stock torch's runs sample (peers report their own)."""
    if spec.format == "shards":
        return f"shard shuffle + buffer {shuffle_buffer}"
    return "exact global shuffle"


def _replace(spec: RunSpec, **changes: Any) -> RunSpec:
    return RunSpec(**{**asdict(spec), **changes})


def _opt(default: Any, section: str | None, key: str | None = None, cast: Any = None) -> Any:
    """A config field with its YAML place: ``section.key`` (``section=None``: a top-level key)."""
    meta = {"section": section, "key": key, "cast": cast}
    if callable(default) and not isinstance(default, (int, float, str, tuple)):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FormatSettings:
    """How the storage formats are made from the synthetic JPEGs (config key ``formats``)."""

    fixed_shape: tuple[int, int] = (224, 224)  # (height, width) of memmap/hdf5 pixels
    images_per_file: int = 250                 # converted formats: samples per file
    shards: int = 16                           # tar shards (a multiple of num_workers splits evenly); peers too
    shuffle_buffer: int = 256                  # TarShardDataset's (and the streaming peers') sample buffer
    convert_workers: int = 2                   # DataLoader workers of the converters

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FormatSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"unknown formats settings {sorted(unknown)} (known: {sorted(names)})")
        d = dict(raw)
        if "fixed_shape" in d:
            shape = d["fixed_shape"]
            d["fixed_shape"] = (int(shape), int(shape)) if isinstance(shape, int) else tuple(int(v) for v in shape)
        out = cls(**d)
        if len(out.fixed_shape) != 2 or min(out.fixed_shape) < 1 or out.images_per_file < 1 or out.shards < 1:
            raise ValueError(f"bad formats settings: {out}")
        return out

    def shard_size(self, images: int) -> int:
        """Images per shard when ``images`` are cut into ``shards`` shards (ours and the peers')."""
        return -(-images // self.shards)


def _positive(v: Any) -> int:
    return max(1, int(v))


def _non_negative(v: Any) -> int:
    return max(0, int(v))


@dataclass
class BenchConfig:
    """A benchmark run's settings. The YAML place of each field is in its metadata (NOTE [ Config defaults ])."""

    name: str = _opt("bench", None)
    seed: int = _opt(0, None)
    dataset: dict[str, Any] = _opt(dict, None)  # SyntheticSpec fields + optional "dir"
    jitter_ms: float = _opt(5.0, "server")
    ceiling_seconds: float = _opt(2.0, "server")
    client_cpu_gets: int = _opt(1000, "client_cpu", "gets")
    client_cpu_clients: tuple[str, ...] = _opt(("botocore", "aiobotocore", "lean-sync", "lean-async"), "client_cpu",
                                               "clients", tuple)
    # Rounds over the whole grid, interleaved (round 1 of every point, then round 2...): each point
    # reports the median with min and max; targets compare per-round pairs (see checks.py).
    repeats: int = _opt(3, "measure", cast=_positive)
    images: int = _opt(0, "measure")             # images per run (one epoch); 0 = all; a point's `images` wins
    poll_s: float = _opt(0.05, "measure")        # process-tree CPU polling interval
    # Peak PSS is measured in `pss_rounds` extra runs per point, polled every `pss_poll_s`: reading
    # PSS slows the polled process (NOTE [ Outside measurement ] in measure.py), so the img/s
    # rounds never read it.
    pss_rounds: int = _opt(1, "measure", cast=_non_negative)
    pss_poll_s: float = _opt(0.5, "measure")
    # Extra rounds for the grid points behind a target that is inconclusive (its margin is inside
    # the rounds' spread) or lands within ``confirm_margin`` of its threshold.
    confirm_rounds: int = _opt(0, "measure", cast=_non_negative)
    confirm_margin: float = _opt(0.1, "measure")
    loader_timeout_s: float = _opt(120.0, "measure")   # DataLoader timeout inside a run
    run_timeout_s: float = _opt(600.0, "measure")      # a whole run subprocess (peers' prepare too)
    runs: list[RunSpec] = field(default_factory=list)  # from `defaults` x `grid`
    targets: dict[str, float] = field(default_factory=dict)
    formats: FormatSettings = field(default_factory=FormatSettings)


_TOP_LEVEL = ("name", "seed", "dataset", "server", "client_cpu", "measure", "defaults", "grid", "targets", "formats")


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Read a YAML config (see ``configs/quick.yaml`` for every key)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.update(overrides or {})
    unknown = set(raw) - set(_TOP_LEVEL)
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} (known: {sorted(_TOP_LEVEL)})")
    if not raw.get("grid"):
        raise ValueError(f"{path}: 'grid' must list at least one entry")
    values: dict[str, Any] = {}
    known: dict[str, set[str]] = {}
    for f in fields(BenchConfig):
        section = f.metadata.get("section", "-") if f.metadata else "-"
        if section == "-":
            continue
        key = f.metadata.get("key") or f.name
        known.setdefault(section or "", set()).add(key)
        where = raw if section is None else (raw.get(section) or {})
        if key not in where:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        cast = f.metadata.get("cast") or type(default)
        values[f.name] = cast(where[key])
    for section, keys in known.items():
        if not section:
            continue
        extra = set(raw.get(section) or {}) - keys
        if extra:
            raise ValueError(f"{path}: unknown {section} settings {sorted(extra)} (known: {sorted(keys)})")
    values.setdefault("name", Path(path).stem)
    return BenchConfig(**values, runs=expand_grid(dict(raw.get("defaults") or {}), list(raw["grid"])),
                       targets={k: float(v) for k, v in (raw.get("targets") or {}).items()},
                       formats=FormatSettings.from_dict(dict(raw.get("formats") or {})))


def expand_grid(defaults: dict[str, Any], grid: list[dict[str, Any]]) -> list[RunSpec]:
    """Each grid entry maps RunSpec fields to a value or a list; their products, in order, deduplicated."""
    names = {f.name for f in fields(RunSpec)}
    unknown = set(defaults) - names
    if unknown:
        raise ValueError(f"unknown run settings in defaults: {sorted(unknown)} (known: {sorted(names)})")
    out: list[RunSpec] = []
    seen: set[RunSpec] = set()
    for entry in grid:
        unknown = set(entry) - names
        if unknown:
            raise ValueError(f"unknown run settings in grid entry {entry}: {sorted(unknown)}")
        keys = list(entry)
        values = [v if isinstance(v, list) else [v] for v in entry.values()]
        for combo in itertools.product(*values):
            spec = RunSpec(**{**defaults, **dict(zip(keys, combo))}).validate().normalized()
            if spec not in seen:
                seen.add(spec)
                out.append(spec)
    return out
