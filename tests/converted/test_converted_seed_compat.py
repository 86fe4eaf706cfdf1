"""Datasets laid out the way the seed wrote them (no 'format' key, no tar index, IPC files named
.parquet, one Parquet row group per file, NPY headers) read with our readers, locally and on S3."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from concurrent_dataloader.formats.converted import (HDF5Reader, IpcReader, MemmapReader, ParquetConverter,
                                                     ParquetReader, TarReader)
from tests.converted.helpers import SHAPE, encode, make_image, upload_dir

N, PER = 7, 3  # files of 3, 3, 1
LABELS = [i % 2 for i in range(N)]


def _seed_metadata(root: Path, fixed: bool) -> None:
    (root / "metadata").mkdir(parents=True)
    meta = {"num_images_per_array": PER, "len": N, "len_last_array": N % PER, "total_num_arrays": 3}
    if fixed:
        meta.update(mode="RGB", shape=list(SHAPE))
    (root / "metadata" / "metadata.json").write_text(json.dumps(meta))
    (root / "metadata" / "class_to_integer_mapping.json").write_text(json.dumps({"x": 0, "y": 1}))
    (root / "images").mkdir()
    (root / "labels").mkdir()


def _chunks():
    for n in range(3):
        yield n, list(range(n * PER, min(N, (n + 1) * PER)))


def _blobs():
    return [encode(make_image(i), "JPEG") for i in range(N)]


def seed_memmap(root: Path, npy_header: bool) -> list:
    _seed_metadata(root, True)
    arrays = [np.asarray(make_image(i)) for i in range(N)]
    for n, idx in _chunks():
        imgs = np.stack([arrays[i] for i in idx])
        labs = np.asarray([LABELS[i] for i in idx], dtype=np.int64)
        if npy_header:  # a real .npy file, as np.save writes it
            np.save(root / "images" / f"images_{n}.npy", imgs)
            np.save(root / "labels" / f"labels_{n}.npy", labs)
        else:
            imgs.tofile(root / "images" / f"images_{n}.npy")
            labs.tofile(root / "labels" / f"labels_{n}.npy")
    return arrays


def seed_hdf5_chunked(root: Path) -> list:
    """Chunked + compressed: not what we write, so the reader falls back to h5py."""
    import h5py

    _seed_metadata(root, True)
    arrays = [np.asarray(make_image(i)) for i in range(N)]
    for n, idx in _chunks():
        with h5py.File(root / "images" / f"images_{n}.h5", "w") as f:
            f.create_dataset("images", data=np.stack([arrays[i] for i in idx]), chunks=True, compression="gzip")
        with h5py.File(root / "labels" / f"labels_{n}.h5", "w") as f:
            f.create_dataset("labels", data=np.asarray([LABELS[i] for i in idx], dtype=np.int64))
    return arrays


def seed_parquet(root: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _seed_metadata(root, False)
    blobs = _blobs()
    for n, idx in _chunks():  # pq.write_table defaults: one row group, dictionary, snappy
        pq.write_table(pa.table({"images": pa.array([blobs[i] for i in idx], pa.binary())}),
                       root / "images" / f"images_{n}.parquet")
        pq.write_table(pa.table({"labels": pa.array([LABELS[i] for i in idx], pa.int64())}),
                       root / "labels" / f"labels_{n}.parquet")
    return blobs


def seed_ipc(root: Path) -> list:
    import pyarrow as pa

    _seed_metadata(root, False)
    blobs = _blobs()
    for n, idx in _chunks():
        for name, col, typ, values in (("images", "image_data", pa.binary(), [blobs[i] for i in idx]),
                                       ("labels", "label", pa.int64(), [LABELS[i] for i in idx])):
            schema = pa.schema([pa.field(col, typ)])
            with pa.OSFile(str(root / name / f"{name}_{n}.parquet"), "wb") as f, pa.ipc.new_file(f, schema) as w:
                for v in values:
                    w.write(pa.record_batch([pa.array([v], typ)], schema=schema))
    return blobs


def seed_tar(root: Path) -> list:
    _seed_metadata(root, False)
    blobs = _blobs()
    for n, idx in _chunks():
        with tarfile.open(root / "images" / f"images_{n}.tar", "w") as tar:
            for k, i in enumerate(idx):
                info = tarfile.TarInfo(name=f"image_{k}")
                info.size = len(blobs[i])
                tar.addfile(info, io.BytesIO(blobs[i]))
        (root / "labels" / f"labels_{n}.json").write_text(json.dumps([LABELS[i] for i in idx]))
    return blobs


def _check_fixed(reader, arrays):
    assert len(reader) == N and reader.class_to_idx == {"x": 0, "y": 1}
    for i in range(N):
        image, label = reader[i]
        assert label == LABELS[i] and np.array_equal(np.asarray(image), arrays[i])


def _check_flexible(reader, blobs):
    assert len(reader) == N
    for i in range(N):
        assert reader.image_bytes(reader.fetch_raw(i)) == blobs[i]
        assert reader[i][1] == LABELS[i]


@pytest.mark.parametrize("npy_header", [False, True])
def test_seed_memmap(tmp_path, npy_header):
    arrays = seed_memmap(tmp_path, npy_header)
    _check_fixed(MemmapReader(tmp_path), arrays)


def test_npy_with_wrong_shape_is_refused(tmp_path):
    seed_memmap(tmp_path, True)
    np.save(tmp_path / "images" / "images_1.npy", np.zeros((3, 5, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="does not match the metadata"):
        MemmapReader(tmp_path)[4]


def test_seed_hdf5_chunked_falls_back_to_h5py(tmp_path):
    arrays = seed_hdf5_chunked(tmp_path)
    reader = HDF5Reader(tmp_path)
    _check_fixed(reader, arrays)
    assert reader.file_info(0).offset is None  # read through h5py


def test_seed_parquet_single_row_group(tmp_path):
    blobs = seed_parquet(tmp_path)
    _check_flexible(ParquetReader(tmp_path), blobs)


def test_parquet_multi_row_groups_ours(tmp_path):
    from tests.converted.helpers import write_folder

    files = write_folder(tmp_path / "src", 10, fmt="JPEG", ext=".jpg")
    ParquetConverter(str(tmp_path / "src"), tmp_path / "out", 4, 2, row_group_size=3, progress=False).convert()
    reader = ParquetReader(tmp_path / "out")
    assert reader.file_info(0).metadata.num_row_groups == 2  # rows 3 + 1
    _ = [reader[i] for i in (5, 0, 9, 4)]
    assert [reader.image_bytes(reader.fetch_raw(i)) for i in range(10)] == [p.read_bytes() for p, _ in files]


def test_seed_ipc_named_parquet(tmp_path):
    blobs = seed_ipc(tmp_path)
    reader = IpcReader(tmp_path)
    assert reader.image_ext == "parquet"
    _check_flexible(reader, blobs)


def test_seed_tar_without_index(tmp_path):
    blobs = seed_tar(tmp_path)
    _check_flexible(TarReader(tmp_path), blobs)


@pytest.mark.parametrize("make,reader_cls", [(seed_tar, TarReader), (seed_parquet, ParquetReader),
                                             (seed_ipc, IpcReader), (seed_hdf5_chunked, HDF5Reader)])
def test_seed_layouts_from_s3(tmp_path, s3_client, s3_bucket, s3_options, make, reader_cls):
    pytest.importorskip("botocore")
    expected = make(tmp_path / "ds")
    upload_dir(s3_client, s3_bucket, "seed", tmp_path / "ds")
    reader = reader_cls(f"s3://{s3_bucket}/seed", storage_options=s3_options)
    if reader_cls is HDF5Reader:
        _check_fixed(reader, expected)
    else:
        _check_flexible(reader, expected)


def test_npy_of_python_objects_is_never_unpickled(tmp_path):
    seed_memmap(tmp_path, True)
    np.save(tmp_path / "labels" / "labels_0.npy", np.array([{}, [], ()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        MemmapReader(tmp_path)[0]
