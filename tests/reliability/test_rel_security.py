"""Security and bad input: secrets stay secret, nothing untrusted is unpickled, hostile archives and
images are refused, index/metadata files are parsed strictly."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import pytest

from concurrent_dataloader import DataLoader
from concurrent_dataloader.datasets import get_dataset
from concurrent_dataloader.errors import DataFormatError, SampleLoadError
from tests.reliability.helpers import CREDS, SECRET, ChecksumDataset, checksum_dataset, collect, jpeg, make_store, put_images

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "concurrent_dataloader"
ACCESS_KEY = CREDS["aws_access_key_id"]


def _everything_said(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc)) + repr(exc) + "".join(getattr(exc, "__notes__", []))


# ----------------------------------------------------------------------------------- secrets
def _credential_file(tmp_path: Path) -> Path:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET}))
    return path


@pytest.mark.parametrize("store", ["s3", "s3lean"])
def test_secret_never_in_reprs_errors_logs_or_pickles(fault_srv, injector, store, caplog, capfd, tmp_path):
    """Credentials reach the server (requests are signed with them) but never a repr, an error,
    a log line (every logger at DEBUG, botocore's included), worker output or a pickle (keys from
    a credential file: only its path is pickled, each process reads the keys itself)."""
    caplog.set_level(logging.DEBUG)
    objs = put_images(fault_srv, "bkt", 16)
    injector.on_key(objs.keys[9], "access_denied")
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs, aws_access_key_id=None, aws_secret_access_key=None,
                          credential_file=_credential_file(tmp_path))
    said = [repr(ds), str(ds), repr(ds.store)]
    if store == "s3lean":
        said.append(repr(ds.store.client))
    with pytest.raises(PermissionError) as info, DataLoader(ds, batch_size=4, num_workers=2 if store == "s3" else 0,
                                                            fetch_impl="asyncio") as loader:
        collect(loader)
    said.append(_everything_said(info.value))
    blob = pickle.dumps(ds)
    clone = pickle.loads(blob)
    assert clone.fetch_raw(0)  # the pickled copy still authenticates (it re-reads the credential file)
    out, err = capfd.readouterr()
    said += [out, err, caplog.text]
    text = "\n".join(said)
    assert SECRET not in text
    assert SECRET.encode() not in blob and SECRET[::-1].encode() not in blob
    ours = "\n".join(said[:-3])  # our reprs and errors (botocore's DEBUG log prints the key id, not the secret)
    assert ACCESS_KEY not in ours and ACCESS_KEY.encode() not in blob  # the key id is masked too
    assert "AKIA****" in _everything_said(info.value)  # ...but enough of it is shown to tell keys apart
    if store == "s3":
        assert len(caplog.records) > 0  # botocore's DEBUG logs (the clone's GET) were really captured


def _zero(image):
    return 0


def test_secret_from_credential_file_never_leaks(tmp_path, fault_srv, caplog, capfd):
    """get_dataset with a credential file, the seed's way: the secret is read from the file and
    used, and appears nowhere else, including a pickle of the dataset and a worker's traceback."""
    caplog.set_level(logging.DEBUG)
    objs = put_images(fault_srv, "data", 8)
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"access_key": ACCESS_KEY, "secret": SECRET, "bucket_name": "data",
                                 "endpoint_url": fault_srv.endpoint_url, "region_name": "us-east-1"}))
    (tmp_path / "index.json").write_text(json.dumps(objs.keys + ["train/n00000001/img_missing.jpg"]))
    (tmp_path / "classes.json").write_text(json.dumps({f"n{c:08d}": {"id": c, "name": str(c)} for c in range(4)}))
    ds = get_dataset("s3", "train", index_file=tmp_path / "index.json", classes_file=tmp_path / "classes.json",
                     s3_credential_file=creds, transform=_zero)
    with pytest.raises(FileNotFoundError) as info, DataLoader(ds, batch_size=3, num_workers=2) as loader:
        list(loader)
    out, err = capfd.readouterr()
    text = "\n".join([repr(ds), _everything_said(info.value), out, err, caplog.text])
    assert "img_missing.jpg" in text
    assert SECRET not in text
    assert SECRET.encode() not in pickle.dumps(ds)


