"""Index, classes and credential files: both seed formats, download URLs, precedence, and every bad input.

Bad input must fail when the dataset is built, with a message naming the file/key and the problem.
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from tests.datasets.helpers import upload_folder

from concurrent_dataloader import ConfigError, DataFormatError, get_dataset
from concurrent_dataloader.datasets import load_credential_file, parse_classes, resolve_credentials
from concurrent_dataloader.storage import BucketNotFoundError, RetryPolicy, S3AccessDeniedError

FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
           "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


@pytest.fixture
def clean_aws_env(monkeypatch, tmp_path):
    """No AWS keys in the environment and an empty home, so only what the test sets is visible."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def scratch(image_folder, **kwargs):
    opts = dict(index_file=image_folder["index_file"], classes_file=image_folder["classes_file"],
                root=image_folder["base"])
    opts.update(kwargs)
    return get_dataset("scratch", "train", **opts)


# ------------------------------------------------------------------------------ missing / malformed
@pytest.mark.parametrize("which", ["index_file", "classes_file", "s3_credential_file"])
def test_missing_file_names_it(which, image_folder, tmp_path):
    missing = tmp_path / f"no-{which}.json"
    with pytest.raises(FileNotFoundError, match=f"{'credential' if 's3' in which else which[:-5]} file .*no-{which}"):
        scratch(image_folder, **{which: missing})


@pytest.mark.parametrize("which", ["index_file", "classes_file", "s3_credential_file"])
def test_malformed_json_names_file_and_position(which, image_folder, tmp_path):
    bad = write(tmp_path / "bad.json", '["a", "b",\n  oops]')
    with pytest.raises(DataFormatError, match=r"bad\.json: malformed JSON at line 2 column 3"):
        scratch(image_folder, **{which: bad})


@pytest.mark.parametrize("content, message", [
    ({"a": 1}, "expected a JSON list of keys/paths, got an object"),
    ([], "the index is empty"),
    (["train/n00000000/n00000000_0.JPEG", 3], "entry 1 must be a non-empty string, got an integer"),
    (["train/n00000000/n00000000_0.JPEG", ""], "entry 1 must be a non-empty string"),
])
def test_bad_index_shape(content, message, image_folder, tmp_path):
    index = write(tmp_path / "index.json", content)
    with pytest.raises(DataFormatError, match=message) as info:
        scratch(image_folder, index_file=index)
    assert "index.json" in str(info.value)


@pytest.mark.parametrize("content, message", [
    (["n00000000"], "expected a JSON object, got a list"),
    ({}, "no classes"),
    ({"n00000000": {"name": "x"}}, "entry 'n00000000' has no \"id\""),
    ({"n00000000": {"id": "3", "name": "x"}}, "\"id\" must be an integer >= 0, got '3'"),
    ({"n00000000": {"id": 0, "name": "x"}, "n00000001": 5}, "entry 'n00000001' must be an object"),
    ({"n00000000": {"id": 0}, "n00000001": {"id": 0}}, "id 0 is used by both"),
    ({"n00000000": "fish"}, "unrecognised shape"),
    ({"0": 1, "x": 2}, "validation key 'x' must be a position"),
    ({"0": 1, "1": -2}, "position 1: class id must be an integer >= 0"),
])
def test_bad_classes_shape(content, message, image_folder, tmp_path):
    classes = write(tmp_path / "classes.json", content)
    with pytest.raises(DataFormatError, match=message) as info:
        scratch(image_folder, classes_file=classes)
    assert "classes.json" in str(info.value)


def test_class_not_in_classes_file(image_folder, tmp_path):
    classes = json.loads(image_folder["classes_file"].read_text())
    del classes["n00000001"]
    path = write(tmp_path / "fewer-classes.json", classes)
    with pytest.raises(DataFormatError) as info:
        scratch(image_folder, classes_file=path)
    text = str(info.value)
    assert "4 entries with a class not in classes file" in text and "fewer-classes.json" in text
    assert "entry 4 'train/n00000001/n00000001_0.JPEG' (class 'n00000001')" in text


