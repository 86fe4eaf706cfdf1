"""ImageArchive: one TAR archive, an index table, random access locally and from S3 by ranged GETs."""

from __future__ import annotations

import json
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest
import torch
from tests.tar.helpers import class_members, jpeg, pixels, tar_bytes, write_tar

from concurrent_dataloader import DataFormatError, DataLoader
from concurrent_dataloader.formats.tar_archive import ImageArchive, load_labels_file

FETCH_IMPLS = ["threaded", "asyncio"]


def as_array(img):
    return np.asarray(img)


def quiet(**kw):
    kw.setdefault("progress", False)
    return kw


@pytest.fixture
def classes_tar(tmp_path):
    """cat/dog/eel x 3 images, with './' prefixes, directory entries and a stray README."""
    members = class_members()
    members = [("./" + n if i % 2 else n, d) for i, (n, d) in enumerate(members)]
    members.append(("README", b"not an image"))
    path = write_tar(tmp_path / "train.tar", members)
    expected = {n.removeprefix("./"): d for n, d in members if d is not None and n != "README"}
    return path, expected


def test_class_folders_labels_and_samples(classes_tar):
    path, expected = classes_tar
    ds = ImageArchive(path, transform=as_array, **quiet())
    assert ds.classes == ["cat", "dog", "eel"]
    assert len(ds) == 9 and sorted(ds.names) == sorted(expected)
    for i, name in enumerate(ds.names):
        img, target = ds[i]
        assert target == ds.class_to_idx[name.split("/")[0]]
        np.testing.assert_array_equal(img, pixels(expected[name]))
        assert ds.fetch_raw(i) == expected[name]
        assert ds.describe(i) == f"{path}::{name}"
    # the index table on disk: index, offset, size, label; saved without pickle
    table = np.load(path.with_name("train.idx.npy"), allow_pickle=False)
    assert table.shape == (9, 4)
    np.testing.assert_array_equal(table[:, 0], np.arange(9))
    raw = path.read_bytes()
    for row, name in zip(table, ds.names):
        assert raw[int(row[1]):int(row[1] + row[2])] == expected[name]
    meta = json.loads(path.with_name("train.idx.json").read_text())
    st = path.stat()
    assert meta["archive"]["size"] == st.st_size and meta["archive"]["mtime_ns"] == st.st_mtime_ns
    assert meta["archive"]["members"] == 13  # 3 dirs + 9 images + README


def test_nested_root_only_uses_that_folder(tmp_path):
    members = (class_members(prefix="images/train/") + class_members(("ant", "bee"), prefix="images/test/", seed=7)
               + [("docs/readme.txt", b"hello"), ("images/train/loose.jpg", jpeg(99))])
    path = write_tar(tmp_path / "data.tar", members)
    for root in ("images/train/", "images/train", "./images/train/"):
        ds = ImageArchive(path, root=root, **quiet())
        assert ds.classes == ["cat", "dog", "eel"]
        assert len(ds) == 9 and all(n.startswith("images/train/") for n in ds.names)
    test = ImageArchive(path, root="images/test", ipath=tmp_path / "test.idx.npy", **quiet())
    assert test.classes == ["ant", "bee"] and len(test) == 6
    assert test[0][1] == 0 and test[5][1] == 1
    with pytest.raises(ValueError, match="root"):
        ImageArchive(path, root="../images", **quiet())