@pytest.mark.parametrize("kind", ["s3", "s3lean"])
def test_pickle_carries_only_the_credential_source(tmp_path, kind):
    """A pickled store (written to disk, opened by an unrelated process) holds the credential
    file's path, never its keys; the other process reads the keys from the file itself."""
    store = make_store(kind, "http://127.0.0.1:9", "bkt", aws_access_key_id=None, aws_secret_access_key=None,
                       credential_file=_credential_file(tmp_path))
    blob = pickle.dumps(store)
    assert SECRET.encode() not in blob and ACCESS_KEY.encode() not in blob
    path = tmp_path / "store.pkl"
    path.write_bytes(blob)
    code = textwrap.dedent(f"""
        import pickle
        with open({str(path)!r}, "rb") as f:
            store = pickle.loads(f.read())
        print(store.credentials.botocore_kwargs()["aws_access_key_id"][:8], repr(store))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(ACCESS_KEY[:8]) and SECRET not in out.stdout + out.stderr


@pytest.mark.slow
def test_benchmark_outputs_hold_no_secret(tmp_path):
    """A (tiny) run of the benchmark harness: its printout and result files never hold a secret."""
    secret = "bench-env-secret-DO-NOT-LEAK-33"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(textwrap.dedent("""
        name: tiny
        dataset: {train: 48, val: 0, classes: 4, width: 64, height: 48, target_kb: 2}
        server: {jitter_ms: 0, ceiling_seconds: 0.3}
        client_cpu: {gets: 20, clients: [lean-sync]}
        measure: {warmup_batches: 1, min_batches: 1, max_batches: 2, max_seconds: 0.5, repeats: 1}
        defaults: {num_workers: 1, num_fetch_workers: 4, batch_pool: 2, batch_size: 8, transform: decode}
        grid:
          - {storage: s3, latency_ms: 0, loader: [ours-threaded]}
        targets: {}
    """))
    env = dict(os.environ, AWS_ACCESS_KEY_ID="AKIABENCHLEAK0001", AWS_SECRET_ACCESS_KEY=secret)
    out = subprocess.run([sys.executable, "-m", "benchmarking.run", "--config", str(cfg), "--out",
                          str(tmp_path / "out"), "--data-root", str(tmp_path / "data"), "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files, "the benchmark wrote no results"
    for text in [out.stdout, out.stderr] + [p.read_bytes().decode("latin-1") for p in files]:
        assert secret not in text and "bench-secret" not in text


# ----------------------------------------------------------------------------------- unpickling
def _python_sources() -> list[Path]:
    roots = [PACKAGE, REPO / "benchmarking", REPO / "examples"]
    return sorted(p for r in roots if r.exists() for p in r.rglob("*.py"))


def test_no_allow_pickle_true_and_no_untrusted_unpickling():
    """Grep the sources: no ``allow_pickle=True``; every ``np.load`` says ``allow_pickle=False``;
    ``torch.load`` only with ``weights_only=True``; ``pickle.load`` only where we read back a file
    we wrote ourselves (listed here with the reason); no ``yaml.load``/``marshal``/``shelve``."""
    trusted_pickle = {
        # the process pool stores a constant in a private mkdtemp dir (mode 0700) and its own
        # workers read it back: data this library wrote, never user input
        "concurrent_dataloader/batchup/work_pool.py",
    }
    sources = _python_sources()
    assert len(sources) > 30
    problems = []
    for path in sources:
        rel = str(path.relative_to(REPO))
        text = path.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"allow_pickle\s*=\s*True", code):
                problems.append(f"{rel}:{lineno}: allow_pickle=True")
            if re.search(r"\b(np|numpy)\.load\(", code) and "allow_pickle=False" not in code:
                problems.append(f"{rel}:{lineno}: np.load without allow_pickle=False")
            if re.search(r"\btorch\.load\(", code) and "weights_only=True" not in code:
                problems.append(f"{rel}:{lineno}: torch.load without weights_only=True")
            if re.search(r"\b(pickle|cPickle|dill|cloudpickle)\.loads?\(", code) and rel not in trusted_pickle:
                problems.append(f"{rel}:{lineno}: unpickling")
            if re.search(r"\byaml\.load\(|\bmarshal\.loads?\(|\bshelve\.open\(", code):
                problems.append(f"{rel}:{lineno}: unsafe deserializer")
    assert not problems, "\n".join(problems)
    pool = (PACKAGE / "batchup/work_pool.py").read_text()
    assert "tempfile.mkdtemp(" in pool  # the trusted pickles live in a private directory


def test_object_array_in_an_index_table_is_never_unpickled(tmp_path):
    """A pickled (object dtype) .npy planted as an archive's index table: refused, index rebuilt."""
    import numpy as np

    from concurrent_dataloader.formats.tar_archive import ImageArchive

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(3):
            data = jpeg(i, (8, 8))
            info = tarfile.TarInfo(f"c{i % 2}/{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "a.tar").write_bytes(buf.getvalue())
    ImageArchive(tmp_path / "a.tar", progress=False)
    record = json.loads((tmp_path / "a.idx.json").read_text())

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = io.BytesIO()
    np.save(evil, np.array([Boom()] * 4, dtype=object).reshape(1, 4), allow_pickle=True)
    import hashlib

    (tmp_path / "a.idx.npy").write_bytes(evil.getvalue())
    record["npy_sha256"] = hashlib.sha256(evil.getvalue()).hexdigest()
    (tmp_path / "a.idx.json").write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match="rebuilding index"):
        ds = ImageArchive(tmp_path / "a.tar", progress=False)
    assert len(ds) == 3 and not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------- hostile tars
def _hostile_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(name, data=b"", **kw):
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        good = jpeg(1, (8, 8))
        add("train/cat/ok.jpg", good)
        add("train/cat/ok.cls", b"1")
        add("../escape.jpg", good)
        add("train/../../up.jpg", good)
        add("/etc/absolute.jpg", good)
        add("C:\\windows.jpg", good)
        add("train/cat/link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("train/cat/hard.jpg", type=tarfile.LNKTYPE, linkname="train/cat/ok.jpg")
        add("train/cat/dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("train/cat/blk.jpg", type=tarfile.BLKTYPE, devmajor=8, devminor=0)
        add("train/cat/fifo.jpg", type=tarfile.FIFOTYPE)
    return buf.getvalue()


REFUSED = ["../escape.jpg", "train/../../up.jpg", "/etc/absolute.jpg", "C:\\windows.jpg", "train/cat/link.jpg",
           "train/cat/hard.jpg", "train/cat/dev.jpg", "train/cat/blk.jpg", "train/cat/fifo.jpg"]


def test_tar_archive_refuses_traversal_links_and_devices(tmp_path):
    from concurrent_dataloader.formats.tar_archive import ImageArchive

    work = tmp_path / "work"
    work.mkdir()
    (work / "a.tar").write_bytes(_hostile_tar())
    with pytest.warns(RuntimeWarning) as warned:
        ds = ImageArchive(work / "a.tar", progress=False, extensions=".jpg")
    assert ds.names == ["train/cat/ok.jpg"]  # only the regular, contained member is readable
    said = " ".join(str(w.message) for w in warned)
    for name in REFUSED:
        assert repr(name) in said, (name, said)
    assert ds.fetch_raw(0) == jpeg(1, (8, 8))
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["work", "a.tar", "a.idx.npy", "a.idx.json"])


def test_tar_shards_refuse_traversal_links_and_devices():
    from concurrent_dataloader.formats.shards import iter_records

    with pytest.warns(RuntimeWarning) as warned:
        records = list(iter_records(_hostile_tar(), "shard-0.tar"))
    assert [r["__key__"] for r in records] == ["train/cat/ok"]
    assert set(records[0]) == {"__key__", "__url__", "jpg", "cls"}
    said = " ".join(str(w.message) for w in warned)
    for name in REFUSED:
        assert repr(name) in said, (name, said)


# ----------------------------------------------------------------------------------- strict parsing
@pytest.mark.parametrize("what,content,message", [
    ("index", '{"a": 1}', "expected a JSON list"),
    ("index", '["ok.jpg", 7]', "entry 1 must be a non-empty string"),
    ("index", '["ok.jpg", "  "]', "entry 1 must be a non-empty string"),
    ("index", '["a.jpg",]', "malformed JSON at line 1"),
    ("classes", '{"n1": {"id": 0}, "n2": {"id": 0}}', "id 0 is used by both"),
    ("classes", '{"n1": {"id": -1}}', "must be an integer >= 0"),
    ("classes", '{"n1": {"id": true}}', "must be an integer >= 0"),
    ("credential", '{"access_key": "AKIA", "secret": 12345}', "'secret' must be a string"),
    ("credential", '{"access_key": "AKIAX"}', "has 'access_key' but no 'secret'"),
    ("credential", '["not", "an", "object"]', "expected a JSON object"),
])
def test_strict_parsing_names_file_and_problem(tmp_path, what, content, message):
    from concurrent_dataloader.datasets.files import load_credential_file, parse_classes, parse_index, read_json

    p = tmp_path / f"{what}.json"
    p.write_text(content)
    parse = {"index": lambda: parse_index(read_json(p, "index"), str(p)),
             "classes": lambda: parse_classes(read_json(p, "classes"), str(p)),
             "credential": lambda: load_credential_file(p)}[what]
    with pytest.raises(DataFormatError) as info:
        parse()
    assert message in str(info.value) and str(p) in str(info.value)
    assert "12345" not in str(info.value)  # a credential value is never echoed


# ----------------------------------------------------------------------------------- bombs
def _png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few hundred bytes claiming a 30000 x 30000 image (900 Mpixels, 10x PIL's default limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def test_pil_decompression_bomb_limit_is_kept():
    from PIL import Image

    import concurrent_dataloader  # noqa: F401  (and every submodule that touches PIL)
    import concurrent_dataloader.datasets.image  # noqa: F401
    import concurrent_dataloader.formats.converted  # noqa: F401
    import concurrent_dataloader.formats.shards  # noqa: F401
    import concurrent_dataloader.formats.tar_archive  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)
    problems = []
    for path in _python_sources():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"MAX_IMAGE_PIXELS\s*=|LOAD_TRUNCATED_IMAGES\s*=\s*True", line.split("#", 1)[0]):
                problems.append(f"{path.relative_to(REPO)}:{lineno}")
    assert not problems, problems


@pytest.mark.parametrize("store", ["s3", "s3lean"])
def test_decompression_bomb_image_is_refused_naming_key(fault_srv, store):
    import tracemalloc

    objs = put_images(fault_srv, "bkt", 8)
    fault_srv.put_object("bkt", objs.keys[4], _png_bomb())
    ds = ChecksumDataset(make_store(store, fault_srv.endpoint_url, "bkt"), objs.keys, objs.labels)
    tracemalloc.start()
    try:
        with pytest.raises(SampleLoadError) as info, DataLoader(ds, batch_size=4, num_workers=0) as loader:
            collect(loader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = _everything_said(info.value)
    assert "DecompressionBomb" in text and f"s3://bkt/{objs.keys[4]}" in text and "index 4" in text
    assert peak < 64 << 20  # refused from the header, never decoded


def test_decompression_bomb_in_a_tar_archive_is_refused(tmp_path):
    from concurrent_dataloader.formats.tar_archive import ImageArchive

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("c/ok.png", jpeg(0, (8, 8))), ("c/bomb.png", _png_bomb())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "a.tar").write_bytes(buf.getvalue())
    ds = ImageArchive(tmp_path / "a.tar", progress=False)
    i = ds.names.index("c/bomb.png")
    with pytest.raises(DataFormatError, match="bomb.png.*DecompressionBomb"):
        ds.decode(i, ds.fetch_raw(i))


def test_decompression_bomb_in_a_shard_record_is_refused():
    from concurrent_dataloader.formats.shards import ImageRecordDecoder

    record = {"__key__": "c/bomb", "__url__": "shard-0.tar", "png": _png_bomb(), "cls": b"1"}
    with pytest.raises(DataFormatError, match="c/bomb.*exceeds limit|exceeds limit.*"):
        ImageRecordDecoder()(record)