def test_val_classes_must_cover_the_index(image_folder, tmp_path):
    n = len(image_folder["index"])
    short = write(tmp_path / "val-short.json", {str(i): 0 for i in range(n - 1)})
    with pytest.raises(DataFormatError, match=f"no class for 1 position.*first: position {n - 1}"):
        scratch(image_folder, classes_file=short)
    long = write(tmp_path / "val-long.json", {str(i): 0 for i in range(n + 1)})
    with pytest.raises(DataFormatError, match=f"position {n} is beyond the end"):
        scratch(image_folder, classes_file=long)


def test_labels_from_filename_prefix_or_folder(tmp_path):
    classes = parse_classes({"n01440764": {"id": 5, "name": "tench"}, "cats": {"id": 1, "name": "cat"}}, "c.json")
    from concurrent_dataloader.datasets import compute_labels

    assert compute_labels(["scratch/imagenet/train/n01440764/n01440764_10026.JPEG", "x/cats/img_001.png"],
                          classes, "i.json") == [5, 1]


def test_bad_arguments(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="dataset must be one of"):
        get_dataset("gcs", "train", index_file=image_folder["index_file"])
    with pytest.raises(ConfigError, match="dataset_type must be one of"):
        get_dataset("scratch", "test", index_file=image_folder["index_file"])
    with pytest.raises(ConfigError, match="no index file"):
        get_dataset("scratch", "train", classes_file=image_folder["classes_file"])
    with pytest.raises(FileNotFoundError, match="entry 0 .* not found.*pass root="):
        scratch(image_folder, root=tmp_path / "elsewhere")


# ----------------------------------------------------------------------------------- credentials
def test_both_credential_forms(tmp_path, clean_aws_env):
    short = load_credential_file(write(tmp_path / "c1.json", {"access_key": "AKIASHORTFORM0001", "secret": "s1"}))
    assert (short.aws_access_key_id, short.aws_secret_access_key) == ("AKIASHORTFORM0001", "s1")
    full = load_credential_file(write(tmp_path / "c2.json", {
        "aws_access_key_id": "AKIALONGFORM00002", "aws_secret_access_key": "s2", "bucket_name": "my_bucket",
        "train_index_file_download_url": "s3://path/to/my_stuff/index-s3-train.json",
        "val_classes_file_download_url": "s3://path/to/my_stuff/imagenet-val-classes.json"}))
    assert full.bucket_name == "my_bucket" and full.aws_secret_access_key == "s2"
    assert full.download_urls["train_index_file_download_url"].endswith("index-s3-train.json")


@pytest.mark.parametrize("content, message", [
    (["x"], "expected a JSON object, got a list"),
    ({"access_key": "AKIAXXXXXXXX"}, "has 'access_key' but no 'secret'"),
    ({"aws_secret_access_key": "hunter2-secret"}, "has 'aws_secret_access_key' but no 'aws_access_key_id'"),
    ({"access_key": "a", "secret": "hunter2-secret", "aws_access_key_id": "b", "aws_secret_access_key": "c"},
     "either access_key/secret or"),
    ({"access_key": "a", "secret": 12345678}, "'secret' must be a string, got an integer"),
    ({"access_key": "a", "secret": "hunter2-secret", "train_index_file_download_url": "http://x/y"},
     "must be an s3:// URL"),
])
def test_bad_credential_file(content, message, tmp_path):
    path = write(tmp_path / "creds.json", content)
    with pytest.raises(DataFormatError, match=message) as info:
        load_credential_file(path)
    assert "creds.json" in str(info.value)
    assert "hunter2-secret" not in str(info.value) and "12345678" not in str(info.value)


