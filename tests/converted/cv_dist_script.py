"""Run under torchrun: every rank converts the same folder with dist=True (gloo on CPU)."""

from __future__ import annotations

import json
import os
import sys

from concurrent_dataloader.formats.converted import get_format

SHAPE = (24, 40)


def main() -> None:
    src, out_base, *formats = sys.argv[1:]
    results = {}
    for fmt in formats:
        spec = get_format(fmt)
        kwargs = {"shape": SHAPE, "im_mode": "RGB"} if spec.fixed_size else {}
        r = spec.converter(src, os.path.join(out_base, fmt), 4, 2, dist=True, progress=False, **kwargs).convert()
        results[fmt] = {"rank": r.rank, "world": r.num_replicas, "written": r.files_written}
    with open(os.path.join(out_base, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
