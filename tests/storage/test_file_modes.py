"""Every file we write is readable like any file the user writes: its mode is 0o666 less the umask
(``mkstemp`` would give 0o600). One test runs every writer and tool under two umasks and checks the
mode of each file it produced."""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest

from concurrent_dataloader._atomic import TEMP_MARKER


def _image_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    from PIL import Image

    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for k in range(per_class):
            buf = io.BytesIO()
            Image.new("RGB", (48, 32), (40 * c, 30 * k, 90)).save(buf, format="JPEG")
            (d / f"n{c:08d}_{k}.JPEG").write_bytes(buf.getvalue())
    return root


_KEEP: list = []


def _run_every_writer(work: Path, images: Path) -> dict[str, Path]:
    """Each writer/tool writes under its own folder of ``work``; returns {what: folder}."""
    from benchmarking.harness.prepare import _write_archive
    from benchmarking.make_synthetic import SyntheticSpec, make_synthetic
    from benchmarking.s3_bench import main as s3_bench_main
    from benchmarking.s3_server import S3Server
    from concurrent_dataloader.datasets.files import write_json_atomic
    from concurrent_dataloader.formats.tar_archive import ImageArchive
    from concurrent_dataloader.formats.tfrecord import TFRecordWriter
    from concurrent_dataloader.storage.cache import DiskCache
    from concurrent_dataloader.storage.local import LocalStore
    from concurrent_dataloader.tools import build_index, convert, make_shards, upload

    out = {}
    out["tfrecord"] = work / "tfrecord"
    with TFRecordWriter(out["tfrecord"] / "train.tfrecord") as w:
        w.write(b"record")
    out["shards+manifest"] = work / "shards"
    assert make_shards.main([str(images), str(out["shards+manifest"]), "--no-progress"]) == 0
    for fmt, extra in (("tar", []), ("parquet", []), ("memmap", ["--shape", "32", "48", "--mode", "RGB"])):
        out[f"converted {fmt}"] = work / f"converted-{fmt}"
        assert convert.main([fmt, str(images), str(out[f"converted {fmt}"]), "--num-workers", "0",
                             "--no-progress", *extra]) == 0
    out["index files"] = work / "index"
    assert build_index.main([str(images), "--index", str(out["index files"] / "index.json"),
                             "--classes", str(out["index files"] / "classes.json"), "--no-progress"]) == 0
    write_json_atomic(out["index files"] / "downloaded-index.json", ["a", "b"])
    out["tar archive index"] = work / "archive"
    _write_archive(images, out["tar archive index"] / "train.tar", progress=False)  # benchmark data prep
    ImageArchive(out["tar archive index"] / "train.tar", out["tar archive index"] / "index", progress=False)
    out["disk cache"] = work / "cache"
    DiskCache(out["disk cache"], namespace="modes").put("some/key", b"cached")
    out["local store"] = work / "local"
    LocalStore(out["local store"]).put("k", b"v")
    out["synthetic data"] = work / "synthetic"
    make_synthetic(out["synthetic data"], SyntheticSpec(train=4, val=2, classes=2, width=32, height=24),
                   progress=False)
    out["upload"] = work / "uploaded"
    out["upload"].mkdir()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "AKIAMODES0000001")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "modes-secret")
    with S3Server(buckets={"up": out["upload"]}) as server:
        assert upload.main([str(images), "s3://up/pre", "--endpoint-url", server.endpoint_url, "--no-progress"]) == 0
    out["benchmark results"] = work / "bench"
    assert s3_bench_main(["--gets", "4", "--objects", "2", "--size-kb", "1", "--clients", "lean-sync",
                          "--protocols", "http", "--ceiling-seconds", "0.2", "--no-progress",
                          "--json", str(out["benchmark results"] / "s3_bench.json")]) == 0
    out["skip report"] = work / "skip"
    out["skip report"].mkdir()
    from concurrent_dataloader.skip import SkipErrors
    saved, tempfile.tempdir = tempfile.tempdir, str(out["skip report"])  # the default report is a temp file
    try:
        _KEEP.append(SkipErrors([0, 1]))  # kept alive: collecting it removes its report
    finally:
        tempfile.tempdir = saved
    return out


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_every_writer_follows_the_umask(tmp_path, umask, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = _image_folder(tmp_path / "images")
    old = os.umask(umask)
    try:
        folders = _run_every_writer(tmp_path / "out", images)
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    checked: dict[str, int] = {}
    for what, folder in folders.items():
        files = [p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
        assert files, f"{what}: wrote nothing under {folder}"
        for p in files:
            assert TEMP_MARKER not in p.name, f"{what}: left a temporary file {p}"
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == want, f"{what}: {p.relative_to(tmp_path)} has mode {mode:o}, want {want:o} (umask {umask:o})"
        checked[what] = len(files)
    assert json.loads((folders["shards+manifest"] / "shard.json").read_text())["shards"]
    assert len(checked) == 13