def test_unknown_credential_key_warns_without_value(tmp_path):
    path = write(tmp_path / "creds.json", {"access_key": "a", "secret": "b", "colour": "hunter2-secret"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_credential_file(path)
    assert any("'colour'" in str(w.message) for w in caught)
    assert not any("hunter2-secret" in str(w.message) for w in caught)


def test_credential_precedence(tmp_path, clean_aws_env, monkeypatch):
    (clean_aws_env / ".aws").mkdir()
    (clean_aws_env / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAHOMEDIR000001\naws_secret_access_key = home-secret\n"
        "[other]\naws_access_key_id = AKIAOTHERPROFILE1\naws_secret_access_key = other-secret\n")
    cred_file = write(tmp_path / "creds.json", {"access_key": "AKIAFILE000000001", "secret": "file-secret",
                                                "bucket_name": "from-file"})
    keys_only_bucket = write(tmp_path / "bucket-only.json", {"bucket_name": "just-a-bucket"})

    assert resolve_credentials().source.endswith("credentials [default]")
    assert resolve_credentials().aws_access_key_id == "AKIAHOMEDIR000001"
    monkeypatch.setenv("AWS_PROFILE", "other")
    assert resolve_credentials().aws_secret_access_key == "other-secret"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert resolve_credentials().source == "environment"
    # A credential file without keys still contributes its bucket; the keys come from the environment.
    env_plus_file = resolve_credentials(keys_only_bucket)
    assert (env_plus_file.source, env_plus_file.bucket_name) == ("environment", "just-a-bucket")
    from_file = resolve_credentials(cred_file)
    assert from_file.aws_access_key_id == "AKIAFILE000000001" and from_file.source.startswith("credential file")
    explicit = resolve_credentials(cred_file, aws_access_key_id="AKIAEXPLICIT00001",
                                   aws_secret_access_key="explicit-secret")
    assert explicit.source == "explicit arguments" and explicit.bucket_name == "from-file"
    for creds in (from_file, explicit, env_plus_file):
        assert creds.aws_secret_access_key not in repr(creds) and creds.aws_secret_access_key not in str(creds)


def test_precedence_against_an_authenticating_server(auth_s3, tmp_path, clean_aws_env, monkeypatch):
    """The winning source is the one actually used: lower sources hold wrong keys."""
    endpoint, key_id, secret, bucket = auth_s3
    index = write(tmp_path / "index.json", ["img/n00000000_0.JPEG"])
    classes = write(tmp_path / "classes.json", {"n00000000": {"id": 0, "name": "zero"}})
    opts = dict(index_file=index, classes_file=classes, endpoint_url=endpoint, region_name="us-east-1",
                bucket=bucket, retry=FAST_RETRY)
    (clean_aws_env / ".aws").mkdir()
    (clean_aws_env / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")
    assert get_dataset("s3", "train", **opts)[0][1] == 0  # ~/.aws
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-env-secret-value")
    with pytest.raises(S3AccessDeniedError):  # the environment now wins over ~/.aws
        get_dataset("s3", "train", **opts)
    good_file = write(tmp_path / "good.json", {"aws_access_key_id": key_id, "aws_secret_access_key": secret})
    assert len(get_dataset("s3", "train", s3_credential_file=good_file, **opts)) == 1  # the file wins over env
    bad_file = write(tmp_path / "bad.json", {"access_key": key_id, "secret": "wrong-file-secret-value"})
    with pytest.raises(S3AccessDeniedError):
        get_dataset("s3", "train", s3_credential_file=bad_file, **opts)
    ds = get_dataset("s3", "train", s3_credential_file=bad_file, aws_access_key_id=key_id,
                     aws_secret_access_key=secret, **opts)  # explicit arguments win over the file
    assert ds[0][1] == 0


def test_wrong_credentials_fail_early_without_leaking(auth_s3, tmp_path, caplog, clean_aws_env):
    endpoint, key_id, secret, bucket = auth_s3
    wrong = "Wr0ng-Secret-Value-That-Must-Not-Leak"
    creds = write(tmp_path / "creds.json", {"aws_access_key_id": key_id, "aws_secret_access_key": wrong,
                                            "bucket_name": bucket, "endpoint_url": endpoint,
                                            "region_name": "us-east-1"})
    index = write(tmp_path / "index.json", ["img/n00000000_0.JPEG"])
    classes = write(tmp_path / "classes.json", {"n00000000": {"id": 0, "name": "zero"}})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(S3AccessDeniedError) as info:
        get_dataset("s3", "train", index_file=index, classes_file=classes, s3_credential_file=creds,
                    retry=FAST_RETRY)
    text = str(info.value) + repr(info.value) + "".join(getattr(info.value, "__notes__", []))
    assert f"s3://{bucket}" in text and "access denied" in text
    for leaked in (wrong, secret, key_id):
        assert leaked not in text
    # Even botocore's own DEBUG logging (which shows the access key id in the signed header) never
    # carries a secret; our own log lines carry neither.
    assert wrong not in caplog.text and secret not in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("concurrent_dataloader"))
    assert ours and key_id not in ours


def test_missing_bucket_fails_early(image_folder, s3_options):
    with pytest.raises(BucketNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        get_dataset("s3", "train", index_file=image_folder["index_file"], classes_file=image_folder["classes_file"],
                    bucket="no-such-bucket-here", retry=FAST_RETRY, **s3_options)
    with pytest.raises(ConfigError, match="no S3 bucket"):
        get_dataset("s3", "train", index_file=image_folder["index_file"], classes_file=image_folder["classes_file"],
                    **s3_options)


# --------------------------------------------------------------------------------- download URLs
def test_download_urls_from_credential_file(image_folder, s3_client, s3_bucket, s3_server, s3_options, tmp_path,
                                            caplog, clean_aws_env):
    S3_TEST_ACCESS_KEY, S3_TEST_SECRET = s3_options["aws_access_key_id"], s3_options["aws_secret_access_key"]
    upload_folder(s3_client, s3_bucket, image_folder["base"], image_folder["files"])
    s3_client.put_object(Bucket=s3_bucket, Key="meta/index-s3-train.json", Body=image_folder["index_file"].read_bytes())
    s3_client.put_object(Bucket=s3_bucket, Key="meta/imagenet-train-classes.json",
                         Body=image_folder["classes_file"].read_bytes())
    creds = write(tmp_path / "s3_credentials.json", {
        "aws_access_key_id": S3_TEST_ACCESS_KEY, "aws_secret_access_key": S3_TEST_SECRET, "bucket_name": s3_bucket,
        "train_index_file_download_url": f"s3://{s3_bucket}/meta/index-s3-train.json",
        "train_classes_file_download_url": f"s3://{s3_bucket}/meta/imagenet-train-classes.json",
        "val_index_file_download_url": f"s3://{s3_bucket}/meta/missing-val-index.json"})
    opts = dict(s3_credential_file=creds, endpoint_url=s3_server, region_name="us-east-1")
    caplog.set_level(logging.DEBUG)
    # No local files at all: both are downloaded into memory.
    ds = get_dataset("s3", "train", **opts)
    assert ds.keys == image_folder["index"] and len(set(ds.labels)) == 3
    # A local path that does not exist yet: downloaded once and saved there.
    local_index = tmp_path / "cache" / "index-s3-train.json"
    ds = get_dataset("s3", "train", index_file=local_index, **opts)
    assert json.loads(local_index.read_text()) == image_folder["index"]
    # An s3:// URL given directly.
    ds = get_dataset("s3", "train", index_file=f"s3://{s3_bucket}/meta/index-s3-train.json",
                     classes_file=image_folder["classes_file"], limit=2, **opts)
    assert len(ds) == 2
    # A download URL naming a missing object: the error names it.
    with pytest.raises(FileNotFoundError, match=f"index file s3://{s3_bucket}/meta/missing-val-index.json"):
        get_dataset("s3", "val", classes_file=image_folder["classes_file"], **opts)
    assert S3_TEST_SECRET not in caplog.text
