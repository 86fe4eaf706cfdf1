"""The shard writer tool: ImageFolder tree or index file -> tar shards (+ manifest), atomically."""

from __future__ import annotations

import json
import subprocess
import tarfile
import sys
from pathlib import Path

import pytest

from concurrent_dataloader.formats.shards import TarShardDataset, iter_records
from concurrent_dataloader.tools.make_shards import collect_image_folder, main, parse_size, write_shards


def _read_all(folder: Path, prefix: str):
    manifest = json.loads((folder / f"{prefix}.json").read_text())
    records = list(TarShardDataset(manifest["template"], store=str(folder)))
    return manifest, records


def test_tree_to_shards_round_trip(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    # 12 JPEGs of ~1.5-2 KB: a 5000-byte target makes several shards
    assert main([str(image_folder["root"]), str(out), "--prefix", "train", "--shard-size", "5KB", "--no-progress"]) == 0
    manifest, records = _read_all(out, "train")
    assert len(manifest["shards"]) > 2 and manifest["records"] == 12
    assert manifest["template"].startswith("train-{000000..")
    assert f"{len(manifest['shards'])} shard(s)" in capsys.readouterr().out
    for shard in manifest["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            members = tar.getmembers()
        used = sum(512 + (m.size + 511) // 512 * 512 for m in members)
        assert used <= 5000 or shard["records"] == 1  # headers + padded data stay under the target
        assert len(members) == 2 * shard["records"]
    by_key = {r["__key__"]: r for r in records}
    assert len(by_key) == 12
    for f in image_folder["files"]:
        rel = f.relative_to(image_folder["root"]).as_posix()
        rec = by_key[rel.rsplit(".", 1)[0]]
        assert rec["jpeg"] == f.read_bytes()
        assert int(rec["cls"]) == int(f.parent.name[1:])  # n00000002 -> class 2 (sorted)
    assert manifest["classes"] == sorted(p.name for p in image_folder["root"].iterdir())
    assert not list(out.glob(".*.tmp"))


def test_index_file_source_max_count_gzip_and_determinism(image_folder, tmp_path):
    args = ["--index-file", str(image_folder["index_file"]), "--classes-file", str(image_folder["classes_file"]),
            "--max-count", "5", "--gzip", "--no-progress", "--prefix", "val"]
    main([str(tmp_path / "a"), *args])
    main([str(tmp_path / "b"), *args])
    manifest, records = _read_all(tmp_path / "a", "val")
    assert [s["records"] for s in manifest["shards"]] == [5, 5, 2]
    assert all(s["name"].endswith(".tar.gz") for s in manifest["shards"])
    assert (tmp_path / "a" / "val-000000.tar.gz").read_bytes()[:2] == b"\x1f\x8b"
    for s in manifest["shards"]:
        assert (tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
    assert sorted(int(r["cls"]) for r in records) == [0] * 4 + [1] * 4 + [2] * 4


def test_keys_follow_the_webdataset_rule(tmp_path):
    root = tmp_path / "tree"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.b.JPG").write_bytes(b"\xff\xd8 one")
    (root / "cat" / "c.png").write_bytes(b"\x89PNG two")
    (root / "cat" / "notes.txt").write_bytes(b"skip me")
    samples, classes = collect_image_folder(root)
    write_shards(samples, classes, str(tmp_path / "o"), "s", progress=False)
    records = list(iter_records((tmp_path / "o" / "s-000000.tar").read_bytes()))
    assert {r["__key__"]: sorted(k for k in r if not k.startswith("__")) for r in records} == {
        "cat/a_b": ["cls", "jpg"], "cat/c": ["cls", "png"]}
    (root / "cat" / "a_b.jpg").write_bytes(b"\xff\xd8 clash")
    with pytest.raises(ValueError, match="same record key"):
        write_shards(*collect_image_folder(root), str(tmp_path / "o2"), "s", progress=False)


def test_failure_leaves_no_partial_shard(image_folder, tmp_path):
    samples, classes = collect_image_folder(image_folder["root"])
    samples[7].path.unlink()  # disappears while writing
    out = tmp_path / "o"
    with pytest.raises(FileNotFoundError):
        write_shards(samples, classes, str(out), "t", shard_size=5000, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names and all(n.startswith("t-") and n.endswith(".tar") for n in names)  # finished shards only
    for n in names:
        list(iter_records((out / n).read_bytes(), n))  # each one complete and readable
    assert not (out / "t.json").exists()  # no manifest for an unfinished set


def test_s3_output(image_folder, tmp_path, s3_bucket, s3_client, s3_options, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_options["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_options["aws_secret_access_key"])
    main([str(image_folder["root"]), f"s3://{s3_bucket}/shards", "--endpoint-url", s3_options["endpoint_url"],
          "--region", "us-east-1", "--max-count", "4", "--no-progress"])
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["shards/shard-000000.tar", "shards/shard-000001.tar", "shards/shard-000002.tar", "shards/shard.json"]
    ds = TarShardDataset("shard-{000000..000002}.tar", store=f"s3://{s3_bucket}/shards", storage_options=s3_options)
    assert len(list(ds)) == 12


def test_parse_size_and_cli_help():
    assert parse_size("256MB") == 256_000_000 and parse_size("1GiB") == 1 << 30 and parse_size("4096") == 4096
    assert parse_size("1.5k") == 1500
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")
    proc = subprocess.run([sys.executable, "-m", "concurrent_dataloader.tools.make_shards", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0 and "--shard-size" in proc.stdout and "--index-file" in proc.stdout
    with pytest.raises(SystemExit):
        main(["out-only"])  # neither a source folder nor --index-file


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing"), str(tmp_path / "out")])
    assert info.value.code == 2 and "error: source folder not found" in capsys.readouterr().err
    index = tmp_path / "index.json"
    index.write_text('["a/x.jpg"]')
    with pytest.raises(SystemExit):
        main(["--index-file", str(index), str(tmp_path / "out")])
    assert "lists 'a/x.jpg'" in capsys.readouterr().err
