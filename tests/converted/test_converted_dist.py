"""Distributed conversion: file split, rank/world resolution, and a real 2-process run under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from concurrent_dataloader.errors import ConfigError
from concurrent_dataloader.formats.converted import get_format, open_converted
from concurrent_dataloader.formats.converted._dist import resolve_dist, split_files
from tests.converted.helpers import SHAPE, converter_kwargs, write_folder

HERE = Path(__file__).parent


def test_split_files_has_no_overlap_and_no_gap():
    for total in range(0, 23):
        for world in range(1, 9):
            parts = [split_files(total, r, world) for r in range(world)]
            flat = [n for p in parts for n in p]
            assert flat == list(range(total)), (total, world)
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    with pytest.raises(ConfigError):
        split_files(4, 2, 2)


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_dist_single_process_needs_no_group(tmp_path, clean_env):
    """The seed divided by zero here."""
    write_folder(tmp_path / "src", 6)
    r = get_format("memmap").converter(str(tmp_path / "src"), tmp_path / "out", 4, 2, dist=True, progress=False,
                                       **converter_kwargs("memmap")).convert()
    assert (r.rank, r.num_replicas, r.files_written) == (0, 1, 2)
    assert len(open_converted(tmp_path / "out")) == 6


def test_dist_resolution_from_env(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    ctx = resolve_dist(True, None, None)
    assert (ctx.rank, ctx.world) == (0, 1)
    clean_env.setenv("SLURM_NTASKS", "3")
    clean_env.setenv("SLURM_PROCID", "2")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        resolve_dist(True, None, None)
    with pytest.raises(ConfigError, match="not in range"):
        resolve_dist(True, 3, 3)
    with pytest.raises(ConfigError, match="dist=False"):
        resolve_dist(False, 1, 2)


def test_dist_rank_without_peers_converts_only_its_files_and_no_metadata(tmp_path, clean_env):
    """Rank 1 of 2, run alone (no process group: agreement steps are local): it writes exactly
    its files, leaves metadata to rank 0, and refuses to work from a different plan."""
    import json

    from concurrent_dataloader.formats.converted._dist import DistContext
    from concurrent_dataloader.formats.converted._io import atomic_write_bytes

    write_folder(tmp_path / "src", 10)
    write_folder(tmp_path / "other", 8)
    out = tmp_path / "out"

    def rank1(src):
        return get_format("ipc").converter(str(src), out, 4, 2, dist=True, rank=1, num_replicas=2, progress=False)

    conv = rank1(tmp_path / "src")
    (out / "metadata").mkdir(parents=True)
    atomic_write_bytes(out / "metadata" / "conversion.json", json.dumps(conv.plan()).encode())  # rank 0's job
    r = conv._convert(DistContext(1, 2))
    assert r.files_written == 2  # files 1 and 2 of 3 (split 0 | 1, 2)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["images_1.arrow", "images_2.arrow"]
    assert not (out / "metadata" / "metadata.json").exists()
    with pytest.raises(ConfigError, match="different conversion"):  # seen before rank 0's barrier
        rank1(tmp_path / "other")._convert(DistContext(1, 2))
    late = rank1(tmp_path / "other")
    late._inspect_output = lambda plan: "fresh"  # inspected before rank 0 wrote its plan
    with pytest.raises(ConfigError, match="plan differs from rank 0"):
        late._convert(DistContext(1, 2))


def _torchrun(src: Path, out: Path, formats: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "cv_dist_script.py"), str(src), str(out), *formats]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_two_processes_match_single_process(tmp_path):
    formats = ["memmap", "parquet"]
    write_folder(tmp_path / "src", 14)  # 4 files: 4, 4, 4, 2
    start = time.perf_counter()
    proc = _torchrun(tmp_path / "src", tmp_path / "dist", formats)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "dist" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for fmt in formats:
        assert [rk[fmt]["world"] for rk in ranks] == [2, 2]
        assert [rk[fmt]["written"] for rk in ranks] == [2, 2]
        get_format(fmt).converter(str(tmp_path / "src"), tmp_path / "single" / fmt, 4, 2, progress=False,
                                  **converter_kwargs(fmt)).convert()
        for sub in ("images", "labels"):
            a = sorted((tmp_path / "dist" / fmt / sub).iterdir())
            b = sorted((tmp_path / "single" / fmt / sub).iterdir())
            assert [p.name for p in a] == [p.name for p in b] and len(a) == 4
            assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b)), (fmt, sub)
        for name in ("metadata.json", "class_to_integer_mapping.json", "conversion.json"):
            assert (tmp_path / "dist" / fmt / "metadata" / name).read_bytes() == \
                (tmp_path / "single" / fmt / "metadata" / name).read_bytes()
        reader = open_converted(tmp_path / "dist" / fmt)
        assert len(reader) == 14 and reader[13][0].size == (SHAPE[1], SHAPE[0])
    print(f"torchrun conversion took {elapsed:.1f}s")
