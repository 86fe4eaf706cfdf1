"""The one atomic-write helper every writer uses."""

from __future__ import annotations

import os
import stat

import pytest

from concurrent_dataloader._atomic import TEMP_MARKER, atomic_open, atomic_write_bytes


def test_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_error_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name]


def test_normal_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_read_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "f", "rb"):
            pass
