"""Every format round-trips generated data exactly: from a folder and from a torch Dataset,
RGB and L, a non-square shape, and a partly full last file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from concurrent_dataloader.formats.converted import FORMATS, ResizeAndConvert, get_format, open_converted
from tests.converted.helpers import ALL, FIXED, SHAPE, PILDataset, converter_kwargs, encode, make_image, pil_dataset, pixels, write_folder

N, PER_FILE, BATCH = 10, 4, 2  # files of 4, 4 and 2 samples


def _check_layout(out, fmt, n=N):
    spec = get_format(fmt)
    meta = json.loads((out / "metadata" / "metadata.json").read_text())
    assert meta["num_images_per_array"] == PER_FILE
    assert meta["len"] == n
    assert meta["total_num_arrays"] == 3
    assert meta["len_last_array"] == 2
    assert meta["format"] == fmt
    ext_i, ext_l = spec.converter.image_ext, spec.converter.label_ext
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"images_{k}.{ext_i}" for k in range(3)]
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"labels_{k}.{ext_l}" for k in range(3)]
    assert (out / "metadata" / "class_to_integer_mapping.json").exists()
    return meta


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("fmt", ALL)
def test_folder_roundtrip(tmp_path, fmt, mode):
    files = write_folder(tmp_path / "src", N, mode=mode)
    out = tmp_path / "out"
    spec = get_format(fmt)
    result = spec.converter(str(tmp_path / "src"), out, PER_FILE, BATCH, 0, progress=False,
                            **converter_kwargs(fmt, mode)).convert()
    assert (result.files_written, result.images_written) == (3, N)
    meta = _check_layout(out, fmt)
    reader = spec.reader(out)
    assert len(reader) == N
    assert reader.class_to_idx == {"class_0": 0, "class_1": 1, "class_2": 2}
    for i, (path, label) in enumerate(files):
        image, got_label = reader[i]
        assert got_label == label
        assert image.mode == mode and image.size == (SHAPE[1], SHAPE[0])
        assert np.array_equal(pixels(image), pixels(Image.open(path)))
        if fmt not in FIXED:  # flexible formats keep the original file bytes
            assert reader.image_bytes(reader.fetch_raw(i)) == path.read_bytes()
    if fmt in FIXED:
        assert meta["shape"] == list(SHAPE) and meta["mode"] == mode
        assert reader.shape == SHAPE and reader.mode == mode
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("fmt", ALL)
def test_dataset_roundtrip(tmp_path, fmt, mode):
    ds = pil_dataset(N, mode=mode)
    out = tmp_path / "out"
    spec = get_format(fmt)
    spec.converter(ds, out, PER_FILE, BATCH, 0, progress=False, **converter_kwargs(fmt, mode)).convert()
    _check_layout(out, fmt)
    reader = open_converted(out)
    assert type(reader) is spec.reader
    assert reader.class_to_idx == {"a": 0, "b": 1, "c": 2, "d": 3}
    for i in range(N):
        image, label = reader[i]
        assert label == ds.labels[i]
        assert image.mode == mode
        assert np.array_equal(pixels(image), pixels(ds.images[i]))  # lossless (PNG for decoded inputs)


@pytest.mark.parametrize("fmt", ["parquet", "ipc", "tar"])
def test_dataset_of_encoded_bytes_is_passthrough(tmp_path, fmt):
    blobs = [encode(make_image(i), "JPEG") for i in range(6)]
    ds = PILDataset(blobs, list(range(6)))
    out = tmp_path / "out"
    get_format(fmt).converter(ds, out, 4, 2, progress=False).convert()
    reader = open_converted(out)
    assert [reader.image_bytes(reader.fetch_raw(i)) for i in range(6)] == blobs


@pytest.mark.parametrize("fmt", ["parquet", "ipc", "tar"])
def test_reencode_is_explicit(tmp_path, fmt):
    files = write_folder(tmp_path / "src", 4)
    out = tmp_path / "out"
    get_format(fmt).converter(str(tmp_path / "src"), out, 4, 2, progress=False, reencode="JPEG", quality=60).convert()
    reader = open_converted(out)
    meta = json.loads((out / "metadata" / "metadata.json").read_text())
    assert meta["image_encoding"] == "JPEG"
    for i, (path, _) in enumerate(files):
        data = reader.image_bytes(reader.fetch_raw(i))
        assert data[:2] == b"\xff\xd8" and data != path.read_bytes()
        assert Image.open(path).size == reader[i][0].size


@pytest.mark.parametrize("fmt", FIXED)
def test_fixed_size_resizes_folder_images_height_width(tmp_path, fmt):
    """shape=(height, width) is honoured: a 30x20 (w x h) input becomes 40 wide, 24 high."""
    files = write_folder(tmp_path / "src", 5, shape=(20, 30))
    out = tmp_path / "out"
    get_format(fmt).converter(str(tmp_path / "src"), out, 4, 2, progress=False, shape=SHAPE, im_mode="RGB").convert()
    reader = get_format(fmt).reader(out)
    rc = ResizeAndConvert(size=SHAPE, mode="RGB")
    for i, (path, _) in enumerate(files):
        image, _ = reader[i]
        assert image.size == (40, 24)
        assert np.array_equal(pixels(image), pixels(rc(Image.open(path))))


def test_resize_and_convert_shape_is_height_width():
    img = make_image(1, shape=(10, 10))
    out = ResizeAndConvert((24, 40), "L")(img)
    assert out.size == (40, 24) and out.mode == "L"
    assert ResizeAndConvert(size=(24, 40), mode="L").shape == (24, 40)
    assert ResizeAndConvert(32, "RGB").shape == (32, 32)


def test_registry_lists_every_format():
    assert set(FORMATS) == {"memmap", "hdf5", "parquet", "ipc", "tar", "dense_memmap", "dense_ipc"}
    for spec in FORMATS.values():
        assert spec.converter.format_name == spec.reader.format_name == spec.name