def test_extensions_filter_is_case_insensitive(tmp_path):
    members = [("a/1.JPG", jpeg(1)), ("a/2.jpeg", jpeg(2)), ("a/3.Png", jpeg(3, fmt="PNG")), ("a/4.txt", b"x"),
               ("b/5.jpg", jpeg(5))]
    path = write_tar(tmp_path / "x.tar", members)
    assert ImageArchive(path, extensions=(".jpg",), **quiet()).names == ["a/1.JPG", "b/5.jpg"]
    ds = ImageArchive(path, extensions=("JPG", ".PNG", ".jpeg"), ipath=tmp_path / "i2.npy", **quiet())
    assert ds.names == ["a/1.JPG", "a/2.jpeg", "a/3.Png", "b/5.jpg"]
    assert ImageArchive(path, extensions=".png", ipath=tmp_path / "i3.npy", **quiet()).names == ["a/3.Png"]
    # without a filter the text file is indexed too, and reading it names the member
    ds = ImageArchive(path, ipath=tmp_path / "i4.npy", **quiet())
    bad = ds.names.index("a/4.txt")
    with pytest.raises(DataFormatError, match=r"x\.tar: member 'a/4\.txt' is not a readable image"):
        ds[bad]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_labels_file_and_target_transform_order(tmp_path, fmt):
    members = class_members(per_class=2)
    path = write_tar(tmp_path / "boxes.tar", members)
    boxes = {"cat/0.jpg": [1, 2, 20, 12], "dog/1.jpg": [4, 4, 40, 24], "eel/0.jpg": [0, 0, 10, 6]}
    if fmt == "json":
        labels = tmp_path / "boxes.json"
        labels.write_text(json.dumps(boxes))
    else:
        labels = tmp_path / "boxes.csv"
        labels.write_text("path,x0,y0,x1,y1\n" + "".join(f"{k},{','.join(map(str, v))}\n" for k, v in boxes.items()))
    assert load_labels_file(labels) == {k: [float(x) for x in v] for k, v in boxes.items()}

    seen = []

    def rescale(img, labels):  # sees the original image: runs before transform
        seen.append(img.size)
        w, h = img.size
        return np.array([labels[0] / w, labels[1] / h, labels[2] / w, labels[3] / h], dtype=np.float32)

    ds = ImageArchive(path, labels_file=labels, transform=lambda im: im.resize((8, 8)), target_transform=rescale,
                      **quiet())
    assert sorted(ds.names) == sorted(boxes)
    for i, name in enumerate(ds.names):
        img, target = ds[i]
        assert img.size == (8, 8)
        np.testing.assert_allclose(target, np.array(boxes[name]) / [40, 24, 40, 24], rtol=1e-6)
    assert seen == [(40, 24)] * 3
    plain = ImageArchive(path, labels_file=labels, ipath=tmp_path / "plain.idx.npy", **quiet())
    assert torch.equal(plain[0][1], torch.tensor(boxes[plain.names[0]], dtype=torch.float32))

    # an entry that is not in the archive is an error, not silent loss
    missing = tmp_path / f"missing.{fmt}"
    if fmt == "json":
        missing.write_text(json.dumps({**boxes, "cat/9.jpg": [1, 1, 1, 1]}))
    else:
        missing.write_text(labels.read_text() + "cat/9.jpg,1,1,1,1\n")
    with pytest.raises(DataFormatError, match=r"cat/9\.jpg"):
        ImageArchive(path, labels_file=missing, ipath=tmp_path / "m.idx.npy", **quiet())


def test_bad_labels_files(tmp_path):
    ragged = tmp_path / "r.json"
    ragged.write_text(json.dumps({"a/1.jpg": [1, 2], "a/2.jpg": [1]}))
    with pytest.raises(DataFormatError, match="same number"):
        load_labels_file(ragged)
    bad = tmp_path / "b.csv"
    bad.write_text("a/1.jpg,1,2\na/2.jpg,x,3\n")
    with pytest.raises(DataFormatError, match=r"b\.csv:2"):
        load_labels_file(bad)


def test_index_is_built_once_and_reused(classes_tar, monkeypatch):
    path, _ = classes_tar
    first = ImageArchive(path, **quiet())
    idx = path.with_name("train.idx.npy")
    mtime = idx.stat().st_mtime_ns

    def no_rebuild(self):
        raise AssertionError("index rebuilt although it is up to date")

    monkeypatch.setattr(ImageArchive, "_build_index", no_rebuild)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ImageArchive(path, **quiet())
    assert again.names == first.names and idx.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob("*.npy.npy"))  # the seed's double suffix is gone


