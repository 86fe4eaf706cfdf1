"""build_index and upload tools, end to end against moto: upload a tree, index it, load it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision.transforms as T

from concurrent_dataloader import DataLoader, get_dataset
from concurrent_dataloader.tools import build_index, upload

REPO = Path(__file__).resolve().parents[2]


def s3_args(opts: dict) -> list[str]:
    return ["--endpoint-url", opts["endpoint_url"], "--region", opts["region_name"]]


@pytest.fixture
def aws_env(monkeypatch, s3_options, tmp_path):
    """The test server's keys in the environment (how the tools find credentials without a file)."""
    for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_options["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_options["aws_secret_access_key"])


@pytest.mark.parametrize("tool", [build_index, upload])
def test_help(tool, capsys):
    with pytest.raises(SystemExit) as info:
        tool.main(["--help"])
    assert info.value.code == 0
    assert "--endpoint-url" in capsys.readouterr().out


def test_build_index_local_matches_fixture_and_loads(image_folder, tmp_path):
    index, classes = tmp_path / "out" / "index.json", tmp_path / "out" / "classes.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "concurrent_dataloader.tools.build_index", str(image_folder["root"]),
                           "--index", str(index), "--classes", str(classes), "--relative-to",
                           str(image_folder["base"])], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "12 entries" in proc.stderr
    assert json.loads(index.read_text()) == image_folder["index"]
    assert json.loads(classes.read_text()) == {f"n{c:08d}": {"id": c, "name": f"n{c:08d}"} for c in range(3)}
    assert not [p for p in index.parent.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing
    ds = get_dataset("scratch", "train", index_file=index, classes_file=classes, root=image_folder["base"])
    assert [ds.labels[i] for i in (0, 4, 8)] == [0, 1, 2]


def test_build_index_val_reuses_train_ids_and_names(image_folder, tmp_path):
    names = tmp_path / "LOC_synset_mapping.txt"
    names.write_text("n00000000 tench, Tinca tinca\nn00000001 goldfish\nn00000002 great white shark\n")
    train_index, train_classes = tmp_path / "ti.json", tmp_path / "tc.json"
    assert build_index.main([str(image_folder["root"]), "--index", str(train_index), "--classes", str(train_classes),
                             "--names", str(names), "--no-progress"]) == 0
    assert json.loads(train_classes.read_text())["n00000002"] == {"id": 2, "name": "great_white_shark"}
    # Entries keep SOURCE as given (the seed's "scratch/imagenet/train/..." style).
    assert json.loads(train_index.read_text())[0] == f"{image_folder['root']}/n00000000/n00000000_0.JPEG"
    # A val tree with only two of the classes still gets the train ids.
    val_root = tmp_path / "val"
    for wnid in ("n00000002", "n00000001"):
        (val_root / wnid).mkdir(parents=True)
        for k in range(2):
            (val_root / wnid / f"ILSVRC2012_val_{wnid}_{k}.JPEG").write_bytes(
                (image_folder["root"] / wnid / f"{wnid}_{k}.JPEG").read_bytes())
    val_index, val_classes = tmp_path / "vi.json", tmp_path / "vc.json"
    assert build_index.main([str(val_root), "--type", "val", "--train-classes", str(train_classes),
                             "--index", str(val_index), "--classes", str(val_classes), "--no-progress"]) == 0
    assert json.loads(val_classes.read_text()) == {"0": 1, "1": 1, "2": 2, "3": 2}
    ds = get_dataset("scratch", "val", index_file=val_index, classes_file=val_classes)
    assert ds.labels == [1, 1, 2, 2] and ds[3][1] == 2


def test_build_index_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ["--index", str(tmp_path / "i.json"), "--classes", str(tmp_path / "c.json"), "--no-progress"]
    assert build_index.main([str(empty), *out]) == 1
    assert "no images found" in capsys.readouterr().err
    assert build_index.main([str(tmp_path / "nope"), *out]) == 1
    assert "does not exist" in capsys.readouterr().err
    (empty / "loose.jpg").write_bytes(b"x")
    assert build_index.main([str(empty), "--relative-to", str(tmp_path), *out]) == 1
    assert "not inside a class folder" in capsys.readouterr().err
    assert not (tmp_path / "i.json").exists()


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_upload_then_index_from_s3_then_load(fetch_impl, image_folder, s3_bucket, s3_options, s3_proxy,
                                             proxy_options, tmp_path, aws_env, capsys):
    target = f"s3://{s3_bucket}/imagenet/train"
    s3_proxy.reset_counts()
    assert upload.main([str(image_folder["root"]), target, "--workers", "4", "--no-progress",
                        *s3_args(proxy_options)]) == 0
    assert s3_proxy.count("PUT", f"/{s3_bucket}/imagenet/train/") == 12
    assert "uploaded 12 file(s)" in capsys.readouterr().err
    # Again with --skip-existing: nothing is sent.
    assert upload.main([str(image_folder["root"]), target, "--skip-existing", "--no-progress",
                        *s3_args(proxy_options)]) == 0
    assert s3_proxy.count("PUT", f"/{s3_bucket}/imagenet/train/") == 12

    index, classes = tmp_path / "index-s3-train.json", tmp_path / "imagenet-train-classes.json"
    assert build_index.main([target, "--index", str(index), "--classes", str(classes), "--no-progress",
                             *s3_args(s3_options)]) == 0
    keys = json.loads(index.read_text())
    assert keys == sorted(f"imagenet/train/{e[len('train/'):]}" for e in image_folder["index"])
    ds = get_dataset("s3", "train", index_file=index, classes_file=classes, bucket=s3_bucket,
                     transform=T.PILToTensor(), **s3_options)
    with DataLoader(ds, batch_size=6, num_workers=0, fetch_impl=fetch_impl) as loader:
        labels = [y for _, y in loader]
    assert sum(len(y) for y in labels) == 12 and sorted(set(sum((y.tolist() for y in labels), []))) == [0, 1, 2]


def test_upload_missing_bucket_and_create(image_folder, s3_options, tmp_path, aws_env, capsys):
    target = "s3://upload-new-bucket-1/x"
    assert upload.main([str(image_folder["root"]), target, "--no-progress", *s3_args(s3_options)]) == 1
    assert "bucket 'upload-new-bucket-1' does not exist" in capsys.readouterr().err
    assert upload.main([str(image_folder["root"]), target, "--create-bucket", "--no-progress",
                        *s3_args(s3_options)]) == 0


def test_tools_wrong_credentials_no_secret(auth_s3, image_folder, tmp_path, capsys, monkeypatch):
    endpoint, key_id, _secret, bucket = auth_s3
    wrong = "Tool-Wrong-Secret-Never-Printed"
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"access_key": key_id, "secret": wrong}))
    common = ["--s3-credential-file", str(creds), "--endpoint-url", endpoint, "--region", "us-east-1",
              "--max-attempts", "1", "--no-progress"]
    assert upload.main([str(image_folder["root"]), f"s3://{bucket}/x", *common]) == 1
    assert build_index.main([f"s3://{bucket}/img", "--index", str(tmp_path / "i.json"),
                             "--classes", str(tmp_path / "c.json"), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("access denied") == 2 and wrong not in err
