"""Per-image CPU cost of the decode + transform recipes, one core (``torch.set_num_threads(1)``,
as in a DataLoader worker), and the DCT-domain downscaling experiment (PIL ``draft``).

Recipes (each from the JPEG bytes, CPU time by ``time.process_time``):

* ``pil_decode``               PIL decode + convert("RGB")
* ``pil_train``                + RandomResizedCrop(224) + flip + ToTensor (the usual recipe)
* ``pil_train_normalize``      + Normalize
* ``tv_decode``                decoder="torchvision" (decode_jpeg -> uint8 CHW)
* ``tv_train``                 + concurrent_dataloader.transforms.train_transform(224) (uint8 out)
* ``pil_eval`` / ``pil_eval_normalize``   PIL decode + Resize(256) + CenterCrop(224) + ToTensor (+ Normalize)
* ``tv_eval`` / ``tv_eval_exact``         torchvision decode + eval_transform() (fused / exact)
* ``draft_train`` / ``draft_eval``        DCT-domain downscaling: PIL ``draft`` picks the largest
  JPEG scale (1/2, 1/4, 1/8) that keeps the crop >= the output size, then the same fused crop
  and resize on the smaller image. Compared with ``tv_train``/``tv_eval`` on the same images.

Images: the benchmark's synthetic painter (benchmarking.make_synthetic) at 500x375, ~100 KB
(ImageNet-like), and at 1500x1125 (a larger photo, where a 224 crop is often >= 2x the output).
Each recipe runs ``--runs`` images per repeat, ``--repeats`` repeats: median ms/img and the
min-max spread over the repeats.

    python -m benchmarking.bench_decode                # ~3 min; writes docs/bench_decode/bench_decode.{json,png}
    python -m benchmarking.bench_decode --runs 50 --repeats 3 --out /tmp/x.json   # quick look

Exit status 1 when the fast train recipe (tv_train) costs more than 0.65x the PIL recipe with
Normalize (pil_train_normalize) per image at 500x375 (the issue's CPU target, per image), at the
default ``--size 224`` (other sizes explore the DCT experiment and are not checked).

    python -m benchmarking.bench_decode --size 112 --runs 100 --repeats 3 --out docs/bench_decode/bench_decode_112.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from concurrent_dataloader.decoding import decode_image
from concurrent_dataloader.transforms import (IMAGENET_MEAN, IMAGENET_STD, _resize, eval_transform,
                                              random_resized_crop_params, train_transform)

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning)

CPU_TARGET = 0.65


def make_images(width: int, height: int, target_kb: float, n: int) -> list[bytes]:
    from benchmarking.make_synthetic import Painter, SyntheticSpec

    painter = Painter(SyntheticSpec(train=n, val=0, classes=10, width=width, height=height, target_kb=target_kb))
    return [painter.encode(i % 10, i) for i in range(n)]


# ------------------------------------------------------------------ DCT-domain downscaling (PIL draft)
def _draft_decode(raw: bytes, box_fn: Callable[[int, int], tuple[int, int, int, int]], size: int) -> Any:
    """Open (header only), choose the crop, let libjpeg decode at the largest 1/2^k scale that keeps
    the crop >= ``size`` on both sides, then crop + resize the smaller image (uint8 CHW out)."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        w, h = img.size
        top, left, ch, cw = box_fn(h, w)
        scale = 1
        while scale < 8 and ch // (scale * 2) >= size and cw // (scale * 2) >= size:
            scale *= 2
        if scale > 1:
            img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        sw, sh = img.size
        fy, fx = sh / h, sw / w
        top_s, left_s = int(top * fy), int(left * fx)
        ch_s = max(1, min(sh - top_s, round(ch * fy)))
        cw_s = max(1, min(sw - left_s, round(cw * fx)))
        # Only the crop is copied out of PIL (one copy), then viewed as CHW.
        region = np.asarray(img.crop((left_s, top_s, left_s + cw_s, top_s + ch_s)))
    t = torch.from_numpy(np.array(region)).permute(2, 0, 1)
    return _resize(t, size, size), scale


class DraftTrain:
    def __init__(self, size: int = 224) -> None:
        self.size = size
        self.scales: list[int] = []

    def __call__(self, raw: bytes) -> Any:
        out, scale = _draft_decode(raw, lambda h, w: random_resized_crop_params(h, w), self.size)
        self.scales.append(scale)
        return out.flip(-1) if torch.rand(1).item() < 0.5 else out


class DraftEval:
    def __init__(self, size: int = 224, resize: int = 256) -> None:
        self.size = size
        self.et = eval_transform(size, resize)
        self.scales: list[int] = []

    def __call__(self, raw: bytes) -> Any:
        out, scale = _draft_decode(raw, self.et.source_box, self.size)
        self.scales.append(scale)
        return out