def test_stale_index_is_rebuilt_with_warning(classes_tar):
    path, expected = classes_tar
    assert len(ImageArchive(path, **quiet())) == 9
    # the archive changes: one more image
    write_tar(path, class_members(per_class=4))
    with pytest.warns(RuntimeWarning, match=r"rebuilding index .*archive changed"):
        ds = ImageArchive(path, **quiet())
    assert len(ds) == 12
    # changing an option also rebuilds
    with pytest.warns(RuntimeWarning, match="different options"):
        assert len(ImageArchive(path, extensions=(".JPG",), **quiet())) == 12
    # ... and rebuilding for extensions that match nothing is an error, not an empty dataset
    with pytest.raises(DataFormatError, match="no images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ImageArchive(path, extensions=(".gif",), **quiet())


def test_index_without_build_record_or_tampered_is_rebuilt(classes_tar):
    path, _ = classes_tar
    ImageArchive(path, **quiet())
    idx, meta = path.with_name("train.idx.npy"), path.with_name("train.idx.json")
    # a seed-style index (no build record) cannot be checked
    meta.unlink()
    with pytest.warns(RuntimeWarning, match="no build record"):
        ImageArchive(path, **quiet())
    # an .npy that does not match its record
    table = np.load(idx, allow_pickle=False)
    table[0, 1] += 512
    np.save(idx, table)
    with pytest.warns(RuntimeWarning, match="does not match"):
        ds = ImageArchive(path, **quiet())
    assert ds[0][1] == 0
    # a pickled (object) array is never loaded
    np.save(idx, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        ImageArchive(path, **quiet())


@pytest.mark.parametrize("kind,hint", [("gzip", "gunzip"), ("bz2", "bunzip2"), ("xz", "unxz")])
def test_compressed_archive(tmp_path, kind, hint):
    members = class_members(per_class=2)
    plain = ImageArchive(write_tar(tmp_path / "plain.tar", members), transform=as_array, **quiet())
    path = write_tar(tmp_path / "c.tar.x", members, kind)  # no telling suffix: detected by magic bytes
    with pytest.raises(DataFormatError, match=rf"{kind}-compressed.*data_in_memory=True.*{hint}"):
        ImageArchive(path, **quiet())
    ds = ImageArchive(path, data_in_memory=True, transform=as_array, **quiet())
    assert ds.names == plain.names
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i][0], plain[i][0])
    # index reused; a spawned/unpickled copy decompresses its own copy lazily
    copy = pickle.loads(pickle.dumps(ImageArchive(path, data_in_memory=True, **quiet())))
    assert copy.fetch_raw(3) == plain.fetch_raw(3)


def test_zstd_is_detected(tmp_path):
    path = tmp_path / "z.tar.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    with pytest.raises(DataFormatError, match="zstd-compressed.*zstd -d"):
        ImageArchive(path, **quiet())


@pytest.mark.parametrize("cut", ["inside-first-data", "inside-header", "at-member-boundary", "inside-last-data"])
def test_truncated_archive_names_archive_and_member(tmp_path, cut):
    members = class_members(per_class=2)
    data = tar_bytes(members)
    offsets = [(m.name, m.offset, m.offset_data, m.size) for m in tarfile.open(fileobj=__import__("io").BytesIO(data))]
    files = [o for o in offsets if o[3]]
    name, at = {
        "inside-first-data": (files[0][0], files[0][2] + 10),
        "inside-header": (files[1][0], files[1][1] + 100),
        "at-member-boundary": (files[2][0], files[2][1]),
        "inside-last-data": (files[-1][0], files[-1][2] + files[-1][3] - 1),
    }[cut]
    path = tmp_path / "cut.tar"
    path.write_bytes(data[:at])
    with pytest.raises(DataFormatError, match=r"cut\.tar.*(truncated|needs bytes)") as info:
        ImageArchive(path, **quiet())
    msg = str(info.value)
    assert "member" in msg


def test_corrupt_header_mid_archive_is_an_error(tmp_path):
    data = bytearray(tar_bytes(class_members(per_class=2)))
    second = [m for m in tarfile.open(fileobj=__import__("io").BytesIO(bytes(data))) if m.isfile()][1]
    data[second.offset + 100:second.offset + 108] = b"garbage!"  # breaks the header checksum
    path = tmp_path / "corrupt.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"corrupt\.tar: archive is corrupt at byte"):
        ImageArchive(path, **quiet())


