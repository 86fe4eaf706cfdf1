"""Dense-label variants, and the conversion CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from concurrent_dataloader.errors import ConfigError, DataFormatError
from concurrent_dataloader.formats.converted import (DenseIpcConverter, DenseIpcReader, DenseMemmapConverter,
                                                     DenseMemmapReader, open_converted)
from concurrent_dataloader.tools import convert as cli
from tests.converted.helpers import SHAPE, DenseDataset, write_folder


@pytest.mark.parametrize("label_mode", ["L", "P"])
def test_dense_memmap_keeps_label_values(tmp_path, label_mode):
    ds = DenseDataset(5, label_mode=label_mode)
    DenseMemmapConverter(ds, tmp_path / "out", 4, 2, progress=False, shape=SHAPE, im_mode="RGB",
                         label_mode=label_mode).convert()
    meta = json.loads((tmp_path / "out" / "metadata" / "metadata.json").read_text())
    assert meta["label_mode"] == label_mode and meta["label_shape"] == list(SHAPE)
    reader = DenseMemmapReader(tmp_path / "out", target_transform=np.asarray)
    for i in range(5):
        image, mask = reader[i]
        assert np.array_equal(mask, np.asarray(ds.masks[i]))  # palette indices, not luminance
        assert np.array_equal(np.asarray(image), np.asarray(ds.images[i]))


@pytest.mark.parametrize("as_bytes", [False, True])
def test_dense_ipc_masks_are_lossless(tmp_path, as_bytes):
    ds = DenseDataset(5, label_mode="P", as_bytes=as_bytes)
    DenseIpcConverter(ds, tmp_path / "out", 4, 2, progress=False).convert()
    reader = DenseIpcReader(tmp_path / "out")
    for i in range(5):
        image, mask = reader[i]
        assert mask.mode == "P"
        assert np.array_equal(np.asarray(mask), np.asarray(DenseDataset(5, label_mode="P").masks[i]))
        if as_bytes:
            raw = reader.fetch_raw(i)
            assert reader.label_bytes(raw) == ds[i][1]  # passthrough


def test_dense_mask_of_wrong_size_names_the_sample(tmp_path):
    ds = DenseDataset(4)
    ds.masks[2] = ds.masks[2].resize((10, 10))
    with pytest.raises(DataFormatError, match="sample 2 .*label map"):
        DenseMemmapConverter(ds, tmp_path / "out", 4, 2, progress=False, shape=SHAPE, im_mode="RGB").convert()
    DenseMemmapConverter(ds, tmp_path / "ok", 4, 2, progress=False, shape=SHAPE, im_mode="RGB", resize=True).convert()
    assert np.asarray(DenseMemmapReader(tmp_path / "ok")[2][1]).shape == SHAPE


def test_dense_converters_refuse_folders(tmp_path):
    write_folder(tmp_path / "src", 4)
    with pytest.raises(ConfigError, match="label_map"):
        DenseIpcConverter(str(tmp_path / "src"), tmp_path / "out", 4, 2)


def test_cli_converts_and_verifies(tmp_path, capsys):
    files = write_folder(tmp_path / "src", 7)
    rc = cli.main(["hdf5", str(tmp_path / "src"), str(tmp_path / "out"), "--images-per-file", "4",
                   "--batch-size", "2", "--shape", "24", "40", "--mode", "RGB", "--no-progress", "--verify"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["images_written"] == 7 and summary["verified_samples"] == 7
    assert open_converted(tmp_path / "out")[6][1] == files[6][1]
    # resuming a finished conversion is a no-op; another dataset at the path is refused
    assert cli.main(["hdf5", str(tmp_path / "src"), str(tmp_path / "out"), "--images-per-file", "4",
                     "--batch-size", "2", "--shape", "24", "40", "--mode", "RGB", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["files_skipped"] == 2
    assert cli.main(["hdf5", str(tmp_path / "src"), str(tmp_path / "out"), "--images-per-file", "2",
                     "--shape", "24", "40", "--mode", "RGB", "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_cli_argument_errors(tmp_path, capsys):
    write_folder(tmp_path / "src", 4)
    assert cli.main(["memmap", str(tmp_path / "src"), str(tmp_path / "o1")]) == 2
    assert "--shape" in capsys.readouterr().err
    assert cli.main(["parquet", str(tmp_path / "src"), str(tmp_path / "o2"), "--images-per-file", "4",
                     "--batch-size", "3"]) == 2
    assert "must divide" in capsys.readouterr().err
    assert cli.main(["--list-formats"]) == 0
    assert "parquet" in capsys.readouterr().out


def test_cli_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "concurrent_dataloader.tools.convert", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "--images-per-file" in out.stdout and "memmap" in out.stdout
