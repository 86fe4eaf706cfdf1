"""Endpoint, region and addressing style of the S3 stores come from botocore's own rules: every
source is tested against a real local server, which records where each request went and which
region signed it."""

from __future__ import annotations

import json
import pickle
import socket

import pytest

from concurrent_dataloader.storage.s3 import S3Store
from concurrent_dataloader.storage.s3_http import LeanS3Store

KEYS = {"aws_access_key_id": "AKIAENDPOINTTEST01", "aws_secret_access_key": "endpoint-secret"}


def _get(store, key="k"):
    try:
        return store.get(key)
    finally:
        store.close()


STORES = {"s3lean": LeanS3Store, "s3": S3Store}


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("source", ["argument", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "profile", "services"])
def test_endpoint_from_each_source(aws_home, recording_server, bucket, kind, source):
    server, rec = recording_server
    url = server.endpoint_url
    options = dict(KEYS)
    if source == "argument":
        options["endpoint_url"] = url
    elif source.startswith("AWS_"):
        aws_home.monkeypatch.setenv(source, url)
    elif source == "profile":
        aws_home.config(f"[profile dev]\nendpoint_url = {url}\nregion = eu-west-3\n")
        options["profile_name"] = "dev"
    else:  # the profile's `services` section (botocore >= 1.31)
        aws_home.config(f"[profile dev]\nservices = local\n\n[services local]\ns3 =\n  endpoint_url = {url}\n")
        options["profile_name"] = "dev"
    assert _get(STORES[kind](bucket, **options)) == b"payload"
    assert rec.seen[-1]["path"] == f"/{bucket}/k" and rec.seen[-1]["key_id"] == KEYS["aws_access_key_id"]
    if source == "profile":
        assert rec.seen[-1]["region"] == "eu-west-3"


def test_endpoint_precedence_is_botocores(aws_home, recording_server, bucket):
    """The argument beats AWS_ENDPOINT_URL_S3, which beats AWS_ENDPOINT_URL (a dead port here)."""
    server, rec = recording_server
    aws_home.monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    aws_home.monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
    assert _get(LeanS3Store(bucket, **KEYS)) == b"payload"
    aws_home.monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert _get(LeanS3Store(bucket, endpoint_url=server.endpoint_url, **KEYS)) == b"payload"
    aws_home.monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    store = LeanS3Store(bucket, region_name="eu-north-1", **KEYS)
    assert store.client.endpoint_url == "https://s3.eu-north-1.amazonaws.com"


@pytest.mark.parametrize("source", ["argument", "AWS_REGION", "AWS_DEFAULT_REGION", "profile", "default"])
def test_region_from_each_source(aws_home, recording_server, bucket, source):
    server, rec = recording_server
    options = dict(KEYS, endpoint_url=server.endpoint_url)
    expected = "ap-south-1"
    if source == "argument":
        options["region_name"] = expected
    elif source.startswith("AWS_"):
        aws_home.monkeypatch.setenv(source, expected)
        if source == "AWS_REGION":  # botocore 1.43 reads only AWS_DEFAULT_REGION (AWS_REGION is the CLI's)
            expected = "us-east-1"
    elif source == "profile":
        aws_home.config(f"[default]\nregion = {expected}\n")
    else:
        expected = "us-east-1"
    store = LeanS3Store(bucket, **options)
    assert store.client.region == expected
    assert _get(store) == b"payload"
    assert rec.seen[-1]["region"] == expected


def test_get_dataset_lean_honours_aws_endpoint_url_s3(aws_home, recording_server, bucket, tmp_path):
    """The issue's report: with AWS_ENDPOINT_URL_S3 set, get_dataset(s3_client="lean") used to
    go to s3.<region>.amazonaws.com."""
    import io

    from PIL import Image

    from concurrent_dataloader.datasets import get_dataset

    server, rec = recording_server
    jpeg = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 10, 10)).save(jpeg, format="JPEG")
    server.put_object(bucket, "train/n00000000/n00000000_0.JPEG", jpeg.getvalue())
    (tmp_path / "index.json").write_text(json.dumps(["train/n00000000/n00000000_0.JPEG"]))
    (tmp_path / "classes.json").write_text(json.dumps({"n00000000": {"id": 0, "name": "zero"}}))
    aws_home.monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
    aws_home.monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEYS["aws_access_key_id"])
    aws_home.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS["aws_secret_access_key"])
    ds = get_dataset("s3", "train", index_file=tmp_path / "index.json", classes_file=tmp_path / "classes.json",
                     bucket=bucket, s3_client="lean")
    image, label = ds[0]
    assert label == 0 and image.size == (48, 32)
    assert {e["key_id"] for e in rec.seen} == {KEYS["aws_access_key_id"]}
    assert KEYS["aws_secret_access_key"].encode() not in pickle.dumps(ds)  # env keys: only the source travels


# ------------------------------------------------------------------------------ addressing style
def test_addressing_auto_is_botocores_choice(aws_home):
    """No network: the resolved target for AWS (virtual-hosted for DNS-compatible buckets) and for
    a custom IP endpoint (path-style), exactly what botocore's own client would call."""
    aws = LeanS3Store("my-bucket", region_name="eu-west-1", **KEYS).client._target("my-bucket")
    assert (aws.host, aws.path_prefix, aws.tls) == ("my-bucket.s3.eu-west-1.amazonaws.com", "", True)
    dotted = LeanS3Store("my.bucket", region_name="eu-west-1", **KEYS).client._target("my.bucket")
    assert (dotted.host, dotted.path_prefix) == ("s3.eu-west-1.amazonaws.com", "/my.bucket")
    path = LeanS3Store("my-bucket", region_name="eu-west-1", addressing_style="path", **KEYS).client
    assert path._target("my-bucket").path_prefix == "/my-bucket"
    local = LeanS3Store("my-bucket", endpoint_url="http://127.0.0.1:9000", **KEYS).client._target("my-bucket")
    assert (local.host, local.port, local.path_prefix) == ("127.0.0.1", 9000, "/my-bucket")


@pytest.fixture
def localhost_subdomains(monkeypatch):
    """``<bucket>.localhost`` resolves to 127.0.0.1 (what an /etc/hosts entry or a wildcard DNS
    record does for a real S3-compatible deployment); nothing else changes."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("style", ["virtual", "path", "auto"])
async def test_addressing_styles_against_a_server(aws_home, recording_server, bucket, localhost_subdomains, style):
    server, rec = recording_server
    store = LeanS3Store(bucket, endpoint_url=f"http://localhost:{server.port}", addressing_style=style,
                        **KEYS)
    assert store.get("k") == b"payload"
    assert await store.aget("k") == b"payload"
    store.put("new", b"written")
    assert store.get("new") == b"written"
    assert list(store.list()) == ["k", "new"]
    store.check()
    store.close()
    await store.aclose()
    hosts = {e["host"] for e in rec.seen}
    if style == "virtual":
        assert hosts == {f"{bucket}.localhost:{server.port}"}
        assert {e["path"] for e in rec.seen} >= {"/k", "/new", "/"}
    else:  # auto on a custom endpoint: path-style, as botocore
        assert hosts == {f"localhost:{server.port}"}
        assert f"/{bucket}/k" in {e["path"] for e in rec.seen}


def test_bad_addressing_style_is_refused():
    from concurrent_dataloader.errors import ConfigError

    with pytest.raises(ConfigError, match="addressing_style"):
        LeanS3Store("b", addressing_style="sideways", **KEYS)
