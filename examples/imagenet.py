"""Train a torchvision model on an ImageNet-style dataset read from S3 or a local/network filesystem.

The shape of PyTorch's ImageNet example (a torchvision model, SGD, train/validate, top-1/top-5,
checkpoints), with the data loading of ``concurrent_dataloader``:

    python examples/imagenet.py --dataset s3 --s3-credential-file s3_credentials.json \\
        --index-file index-s3-train.json --classes-file imagenet-train-classes.json --loader ours

``--decoder torchvision`` decodes JPEGs with torchvision straight from the bytes and uses
``concurrent_dataloader.transforms`` (uint8 crops, 4x less data through collate and pinning);
the batch is converted and normalised on the training device (``normalize`` after ``.to``).
``--decoder pil`` (default) is the usual PIL recipe with ToTensor + Normalize in the workers.

``--loader ours`` uses our DataLoader; ``torch`` the stock one; ``monkeypatch`` the stock one with
our worker loop patched in (``torch.utils.data._utils.worker._worker_loop = _worker_loop``), as
the original project showed. Every epoch prints img/s and how the time split between waiting
for data and computing, so you can see whether training is input-bound.

Distributed: ``torchrun --nproc_per_node N examples/imagenet.py ...`` runs DistributedDataParallel
(gloo on CPU, nccl on CUDA) with a DistributedSampler; ``--batch-size`` is per process.

Try it on generated data (no download)::

    python -m benchmarking.make_synthetic --out data/synthetic --train 2000 --val 200 --classes 100
    python examples/imagenet.py --dataset scratch --data-root data/synthetic \\
        --index-file data/synthetic/index-scratch-train.json --classes-file data/synthetic/imagenet-train-classes.json \\
        --val-index-file data/synthetic/index-scratch-val.json --val-classes-file data/synthetic/imagenet-val-classes.json
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.utils.data
import torchvision.models as models
import torchvision.transforms as T

# The original project's import paths (kept working by the package).
from concurrent_dataloader.dataloader_mod.dataloader import DataLoader as DataLoaderParallel
from concurrent_dataloader.dataloader_mod.worker import _worker_loop as _worker_loop_parallel
from concurrent_dataloader.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize, train_transform

MODEL_NAMES = sorted(name for name in models.__dict__ if name.islower() and not name.startswith("__")
                     and callable(models.__dict__[name]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="ImageNet-style training with concurrent_dataloader",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data (the original project's flags)")
    data.add_argument("--dataset", choices=["s3", "scratch"], default="s3", help="where the images are")
    data.add_argument("--dataset-limit", type=int, default=None, help="use only the first N images of the index")
    data.add_argument("--use-cache", action="store_true", help="keep fetched images in an on-disk cache")
    data.add_argument("--index-file", default=None, help="training index (default index-<dataset>-train.json)")
    data.add_argument("--classes-file", default="imagenet-train-classes.json", help="training classes file")
    data.add_argument("--val-index-file", default=None,
                      help="validation index (default index-<dataset>-val.json if it exists; else no validation)")
    data.add_argument("--val-classes-file", default="imagenet-val-classes.json", help="validation classes file")
    data.add_argument("--s3-credential-file", default=None, help="S3 credential JSON (default s3_credentials.json "
                      "if it exists; else the environment / ~/.aws)")
    data.add_argument("--data-root", default=None, help="scratch: directory the index entries are relative to "
                      "(default: the current directory)")
    data.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (overrides the credential file)")
    data.add_argument("--bucket", default=None, help="bucket (overrides bucket_name in the credential file)")
    data.add_argument("--s3-client", choices=["botocore", "lean"], default="botocore",
                      help="S3 client: botocore/aiobotocore, or the lean raw-HTTP client (far less CPU per GET)")
    data.add_argument("--decoder", choices=["pil", "torchvision"], default="pil",
                      help="pil: PIL decode + torchvision transforms + Normalize in the workers; torchvision: "
                      "decode_jpeg + uint8 transforms in the workers, normalize on the device (docs/decode.md)")
    load = p.add_argument_group("loading")
    load.add_argument("--loader", choices=["ours", "torch", "monkeypatch"], default="ours")
    load.add_argument("-j", "--workers", type=int, default=4, help="DataLoader worker processes")
    load.add_argument("--fetch-impl", choices=["threaded", "asyncio"], default="threaded")
    load.add_argument("--num-fetch-workers", type=int, default=16, help="concurrent fetches per worker")
    load.add_argument("--batch-pool", type=int, default=2, help="batches each worker keeps in flight")
    load.add_argument("--prefetch-factor", type=int, default=2)
    load.add_argument("--pin-memory", type=int, choices=[0, 1], default=0, help="1 to pin host memory (CUDA)")
    train = p.add_argument_group("training")
    train.add_argument("-a", "--arch", default="resnet18", choices=MODEL_NAMES, metavar="ARCH",
                       help="torchvision model: " + ", ".join(n for n in MODEL_NAMES if "resnet" in n) + ", ...")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--start-epoch", type=int, default=0)
    train.add_argument("-b", "--batch-size", type=int, default=64, help="per process")
    train.add_argument("--lr", "--learning-rate", type=float, default=0.1, dest="lr")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay")
    train.add_argument("--image-size", type=int, default=224, help="training crop size")
    train.add_argument("--steps-per-epoch", type=int, default=None, help="stop each epoch after N batches")
    train.add_argument("--val-steps", type=int, default=None, help="validate on at most N batches")
    train.add_argument("-p", "--print-freq", type=int, default=10)
    train.add_argument("--resume", default="", help="checkpoint to resume from")
    train.add_argument("-e", "--evaluate", action="store_true", help="only validate")
    train.add_argument("--checkpoint-dir", default=".", help="where checkpoint.pth.tar / model_best.pth.tar go")
    train.add_argument("--tensorboard", default=None, metavar="DIR",
                       help="also record the loader's per-epoch telemetry with TensorBoard (needs tensorboard)")
    train.add_argument("--no-checkpoint", action="store_true", help="do not write checkpoints")
    train.add_argument("--seed", type=int, default=None, help="seed Python, NumPy and torch (and the sampler)")
    train.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: cuda if available)")
    return p


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def _default(path: str | None, fallback: str, must_exist: bool) -> str | None:
    if path is not None:
        return path
    if must_exist and not Path(fallback).exists():
        return None
    return fallback


def make_dataset(args: argparse.Namespace, dataset_type: str, index_file: str, classes_file: str,
                 transform: Any) -> Any:
    from concurrent_dataloader.datasets import ImageDataset, get_dataset, resolve_credentials

    kwargs: dict[str, Any] = dict(dataset_type=dataset_type, limit=args.dataset_limit, use_cache=args.use_cache,
                                  index_file=index_file, classes_file=classes_file,
                                  s3_credential_file=args.s3_credential_file, transform=transform,
                                  decoder=args.decoder)
    if args.dataset == "scratch":
        return get_dataset("scratch", root=args.data_root, **kwargs)
    pool = max(64, args.num_fetch_workers)
    ds = get_dataset("s3", endpoint_url=args.endpoint_url, bucket=args.bucket, max_pool_connections=pool, **kwargs)
    if args.s3_client == "lean":
        from concurrent_dataloader.storage.s3_http import LeanS3Store

        creds = resolve_credentials(args.s3_credential_file)
        store = LeanS3Store(args.bucket or creds.bucket_name, ds.store.prefix,
                            endpoint_url=args.endpoint_url or creds.endpoint_url, region_name=creds.region_name,
                            max_pool_connections=pool, **creds.client_options())
        ds.close()
        ds = ImageDataset(store, ds.keys, ds.labels, transform=transform, cache=ds.cache, classes=ds.classes,
                          decoder=args.decoder)
    return ds


def make_loader(args: argparse.Namespace, dataset: Any, sampler: Any, shuffle: bool) -> Any:
    common: dict[str, Any] = dict(batch_size=args.batch_size, shuffle=shuffle if sampler is None else False,
                                  sampler=sampler, num_workers=args.workers, pin_memory=args.pin_memory == 1)
    if args.workers > 0:
        common["prefetch_factor"] = args.prefetch_factor
    if args.loader == "ours":
        return DataLoaderParallel(dataset, num_fetch_workers=args.num_fetch_workers, fetch_impl=args.fetch_impl,
                                  batch_pool=args.batch_pool, **common)
    return torch.utils.data.DataLoader(dataset, **common)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

class Meter:
    """Sums over the epoch; in DDP the sums are all-reduced before the averages are read."""

    def __init__(self) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64)  # n, loss*n, top1 hits, top5 hits, data_s, compute_s

    def add(self, n: int, loss: float, hit1: float, hit5: float, data_s: float, compute_s: float) -> None:
        self.sums += torch.tensor([n, loss * n, hit1, hit5, data_s, compute_s], dtype=torch.float64)

    def reduced(self, device: torch.device) -> dict[str, float]:
        sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            # NOTE: nccl reduces CUDA tensors only; gloo takes CPU tensors
            on = device if dist.get_backend() == "nccl" else torch.device("cpu")
            sums = sums.to(on)
            dist.all_reduce(sums)
            sums = sums.cpu()
        n = max(1.0, sums[0].item())
        return {"n": sums[0].item(), "loss": sums[1].item() / n, "acc1": 100 * sums[2].item() / n,
                "acc5": 100 * sums[3].item() / n, "data_s": sums[4].item(), "compute_s": sums[5].item()}


def topk_hits(output: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    maxk = min(max(ks), output.shape[1])
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:min(k, maxk)].reshape(-1).float().sum().item() for k in ks]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_epoch(loader: Any, model: nn.Module, criterion: nn.Module, optimizer: Any, device: torch.device,
              epoch: int, args: argparse.Namespace, train: bool, rank: int) -> dict[str, float]:
    model.train(train)
    meter = Meter()
    limit = args.steps_per_epoch if train else args.val_steps
    total = len(loader) if limit is None else min(limit, len(loader))
    start = end = time.perf_counter()
    what = "train" if train else "val"
    with torch.set_grad_enabled(train):
        for i, (images, target) in enumerate(loader):
            if i >= total:
                break
            data_s = time.perf_counter() - end  # NOTE: time blocked waiting for the loader
            t = time.perf_counter()
            images = images.to(device, non_blocking=True)
            if images.dtype == torch.uint8:  # --decoder torchvision: uint8 batches, normalised here
                images = normalize(images)
            target = target.to(device, non_blocking=True)
            output = model(images)
            loss = criterion(output, target)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            hit1, hit5 = topk_hits(output.detach(), target, (1, 5))
            _sync(device)
            compute_s = time.perf_counter() - t
            meter.add(images.shape[0], loss.item(), hit1, hit5, data_s, compute_s)
            end = time.perf_counter()
            if rank == 0 and (i % args.print_freq == 0 or i == total - 1):
                print(f"{what} epoch {epoch} [{i + 1}/{total}] loss {loss.item():.4f} "
                      f"acc@1 {100 * hit1 / images.shape[0]:.1f} data {data_s * 1e3:.0f} ms "
                      f"compute {compute_s * 1e3:.0f} ms", flush=True)
    wall = time.perf_counter() - start
    stats = meter.reduced(device)
    stats["wall_s"] = wall
    stats["img_per_s"] = stats["n"] / wall if wall > 0 else 0.0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if rank == 0:
        # data/compute are summed over processes: per-process averages below
        print(f"{what} epoch {epoch}: {stats['img_per_s']:.1f} img/s ({stats['n']:.0f} images in {wall:.1f} s), "
              f"loss {stats['loss']:.4f}, acc@1 {stats['acc1']:.2f}, acc@5 {stats['acc5']:.2f}; "
              f"waiting for data {stats['data_s'] / world:.1f} s, computing {stats['compute_s'] / world:.1f} s "
              f"per process ({_verdict(stats['data_s'], stats['compute_s'])})", flush=True)
    loader_stats = getattr(loader, "stats", None)
    if callable(loader_stats):  # our DataLoader: telemetry across its workers (this process)
        ls = loader_stats()
        stats["loader"] = ls
        if rank == 0:
            p = {q: ls.get(f"fetch_latency_{q}_ms") for q in ("p50", "p95", "p99")}
            lat = "/".join("-" if v is None else f"{v:.0f}" for v in p.values())
            print(f"{what} epoch {epoch} loader: {ls['samples_per_s']:.0f} samples/s, "
                  f"{ls['bytes_per_s'] / 1e6:.1f} MB/s, {ls['requests']} requests, {ls['retries']} retries, "
                  f"{ls['hedges']} hedges, fetch latency p50/p95/p99 {lat} ms, "
                  f"data wait {ls['data_wait_fraction']:.0%}", flush=True)
            if args.tb_writer is not None:
                from concurrent_dataloader.telemetry import write_to_tensorboard

                write_to_tensorboard(args.tb_writer, ls, epoch, prefix=f"loader/{what}/")
    return stats


def _verdict(data_s: float, compute_s: float) -> str:
    if data_s + compute_s == 0:
        return "no steps"
    share = data_s / (data_s + compute_s)
    return f"{share:.0%} of step time waiting for data: " + ("input-bound" if share > 0.3 else "compute-bound")


def save_checkpoint(state: dict[str, Any], is_best: bool, directory: str) -> None:
    """Atomic: a temp file in the same directory, then a rename; model_best is a copy."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".checkpoint.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, d / "checkpoint.pth.tar")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if is_best:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".model_best.", suffix=".tmp")
        os.close(fd)
        shutil.copyfile(d / "checkpoint.pth.tar", tmp)
        os.replace(tmp, d / "model_best.pth.tar")


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        return dist.get_rank(), world, device
    return 0, 1, device


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.tb_writer = None
    if args.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("--tensorboard needs the tensorboard package; telemetry is printed only", stacklevel=1)
        else:
            args.tb_writer = SummaryWriter(args.tensorboard)
    if args.index_file is None:
        args.index_file = f"index-{args.dataset}-train.json"
    args.val_index_file = _default(args.val_index_file, f"index-{args.dataset}-val.json", must_exist=True)
    if args.s3_credential_file is None and args.dataset == "s3" and Path("s3_credentials.json").exists():
        args.s3_credential_file = "s3_credentials.json"
    # The original project forks its workers (clients are re-created per process either way).
    if torch.multiprocessing.get_start_method(allow_none=True) is None:
        torch.multiprocessing.set_start_method("fork")
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        try:
            import numpy as np

            np.random.seed(args.seed)
        except ImportError:
            pass
        torch.backends.cudnn.deterministic = True

    rank, world, device = setup_distributed(args)
    patched = None
    if args.loader == "monkeypatch":
        patched = torch.utils.data._utils.worker._worker_loop
        torch.utils.data._utils.worker._worker_loop = _worker_loop_parallel
    try:
        return _train(args, rank, world, device)
    finally:
        if patched is not None:
            torch.utils.data._utils.worker._worker_loop = patched
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict[str, Any]:
    resize = int(math.ceil(args.image_size * 256 / 224))
    if args.decoder == "torchvision":
        train_tf: Any = train_transform(args.image_size)  # uint8 out; normalize() runs on the device
        val_tf: Any = eval_transform(args.image_size, resize)
    else:
        norm = T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        train_tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        val_tf = T.Compose([T.Resize(resize), T.CenterCrop(args.image_size), T.ToTensor(), norm])
    train_ds = make_dataset(args, "train", args.index_file, args.classes_file, train_tf)
    val_ds = (make_dataset(args, "val", args.val_index_file, args.val_classes_file, val_tf)
              if args.val_index_file else None)
    num_classes = 1 + max(max(train_ds.labels), max(val_ds.labels) if val_ds is not None else 0,
                          max((train_ds.classes or {}).values(), default=0))
    if rank == 0:
        print(f"{len(train_ds)} training images, {len(val_ds) if val_ds else 0} validation images, "
              f"{num_classes} classes; {args.arch}, loader={args.loader}, {world} process(es) on {device}",
              flush=True)

    train_sampler = val_sampler = None
    if world > 1:
        seed = args.seed if args.seed is not None else 0
        train_sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True, seed=seed)
        if val_ds is not None:
            # NOTE: pads the last round so every rank has the same number of batches.
            val_sampler = torch.utils.data.distributed.DistributedSampler(val_ds, shuffle=False)
    train_loader = make_loader(args, train_ds, train_sampler, shuffle=True)
    val_loader = make_loader(args, val_ds, val_sampler, shuffle=False) if val_ds is not None else None

    model = models.__dict__[args.arch](num_classes=num_classes).to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    best_acc1 = 0.0
    if args.resume:
        # weights_only: tensors, numbers and strings only; nothing else gets unpickled
        ckpt = torch.load(args.resume, map_location=device, weights_only=True)
        args.start_epoch = int(ckpt["epoch"])
        best_acc1 = float(ckpt["best_acc1"])
        (model.module if world > 1 else model).load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if rank == 0:
            print(f"resumed from {args.resume} (epoch {args.start_epoch})", flush=True)

    history: list[dict[str, Any]] = []
    try:
        if args.evaluate:
            if val_loader is None:
                raise SystemExit("--evaluate needs a validation index (--val-index-file)")
            stats = run_epoch(val_loader, model, criterion, None, device, args.start_epoch, args, False, rank)
            return {"history": [{"val": stats}], "best_acc1": stats["acc1"]}
        for epoch in range(args.start_epoch, args.epochs):
            if train_sampler is not None:
                train_sampler.set_epoch(epoch)
            train_stats = run_epoch(train_loader, model, criterion, optimizer, device, epoch, args, True, rank)
            scheduler.step()
            entry: dict[str, Any] = {"epoch": epoch, "train": train_stats}
            acc1 = train_stats["acc1"]
            if val_loader is not None:
                entry["val"] = run_epoch(val_loader, model, criterion, None, device, epoch, args, False, rank)
                acc1 = entry["val"]["acc1"]
            is_best = acc1 >= best_acc1
            best_acc1 = max(acc1, best_acc1)
            history.append(entry)
            if rank == 0 and not args.no_checkpoint:
                save_checkpoint({"epoch": epoch + 1, "arch": args.arch,
                                 "state_dict": (model.module if world > 1 else model).state_dict(),
                                 "best_acc1": best_acc1, "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict()}, is_best, args.checkpoint_dir)
    finally:
        for loader in (train_loader, val_loader):
            close = getattr(loader, "close", None)
            if callable(close):
                close()
    return {"history": history, "best_acc1": best_acc1}


if __name__ == "__main__":
    main()
    sys.exit(0)
