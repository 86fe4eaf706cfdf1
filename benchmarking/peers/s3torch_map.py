"""s3torchconnector ``S3MapDataset``: one GetObject per image, read by a stock torch DataLoader.

Best mode (s3torchconnector docs, "S3MapDataset" / README "Getting started"): a map-style dataset
from the object URIs, the default sequential reader (whole-object GET: the objects are ~100 KB,
far below the 8 MiB part size), ``S3ClientConfig(force_path_style=True)`` for a path-style
S3-compatible endpoint, and a DataLoader with ``shuffle=True``: an exact global shuffle.
Endpoint: the ``endpoint=`` argument of ``from_objects``; credentials from the environment.
"""

from __future__ import annotations

from typing import Any

from benchmarking.peers._common import Recipe, Spec, loader_kwargs, main, timed_epoch

PEER = "s3torch_map"


class _Sample:
    """S3Reader -> (image tensor, label, index). Picklable for the DataLoader's workers."""

    def __init__(self, spec: Spec) -> None:
        entries = spec.entries()
        self.where = {key: (n, label) for n, (key, label) in enumerate(entries)}
        self.recipe = Recipe(spec.decoder, spec.image_size)

    def __call__(self, reader: Any) -> tuple[Any, int, int]:
        n, label = self.where[reader.key]
        return self.recipe(reader.read()), label, n


def prepare(spec: Spec, version: str) -> dict[str, Any]:
    return {"skipped": True, "objects": 0, "bytes": 0, "note": "reads the per-image objects as they are"}


def run(spec: Spec, version: str) -> dict[str, Any]:
    import torch
    from s3torchconnector import S3ClientConfig, S3MapDataset
    from torch.utils.data import DataLoader

    def build() -> Any:
        ds = S3MapDataset.from_objects([spec.s3_url(k) for k, _ in spec.entries()], region=spec.region,
                                       endpoint=spec.endpoint, transform=_Sample(spec),
                                       s3client_config=S3ClientConfig(force_path_style=True))
        g = torch.Generator()
        g.manual_seed(spec.seed)
        return DataLoader(ds, batch_size=spec.batch_size, shuffle=True, generator=g, **loader_kwargs(spec))

    out = timed_epoch(build)
    out["sampling"] = "exact global shuffle"
    out["settings"] = {"reader": "sequential (default)", "force_path_style": True, "shuffle": True,
                       **loader_kwargs(spec), "batch_size": spec.batch_size, "decoder": spec.decoder}
    return out


if __name__ == "__main__":
    raise SystemExit(main(PEER, module="s3torchconnector", dist="s3torchconnector"))
