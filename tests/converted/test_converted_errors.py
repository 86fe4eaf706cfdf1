"""Bad input, partial or corrupt conversions, refusing to clobber, and resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from concurrent_dataloader.errors import ConfigError, DataFormatError
from concurrent_dataloader.formats.converted import (IpcReader, MemmapConverter, MemmapReader, OutputExistsError,
                                                     ParquetConverter, ResizeAndConvert, get_format, open_converted)
from tests.converted.helpers import ALL, FIXED, SHAPE, PILDataset, converter_kwargs, make_image, pil_dataset, write_folder


def _convert(fmt, src, out, **kw):
    return get_format(fmt).converter(src, out, 4, 2, progress=False, **{**converter_kwargs(fmt), **kw}).convert()


# ----------------------------------------------------------------------------- arguments

def test_batch_size_must_divide_images_per_file(tmp_path):
    write_folder(tmp_path / "src", 4)
    with pytest.raises(ValueError, match="batch_size=3 must divide images_per_file=4"):
        MemmapConverter(str(tmp_path / "src"), tmp_path / "out", 4, 3, shape=SHAPE, im_mode="RGB")


def test_fixed_size_needs_shape_and_mode(tmp_path):
    write_folder(tmp_path / "src", 4)
    with pytest.raises(ConfigError, match="shape"):
        MemmapConverter(str(tmp_path / "src"), tmp_path / "out", 4, 2)
    with pytest.raises(ConfigError, match="im_mode 'P' is not supported"):
        MemmapConverter(str(tmp_path / "src"), tmp_path / "out", 4, 2, shape=SHAPE, im_mode="P")


def test_quality_needs_explicit_reencode(tmp_path):
    write_folder(tmp_path / "src", 4)
    with pytest.raises(ConfigError, match="quality only applies"):
        ParquetConverter(str(tmp_path / "src"), tmp_path / "out", 4, 2, quality=80)


def test_resize_and_convert_arguments():
    with pytest.raises(ConfigError):
        ResizeAndConvert((10, 20), "RGB", size=(20, 10))
    with pytest.raises(ConfigError):
        ResizeAndConvert(mode="RGB")


def test_empty_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="holds no samples"):
        ParquetConverter(PILDataset([], []), tmp_path / "out", 4, 2)


# ----------------------------------------------------------------------------- bad samples

@pytest.mark.parametrize("fmt", FIXED)
def test_mixed_sizes_without_resize_name_the_sample(tmp_path, fmt):
    ds = pil_dataset(6)
    ds.images[3] = make_image(3, shape=(SHAPE[0] + 1, SHAPE[1]))
    with pytest.raises(DataFormatError, match=r"sample 3 of PILDataset .*height 25, width 40.*ResizeAndConvert"):
        _convert(fmt, ds, tmp_path / "out")
    assert not (tmp_path / "out" / "metadata" / "metadata.json").exists()


@pytest.mark.parametrize("fmt", FIXED)
def test_mixed_modes_without_resize_name_the_sample(tmp_path, fmt):
    ds = pil_dataset(6)
    ds.images[4] = make_image(4, mode="L")
    with pytest.raises(DataFormatError, match=r"sample 4 .* L image"):
        _convert(fmt, ds, tmp_path / "out")


@pytest.mark.parametrize("fmt", FIXED)
def test_resize_true_fixes_mixed_dataset(tmp_path, fmt):
    ds = pil_dataset(6)
    ds.images[3] = make_image(3, shape=(10, 12), mode="L")
    _convert(fmt, ds, tmp_path / "out", resize=True)
    image, _ = get_format(fmt).reader(tmp_path / "out")[3]
    assert image.size == (40, 24) and image.mode == "RGB"


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, fmt, kind):
    files = write_folder(tmp_path / "src", 6, fmt="JPEG", ext=".jpg")
    bad = files[2][0]
    data = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if kind == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=bad.name):
        _convert(fmt, str(tmp_path / "src"), tmp_path / "out")


def test_non_integer_label_names_the_sample(tmp_path):
    ds = PILDataset([make_image(i) for i in range(4)], [0, 1, "two", 3])
    with pytest.raises(DataFormatError, match="sample 2 .*label must be an integer"):
        _convert("parquet", ds, tmp_path / "out")


def test_dataset_shorter_than_its_len(tmp_path):
    class Short(PILDataset):
        def __len__(self):
            return 6

    ds = Short([make_image(i) for i in range(4)], [0] * 4)
    with pytest.raises(Exception, match="out of range|yielded only"):
        _convert("ipc", ds, tmp_path / "out")
    assert not (tmp_path / "out" / "metadata" / "metadata.json").exists()


# ----------------------------------------------------------------------------- partial / corrupt

@pytest.mark.parametrize("fmt", ALL)
def test_reader_refuses_missing_metadata(tmp_path, fmt):
    write_folder(tmp_path / "src", 6)
    _convert(fmt, str(tmp_path / "src"), tmp_path / "out")
    (tmp_path / "out" / "metadata" / "metadata.json").unlink()
    with pytest.raises(DataFormatError, match="metadata.json not found.*did not finish"):
        get_format(fmt).reader(tmp_path / "out")


def test_reader_refuses_inconsistent_metadata(tmp_path):
    write_folder(tmp_path / "src", 6)
    _convert("memmap", str(tmp_path / "src"), tmp_path / "out")
    p = tmp_path / "out" / "metadata" / "metadata.json"
    meta = json.loads(p.read_text())
    p.write_text(json.dumps({**meta, "total_num_arrays": 5}))
    with pytest.raises(DataFormatError, match="inconsistent counts"):
        MemmapReader(tmp_path / "out")
    p.write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        MemmapReader(tmp_path / "out")


def test_reader_of_other_format_names_the_right_reader(tmp_path):
    write_folder(tmp_path / "src", 4)
    _convert("parquet", str(tmp_path / "src"), tmp_path / "out")
    with pytest.raises(DataFormatError, match="open it with ParquetReader"):
        IpcReader(tmp_path / "out")


@pytest.mark.parametrize("fmt", ALL)
def test_short_file_is_a_clear_error(tmp_path, fmt):
    write_folder(tmp_path / "src", 10)
    _convert(fmt, str(tmp_path / "src"), tmp_path / "out")
    spec = get_format(fmt)
    victim = tmp_path / "out" / "images" / f"images_1.{spec.converter.image_ext}"
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    reader = spec.reader(tmp_path / "out")
    reader[0]  # other files are fine
    with pytest.raises(DataFormatError, match="images_1"):
        reader[5]
    with pytest.raises(DataFormatError, match="images_1"):
        spec.reader(tmp_path / "out", check_files=True)


@pytest.mark.parametrize("fmt", ALL)
def test_missing_file_is_a_clear_error(tmp_path, fmt):
    write_folder(tmp_path / "src", 10)
    _convert(fmt, str(tmp_path / "src"), tmp_path / "out")
    spec = get_format(fmt)
    (tmp_path / "out" / "labels" / f"labels_2.{spec.converter.label_ext}").unlink()
    reader = spec.reader(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="labels_2.* incomplete"):
        reader[9]


# ----------------------------------------------------------------------------- output path & resume

def test_output_holding_another_dataset_is_refused(tmp_path):
    write_folder(tmp_path / "a", 6)
    write_folder(tmp_path / "b", 8)
    _convert("memmap", str(tmp_path / "a"), tmp_path / "out")
    with pytest.raises(OutputExistsError, match="different conversion.*overwrite=True"):
        _convert("memmap", str(tmp_path / "b"), tmp_path / "out")
    with pytest.raises(OutputExistsError):
        _convert("memmap", str(tmp_path / "a"), tmp_path / "out", shape=(12, 12))
    assert len(MemmapReader(tmp_path / "out")) == 6  # untouched
    _convert("memmap", str(tmp_path / "b"), tmp_path / "out", overwrite=True)
    assert len(MemmapReader(tmp_path / "out")) == 8


def test_output_holding_a_foreign_dataset_is_refused(tmp_path):
    write_folder(tmp_path / "a", 6)
    (tmp_path / "out" / "images").mkdir(parents=True)
    (tmp_path / "out" / "images" / "images_0.npy").write_bytes(b"\0" * 10)
    with pytest.raises(OutputExistsError, match="did not start"):
        _convert("memmap", str(tmp_path / "a"), tmp_path / "out")
    _convert("memmap", str(tmp_path / "a"), tmp_path / "out", overwrite=True)
    assert len(MemmapReader(tmp_path / "out")) == 6


class Flaky(PILDataset):
    """Fails at ``fail_at`` (like a crash mid-conversion) while the flag is set."""

    fail_at: int | None = None

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at sample {i}")
        return super().__getitem__(i)


@pytest.mark.parametrize("fmt", ALL)
def test_interrupted_conversion_resumes(tmp_path, fmt):
    ds = Flaky([make_image(i) for i in range(10)], [i % 3 for i in range(10)])
    ds.fail_at = 9  # inside the last file: files 0 and 1 complete first
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _convert(fmt, ds, out)
    assert not (out / "metadata" / "metadata.json").exists()
    with pytest.raises(DataFormatError, match="did not finish"):
        get_format(fmt).reader(out)
    done = {p: p.stat().st_ino for p in (out / "images").iterdir()}
    assert len(done) == 2 and not [p for p in out.rglob("*") if ".tmp-" in p.name]
    ds.fail_at = None
    result = _convert(fmt, ds, out)
    assert (result.files_skipped, result.files_written, result.images_written) == (2, 1, 2)
    assert all(p.stat().st_ino == ino for p, ino in done.items())  # kept, not rewritten
    reader = get_format(fmt).reader(out)
    for i in range(10):
        image, label = reader[i]
        assert label == i % 3 and np.array_equal(np.asarray(image), np.asarray(ds.images[i]))
    again = _convert(fmt, ds, out)
    assert (again.files_written, again.files_skipped) == (0, 3)


def test_stale_temporaries_are_cleaned_on_resume(tmp_path):
    write_folder(tmp_path / "src", 6)
    out = tmp_path / "out"
    _convert("parquet", str(tmp_path / "src"), out)
    (out / "metadata" / "metadata.json").unlink()
    (out / "images" / "images_1.parquet").unlink()
    stale = out / "images" / ".images_1.parquet.tmp-99999"
    stale.write_bytes(b"half written")
    result = _convert("parquet", str(tmp_path / "src"), out)
    assert result.files_written == 1 and not stale.exists()
    assert len(open_converted(out)) == 6


def test_worker_exception_in_loader_processes_names_the_file(tmp_path):
    files = write_folder(tmp_path / "src", 8, fmt="JPEG", ext=".jpg")
    files[5][0].write_bytes(b"garbage")
    with pytest.raises(Exception, match=files[5][0].name):
        get_format("tar").converter(str(tmp_path / "src"), tmp_path / "out", 4, 2, num_workers=2,
                                    progress=False).convert()


def test_metadata_written_last_and_atomically(tmp_path):
    write_folder(tmp_path / "src", 6)
    out = tmp_path / "out"
    _convert("ipc", str(tmp_path / "src"), out)
    meta = out / "metadata" / "metadata.json"
    assert all(meta.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in (out / "images").iterdir())
    assert oct(meta.stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
