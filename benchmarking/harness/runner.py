"""One run of ours or stock torch, in its own process: ``python -m benchmarking.harness.runner run --spec S``.

The harness runs every loader as a subprocess (peers too, in their venvs; see
benchmarking/peers/README.md) and measures memory, CPU and the server from outside, so every row is
measured the same way. This runner speaks the peers' contract: it iterates one epoch and prints one
final JSON line ``{"images", "wall_s", "first_batch_s", "sampling", "t_start", "t_first_batch",
"t_end", "t_batches"}`` on stdout (``t_batches``: ``[time.time(), images so far]`` per batch).

Its spec (written by :mod:`.grid`)::

    {"run": {RunSpec fields}, "data_dir": ..., "endpoint": ... | null, "formats": {name: FormatData fields},
     "format_settings": {FormatSettings fields}, "seed": 0, "loader_timeout_s": 120, "images": 0}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["run_epoch", "main"]


def run_epoch(spec_doc: dict[str, Any]) -> dict[str, Any]:
    import torch

    from .build import build_dataset, build_loader
    from .config import FormatSettings, RunSpec, sampling_of
    from .prepare import FormatData

    torch.set_num_threads(1)  # the main process only collates; idle OpenMP threads spin on a loaded machine
    spec = RunSpec(**spec_doc["run"])
    settings = FormatSettings.from_dict(spec_doc.get("format_settings") or {})
    formats = {name: FormatData(**{**fd, "root": Path(fd["root"])}) for name, fd in (spec_doc.get("formats") or {}).items()}
    images_wanted = int(spec_doc.get("images") or 0)
    seed = int(spec_doc.get("seed", 0))
    t_start, p_start = time.time(), time.perf_counter()
    dataset = build_dataset(spec, Path(spec_doc["data_dir"]), spec_doc.get("endpoint"), None, formats, settings, seed)
    loader = None
    try:
        loader = build_loader(spec, dataset, seed, float(spec_doc.get("loader_timeout_s", 120.0)), images_wanted)
        images = batches = 0
        first = t_first = None
        arrivals: list[tuple[float, int]] = []  # (time.time(), images so far) per batch
        # the fast path hands over uint8 batches; its Normalize runs on the batch, as training would
        normalize = _batch_normalize() if spec.decoder != "pil" and spec.transform == "normalize" else None
        it = iter(loader)
        for batch in it:
            if normalize is not None:
                normalize(batch[0])
            images += len(batch[1])
            batches += 1
            arrivals.append((round(time.time(), 4), images))
            if first is None:
                first, t_first = time.perf_counter() - p_start, time.time()
            if 0 < images_wanted <= images:  # an IterableDataset: stop after the images asked for
                break
        wall = time.perf_counter() - p_start
        t_end = time.time()
        del it
    finally:
        for obj in (loader, dataset):
            close = getattr(obj, "close", None)
            if callable(close):
                close()
    if not images:
        raise RuntimeError("the loader delivered no batch")
    return {"loader": spec.loader, "images": images, "batches": batches, "wall_s": round(wall, 4),
            "first_batch_s": round(first, 4), "sampling": sampling_of(spec, settings.shuffle_buffer),
            "t_start": t_start, "t_first_batch": t_first, "t_end": t_end, "t_batches": arrivals}


def _batch_normalize() -> Any:
    from concurrent_dataloader.transforms import normalize

    return normalize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.harness.runner", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["run"])
    p.add_argument("--spec", required=True, help="the run's JSON spec (written by the harness)")
    args = p.parse_args(argv)
    try:
        result = run_epoch(json.loads(Path(args.spec).read_text()))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]}), flush=True)
        raise
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