def test_archive_truncated_after_indexing(classes_tar):
    path, _ = classes_tar
    ds = ImageArchive(path, **quiet())
    last = int(np.argmax(ds.index_table[:, 1]))
    os.truncate(path, int(ds.index_table[last, 1]) + 5)
    with pytest.raises(DataFormatError, match=rf"member '{ds.names[last]}'.*past the end"):
        ds.fetch_raw(last)
    # and a fresh instance notices the change and refuses the truncated archive
    with pytest.raises(DataFormatError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ImageArchive(path, **quiet())


def test_path_traversal_links_and_devices_are_skipped(tmp_path):
    good = class_members(("cat",), per_class=2)
    hostile = [
        ("../evil.jpg", jpeg(1)), ("/etc/abs.jpg", jpeg(2)), ("cat/../../up.jpg", jpeg(3)),
        ("cat/sym.jpg", None, tarfile.SYMTYPE, "../../etc/passwd"), ("cat/hard.jpg", None, tarfile.LNKTYPE, "cat/0.jpg"),
        ("cat/dev.jpg", None, tarfile.CHRTYPE), ("cat/fifo.jpg", None, tarfile.FIFOTYPE),
    ]
    work = tmp_path / "work"
    path = write_tar(work / "h.tar", good + hostile)
    before = {p for p in tmp_path.rglob("*")}
    with pytest.warns(RuntimeWarning) as record:
        ds = ImageArchive(path, **quiet())
    text = " ".join(str(w.message) for w in record)
    assert "3 member(s) with an absolute path or '..'" in text and "4 member(s) that are links" in text
    assert ds.names == ["cat/0.jpg", "cat/1.jpg"]
    created = {p for p in tmp_path.rglob("*")} - before
    assert {p.name for p in created} == {"h.idx.npy", "h.idx.json"}  # nothing extracted anywhere


def test_data_in_memory_mmap_and_pickling(classes_tar):
    path, expected = classes_tar
    ds = ImageArchive(path, data_in_memory=True, **quiet())
    assert all(ds.fetch_raw(i) == expected[n] for i, n in enumerate(ds.names))
    ds.worker_open_archive(0)
    copy = pickle.loads(pickle.dumps(ds))  # handles/mappings are not pickled
    assert copy.fetch_raw(4) == expected[ds.names[4]]
    local = ImageArchive(path, **quiet())
    local.fetch_raw(0)
    assert pickle.loads(pickle.dumps(local)).fetch_raw(1) == expected[local.names[1]]
    local.close()
    assert local.fetch_raw(2) == expected[local.names[2]]  # reopens lazily after close


def _collect(loader):
    imgs, targets = [], []
    for img, target in loader:
        imgs.append(img)
        targets.append(target)
    return torch.cat(imgs), torch.cat(targets)


def _reference(ds):
    imgs = torch.stack([torch.from_numpy(pixels(ds.fetch_raw(i)).copy()) for i in range(len(ds))])
    return imgs, torch.tensor([int(ds.labels(i)[0]) for i in range(len(ds))])


def to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy())


@pytest.mark.parametrize("fetch_impl", FETCH_IMPLS)
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("in_memory", [False, True])
def test_our_dataloader_local(classes_tar, fetch_impl, num_workers, in_memory):
    path, _ = classes_tar
    ds = ImageArchive(path, transform=to_tensor, data_in_memory=in_memory, **quiet())
    with DataLoader(ds, batch_size=4, num_workers=num_workers, num_fetch_workers=4, fetch_impl=fetch_impl) as loader:
        imgs, targets = _collect(loader)
    ref_imgs, ref_targets = _reference(ds)
    assert torch.equal(imgs, ref_imgs) and torch.equal(targets, ref_targets)


def test_stock_torch_loader_with_seed_worker_init(classes_tar):
    path, _ = classes_tar
    ds = ImageArchive(path, transform=to_tensor, open_after_fork=True, **quiet())
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, worker_init_fn=ds.worker_open_archive)
    imgs, targets = _collect(loader)
    ref_imgs, ref_targets = _reference(ds)
    assert torch.equal(imgs, ref_imgs) and torch.equal(targets, ref_targets)


def test_spawn_worker_reopens(classes_tar):
    path, _ = classes_tar
    ds = ImageArchive(path, transform=to_tensor, **quiet())
    ds.fetch_raw(0)  # the parent has an open handle; the child must not need it
    with DataLoader(ds, batch_size=9, num_workers=1, multiprocessing_context="spawn") as loader:
        imgs, targets = _collect(loader)
    assert torch.equal(imgs, _reference(ds)[0])


