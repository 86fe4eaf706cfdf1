"""examples/imagenet.py trains a few steps on a tiny generated dataset: scratch and moto S3, single
process and under torchrun (DDP, gloo)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
from concurrent_dataloader.storage.s3_http import LeanS3Store

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "imagenet.py"
TINY = SyntheticSpec(train=48, val=16, classes=4, width=64, height=48, target_kb=3, seed=3)


def _load_example():
    spec = importlib.util.spec_from_file_location("imagenet_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    make_synthetic(out, TINY, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_bucket(s3_options, tmp_path_factory):
    """The tiny dataset uploaded to a moto bucket, with a credential file pointing at it."""
    bucket = f"tiny-{os.urandom(4).hex()}"
    store = LeanS3Store(bucket, **s3_options)
    store.client.create_bucket(bucket)
    out = tmp_path_factory.mktemp("tiny-s3")
    make_synthetic(out, TINY, store=store, progress=False, credentials={**s3_options, "bucket_name": bucket})
    store.close()
    return out


def _args(d: Path, dataset: str, *extra: str) -> list[str]:
    return ["--dataset", dataset, "--index-file", str(d / f"index-{dataset}-train.json"),
            "--classes-file", str(d / "imagenet-train-classes.json"),
            "--val-index-file", str(d / f"index-{dataset}-val.json"),
            "--val-classes-file", str(d / "imagenet-val-classes.json"),
            "--image-size", "32", "-b", "8", "-j", "1", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1",
            "--lr", "0.01", "--print-freq", "100", "--seed", "0", "--num-fetch-workers", "4",
            *(["--data-root", str(d)] if dataset == "scratch" else ["--s3-credential-file", str(d / "s3_credentials.json")]),
            *extra]


def _check(result: dict, epochs: int = 1) -> None:
    assert len(result["history"]) == epochs
    last = result["history"][-1]
    assert last["train"]["n"] == 16  # 2 steps x 8 images
    assert last["val"]["n"] == 8
    assert last["train"]["img_per_s"] > 0 and last["train"]["compute_s"] > 0 and last["train"]["data_s"] >= 0
    assert 0 <= last["val"]["acc1"] <= last["val"]["acc5"] <= 100


@pytest.mark.parametrize("loader, impl", [("ours", "asyncio"), ("monkeypatch", "threaded"),
                                          pytest.param("ours", "threaded", marks=pytest.mark.slow),
                                          pytest.param("torch", "threaded", marks=pytest.mark.slow)])
def test_trains_on_scratch(example, tiny_dir, tmp_path, loader, impl, capsys):
    before = torch.utils.data._utils.worker._worker_loop
    result = example.main(_args(tiny_dir, "scratch", "--loader", loader, "--fetch-impl", impl,
                                "--checkpoint-dir", str(tmp_path)))
    _check(result)
    assert torch.utils.data._utils.worker._worker_loop is before  # monkeypatch undone
    out = capsys.readouterr().out
    assert "img/s" in out and "waiting for data" in out and "acc@5" in out
    if loader == "ours":  # our loader's telemetry is printed each epoch
        assert "fetch latency p50/p95/p99" in out
        assert result["history"][0]["train"]["loader"]["samples"] > 0
    assert (tmp_path / "checkpoint.pth.tar").is_file() and (tmp_path / "model_best.pth.tar").is_file()


@pytest.mark.parametrize("client, impl", [("botocore", "asyncio"), ("lean", "threaded")])
def test_trains_on_moto_s3(example, tiny_bucket, tmp_path, client, impl):
    result = example.main(_args(tiny_bucket, "s3", "--s3-client", client, "--fetch-impl", impl, "--no-checkpoint"))
    _check(result)


def test_checkpoint_resume_continues_at_the_next_epoch(example, tiny_dir, tmp_path, capsys):
    example.main(_args(tiny_dir, "scratch", "--checkpoint-dir", str(tmp_path), "-j", "0"))
    ckpt = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet18"
    result = example.main(_args(tiny_dir, "scratch", "--checkpoint-dir", str(tmp_path), "--epochs", "2", "-j", "0",
                                "--resume", str(tmp_path / "checkpoint.pth.tar")))
    assert [h["epoch"] for h in result["history"]] == [1]
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)["epoch"] == 2


def test_help_lists_the_seed_flags(example):
    text = example.build_parser().format_help()
    for flag in ("--dataset", "--dataset-limit", "--use-cache", "--index-file", "--classes-file",
                 "--s3-credential-file", "--fetch-impl", "--num-fetch-workers", "--batch-pool", "--prefetch-factor",
                 "--pin-memory", "--workers", "--batch-size", "--epochs", "--loader", "--arch"):
        assert flag in text, flag


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("dataset", ["s3", pytest.param("scratch", marks=pytest.mark.slow)])
def test_torchrun_two_processes_ddp(request, tmp_path, dataset):
    d = request.getfixturevalue("tiny_dir" if dataset == "scratch" else "tiny_bucket")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(EXAMPLE),
           *_args(d, dataset, "-b", "4", "--checkpoint-dir", str(tmp_path))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 process(es) on cpu" in out.stdout
    # 2 steps x 4 images on each of 2 ranks, summed over ranks
    assert "train epoch 0: " in out.stdout and "(16 images in" in out.stdout
    assert (tmp_path / "checkpoint.pth.tar").is_file()