def recipes(size: int = 224) -> dict[str, Callable[[bytes], Any]]:
    import torchvision.transforms as T

    pil_train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    pil_train_n = T.Compose([pil_train, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    pil_eval = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor()])
    pil_eval_n = T.Compose([pil_eval, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    tt, et = train_transform(size), eval_transform(size, int(size * 256 / 224))
    ete = eval_transform(size, int(size * 256 / 224), exact=True)
    return {
        "pil_decode": lambda raw: decode_image(raw, "pil"),
        "pil_train": lambda raw: pil_train(decode_image(raw, "pil")),
        "pil_train_normalize": lambda raw: pil_train_n(decode_image(raw, "pil")),
        "tv_decode": lambda raw: decode_image(raw, "torchvision"),
        "tv_train": lambda raw: tt(decode_image(raw, "torchvision")),
        "draft_train": DraftTrain(size),
        "pil_eval": lambda raw: pil_eval(decode_image(raw, "pil")),
        "pil_eval_normalize": lambda raw: pil_eval_n(decode_image(raw, "pil")),
        "tv_eval": lambda raw: et(decode_image(raw, "torchvision")),
        "tv_eval_exact": lambda raw: ete(decode_image(raw, "torchvision")),
        "draft_eval": DraftEval(size, int(size * 256 / 224)),
    }


def measure(fn: Callable[[bytes], Any], images: list[bytes], runs: int, repeats: int) -> dict[str, float]:
    for raw in images[:3]:
        fn(raw)  # warm-up (imports, allocator)
    per_repeat = []
    for _ in range(repeats):
        t0 = time.process_time()
        for k in range(runs):
            fn(images[k % len(images)])
        per_repeat.append((time.process_time() - t0) / runs * 1e3)
    return {"ms_per_img": statistics.median(per_repeat), "min": min(per_repeat), "max": max(per_repeat)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["image_sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6.0 * len(sets), 4.2), squeeze=False)
    for ax, name in zip(axes[0], sets):
        rows = result["image_sets"][name]["recipes"]
        names = list(rows)
        med = [rows[n]["ms_per_img"] for n in names]
        err = [[rows[n]["ms_per_img"] - rows[n]["min"] for n in names], [rows[n]["max"] - rows[n]["ms_per_img"] for n in names]]
        colors = ["C0" if n.startswith("pil") else "C1" if n.startswith("tv") else "C2" for n in names]
        ax.barh(names, med, xerr=err, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("CPU ms per image (one core)")
        ax.set_title(name)
    fig.suptitle("decode + transform cost per image (blue: PIL, orange: torchvision + ours, green: PIL draft)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200, help="images per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=16, help="distinct images per set")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--out", type=Path, default=Path("docs/bench_decode/bench_decode.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from tqdm import tqdm

    sets = {"500x375 (~100 KB)": make_images(500, 375, 100, args.images),
            "1500x1125 (~600 KB)": make_images(1500, 1125, 600, args.images)}
    result: dict[str, Any] = {
        "command": "python -m benchmarking.bench_decode " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch": torch.__version__, "python": platform.python_version(), "runs": args.runs,
        "repeats": args.repeats, "size": args.size, "image_sets": {}}
    import PIL
    import torchvision

    result.update(pillow=PIL.__version__, torchvision=torchvision.__version__)
    jobs = [(s, r) for s in sets for r in recipes(args.size)]
    bar = tqdm(jobs, desc="recipes", unit="recipe")
    for set_name in sets:
        images = sets[set_name]
        rows: dict[str, Any] = {}
        for name, fn in recipes(args.size).items():
            bar.set_postfix_str(f"{set_name[:9]} {name}")
            runs = args.runs if not set_name.startswith("1500") else max(10, args.runs // 4)
            rows[name] = measure(fn, images, runs, args.repeats)
            if hasattr(fn, "scales"):
                rows[name]["dct_scale_share"] = {str(s): fn.scales.count(s) / len(fn.scales) for s in sorted(set(fn.scales))}
            bar.update()
        result["image_sets"][set_name] = {"kb": statistics.mean(len(r) for r in images) / 1e3, "recipes": rows}
    bar.close()

    base = result["image_sets"]["500x375 (~100 KB)"]["recipes"]
    ratio = base["tv_train"]["ms_per_img"] / base["pil_train_normalize"]["ms_per_img"]
    checked = args.size == 224  # the target is for the ImageNet recipe; other sizes are exploration
    ok = ratio <= CPU_TARGET or not checked
    result["check"] = {"tv_train / pil_train_normalize": ratio, "target": CPU_TARGET, "checked": checked, "ok": ok}
    for set_name, data in result["image_sets"].items():
        print(f"\n{set_name}, {data['kb']:.0f} KB avg; ms/img median [min-max] over {args.repeats} repeats")
        for name, row in data["recipes"].items():
            extra = f"  DCT scales {row['dct_scale_share']}" if "dct_scale_share" in row else ""
            print(f"  {name:22s} {row['ms_per_img']:6.2f}  [{row['min']:.2f}-{row['max']:.2f}]{extra}")
    verdict = ("ok" if ratio <= CPU_TARGET else "FAIL") if checked else "not checked: the target is for --size 224"
    print(f"\ntv_train / pil_train_normalize = {ratio:.2f} (target <= {CPU_TARGET}): {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