def test_error_in_loader_names_member(tmp_path):
    members = class_members(("cat",), per_class=2) + [("cat/broken.jpg", b"\xff\xd8 not really a jpeg")]
    ds = ImageArchive(write_tar(tmp_path / "b.tar", members), transform=to_tensor, **quiet())
    with DataLoader(ds, batch_size=3, num_workers=0) as loader, \
            pytest.raises(DataFormatError, match=r"b\.tar: member 'cat/broken\.jpg' is not a readable image"):
        next(iter(loader))


# ----------------------------------------------------------------------------- S3
@pytest.fixture
def s3_archive(tmp_path, s3_client, s3_bucket, classes_tar):
    path, expected = classes_tar
    s3_client.put_object(Bucket=s3_bucket, Key="data/train.tar", Body=path.read_bytes())
    return f"s3://{s3_bucket}/data/train.tar", path, expected


def test_s3_ranged_reads_match_local(s3_archive, s3_client, s3_options):
    url, path, expected = s3_archive
    bucket = url.split("/")[2]
    local = ImageArchive(path, transform=as_array, **quiet())
    remote = ImageArchive(url, transform=as_array, storage_options=s3_options, **quiet())
    # the index was built by streaming the object and saved next to it
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"data/train.idx.npy", "data/train.idx.json"} <= keys
    assert remote.names == local.names and np.array_equal(remote.index_table, local.index_table)
    store = remote._source.store
    before = store.stats()["requests"]
    for i in range(len(local)):
        np.testing.assert_array_equal(remote[i][0], local[i][0])
        assert remote[i][1] == local[i][1]
    assert store.stats()["requests"] - before == 2 * len(local)  # one ranged GET per read, nothing more
    assert remote.describe(0) == f"{url}::{remote.names[0]}"
    # a second instance reuses the index stored in S3; a local ipath works too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ImageArchive(url, storage_options=s3_options, **quiet()).names == local.names
    ImageArchive(url, ipath=path.parent / "remote.idx.npy", storage_options=s3_options, **quiet())
    assert (path.parent / "remote.idx.json").exists()
    assert "secret" not in repr(remote).lower()


@pytest.mark.parametrize("fetch_impl", FETCH_IMPLS)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_our_dataloader_s3(s3_archive, s3_options, fetch_impl, num_workers):
    url, path, _ = s3_archive
    ds = ImageArchive(url, transform=to_tensor, storage_options=s3_options, **quiet())
    with DataLoader(ds, batch_size=4, num_workers=num_workers, num_fetch_workers=8, fetch_impl=fetch_impl) as loader:
        imgs, targets = _collect(loader)
    local = ImageArchive(path, transform=to_tensor, **quiet())
    ref_imgs, ref_targets = _reference(local)
    assert torch.equal(imgs, ref_imgs) and torch.equal(targets, ref_targets)


def test_s3_compressed_and_changed_object(tmp_path, s3_client, s3_bucket, s3_options):
    members = class_members(per_class=2)
    s3_client.put_object(Bucket=s3_bucket, Key="a.tar.gz", Body=write_tar(tmp_path / "a.tgz", members, "gzip").read_bytes())
    url = f"s3://{s3_bucket}/a.tar.gz"
    with pytest.raises(DataFormatError, match="gzip-compressed"):
        ImageArchive(url, storage_options=s3_options, **quiet())
    ds = ImageArchive(url, data_in_memory=True, storage_options=s3_options, **quiet())
    assert ds.fetch_raw(5) == members[-1][1]
    # replace the object with a different archive: the stored index is stale and rebuilt
    s3_client.put_object(Bucket=s3_bucket, Key="a.tar.gz",
                         Body=write_tar(tmp_path / "b.tgz", class_members(per_class=3), "gzip").read_bytes())
    with pytest.warns(RuntimeWarning, match="archive changed"):
        assert len(ImageArchive(url, data_in_memory=True, storage_options=s3_options, **quiet())) == 9


def test_s3_truncated_object(s3_client, s3_bucket, s3_options):
    data = tar_bytes(class_members(per_class=2))
    s3_client.put_object(Bucket=s3_bucket, Key="t.tar", Body=data[: len(data) // 2 + 7])
    with pytest.raises(DataFormatError, match=rf"s3://{s3_bucket}/t\.tar.*(truncated|needs bytes)"):
        ImageArchive(f"s3://{s3_bucket}/t.tar", storage_options=s3_options, **quiet())
