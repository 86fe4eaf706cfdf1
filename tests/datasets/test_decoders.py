"""decoder="torchvision": pixel parity with PIL's convert("RGB") for every mode, the same errors
as decoder="pil" (naming index and key/path) in every format, and the GPU path's CPU half.

All images are generated here with PIL.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from concurrent_dataloader import DataLoader, get_dataset
from concurrent_dataloader import decoding
from concurrent_dataloader.decoding import (DECODERS, collate_encoded, decode_batch, decode_image, image_size,
                                            pil_to_tensor)
from concurrent_dataloader.errors import ConfigError, DataFormatError
from concurrent_dataloader.transforms import eval_transform, train_transform

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def photo(h: int = 72, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([np.sin(x / 7.0) * 90 + 128, np.cos(y / 5.0) * 90 + 128, (x * 2 + y) % 256], -1)
    return np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _cases() -> dict[str, bytes]:
    rgb = Image.fromarray(photo())
    rng = np.random.default_rng(5)
    cmyk = Image.fromarray(rng.integers(0, 256, (40, 56, 4), dtype=np.uint8), "CMYK")  # K != 0 too
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=40)
    rgba = Image.fromarray(np.dstack([photo(), rng.integers(0, 256, (72, 96), dtype=np.uint8)]), "RGBA")
    return {
        "jpeg_rgb": encode(rgb, "JPEG", quality=90),
        "jpeg_444": encode(rgb, "JPEG", quality=90, subsampling=0),
        "jpeg_progressive": encode(rgb, "JPEG", progressive=True),
        "jpeg_gray": encode(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": encode(cmyk, "JPEG", quality=95),
        "png_rgb": encode(rgb, "PNG"),
        "png_gray": encode(rgb.convert("L"), "PNG"),
        "png_gray_alpha": encode(rgb.convert("LA"), "PNG"),
        "png_rgba": encode(rgba, "PNG"),
        "png_palette": encode(pal, "PNG"),
        "png_palette_transparency": encode(pal, "PNG", transparency=3),
        "png_1bit": encode(rgb.convert("1"), "PNG"),
        "png_16bit": encode(Image.fromarray(photo()[..., 0].astype(np.uint16) * 257), "PNG"),
        "gif": encode(pal, "GIF"),
        "webp": encode(rgb, "WEBP", lossless=True),
        "bmp": encode(rgb, "BMP"),
        "tiff_cmyk": encode(cmyk, "TIFF"),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_torchvision_matches_pil_convert_rgb(name):
    raw = CASES[name]
    want = pil_to_tensor(decode_image(raw, "pil"))
    got = decode_image(raw, "torchvision")
    assert got.dtype == torch.uint8 and got.ndim == 3 and got.shape[0] == 3
    assert torch.equal(got, want), f"{name}: max diff {(got.int() - want.int()).abs().max()}"


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n.startswith("jpeg")])
def test_jpeg_is_decoded_without_pil(name, monkeypatch):
    def no_pil(raw):
        raise AssertionError("PIL used for a JPEG")

    monkeypatch.setitem(DECODERS, "pil", no_pil)
    monkeypatch.setattr(decoding, "_decode_pil", no_pil)
    assert decode_image(CASES[name], "torchvision").shape[0] == 3


def test_unknown_decoder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="decoder must be one of"):
        decode_image(CASES["jpeg_rgb"], "turbo")


def _corrupt_png_idat(raw: bytes) -> bytes:
    """Zero a stretch of the first IDAT chunk's zlib data, with a *valid* CRC: torchvision's PNG
    decoder crashes the process on this (see NOTE [ torchvision decode fallbacks ])."""
    data = bytearray(raw)
    i = data.index(b"IDAT") - 4
    n = struct.unpack(">I", data[i:i + 4])[0]
    data[i + 8 + 10:i + 8 + 60] = b"\x00" * 50
    data[i + 8 + n:i + 12 + n] = struct.pack(">I", zlib.crc32(bytes(data[i + 4:i + 8 + n])))
    return bytes(data)


BAD = {
    "jpeg_truncated": CASES["jpeg_rgb"][: len(CASES["jpeg_rgb"]) // 2],
    "jpeg_header_only": CASES["jpeg_rgb"][:200],
    "jpeg_marker_garbage": b"\xff\xd8\xff" + b"x" * 100,
    "png_truncated": CASES["png_rgb"][:-200],
    "png_corrupt_idat": _corrupt_png_idat(CASES["png_rgb"]),
    "empty": b"",
    "text": b"hello, not an image",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_bytes_give_the_pil_error(name):
    with pytest.raises(Exception) as pil_info:
        decode_image(BAD[name], "pil")
    with pytest.raises(Exception) as tv_info:
        decode_image(BAD[name], "torchvision")
    assert type(tv_info.value) is type(pil_info.value)
    # UnidentifiedImageError names the BytesIO object's address; compare without it.
    strip = lambda e: str(e).split(" <")[0]  # noqa: E731
    assert strip(tv_info.value) == strip(pil_info.value)


def test_decompression_bomb_limit_applies_to_torchvision(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 96x72 image is > 2x that
    for decoder in DECODERS:
        with pytest.raises(Image.DecompressionBombError):
            decode_image(CASES["jpeg_rgb"], decoder)


def test_image_size_reads_the_jpeg_header():
    exif = Image.Exif()
    exif[0x010E] = "x" * 5000  # a big APP1 segment before the frame header
    raw = encode(Image.fromarray(photo(33, 47)), "JPEG", exif=exif.tobytes())
    assert image_size(raw) == (47, 33)
    assert image_size(CASES["jpeg_progressive"]) == (96, 72)
    assert image_size(CASES["png_rgb"]) is None
    assert image_size(b"\xff\xd8\xff") is None


# ------------------------------------------------------------------ datasets and formats
def _folder(tmp_path, n: int = 6, bad: dict[int, bytes] | None = None):
    """An ImageFolder-like tree with the seed's index/classes files; mixed modes and formats."""
    kinds = ["jpeg_rgb", "jpeg_gray", "jpeg_cmyk", "png_palette", "png_rgba", "jpeg_progressive"]
    files, raws = [], []
    for i in range(n):
        cls = f"n{i % 2:08d}"
        raw = (bad or {}).get(i, CASES[kinds[i % len(kinds)]])
        p = tmp_path / "train" / cls / f"{cls}_{i}.JPEG"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(raw)
        files.append(p)
        raws.append(raw)
    (tmp_path / "index.json").write_text(json.dumps([str(p.relative_to(tmp_path)) for p in files]))
    (tmp_path / "classes.json").write_text(json.dumps({f"n{c:08d}": {"id": c, "name": str(c)} for c in range(2)}))
    return files, raws


def _scratch(tmp_path, **kw):
    return get_dataset("scratch", index_file=tmp_path / "index.json", classes_file=tmp_path / "classes.json",
                       root=tmp_path, **kw)


def _s3(tmp_path, s3_client, s3_bucket, s3_options, files, **kw):
    for p in files:
        s3_client.put_object(Bucket=s3_bucket, Key=str(p.relative_to(tmp_path)), Body=p.read_bytes())
    return get_dataset("s3", index_file=tmp_path / "index.json", classes_file=tmp_path / "classes.json",
                       bucket=s3_bucket, **s3_options, **kw)


@pytest.fixture(params=["scratch", "s3"])
def image_ds(request, tmp_path):
    """Builds a get_dataset dataset on scratch or S3 (moto) for the files of ``_folder``."""
    def build(files, **kw):
        if request.param == "scratch":
            return _scratch(tmp_path, **kw)
        f = request.getfixturevalue
        return _s3(tmp_path, f("s3_client"), f("s3_bucket"), f("s3_options"), files, **kw)
    return build


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_get_dataset_torchvision_matches_pil(tmp_path, image_ds, fetch_impl):
    files, raws = _folder(tmp_path)
    ds_pil = image_ds(files)
    ds_tv = image_ds(files, decoder="torchvision")
    assert ds_tv.decoder == "torchvision" and ds_pil.decoder == "pil"
    with DataLoader(ds_tv, batch_size=3, num_workers=1, fetch_impl=fetch_impl, collate_fn=lambda b: b) as loader:
        got = [s for batch in loader for s in batch]
    assert len(got) == len(files)
    for i, (img, label) in enumerate(got):
        pil_img, pil_label = ds_pil[i]
        assert label == pil_label
        assert torch.equal(img, pil_to_tensor(pil_img))


def test_get_dataset_with_fast_transforms_batches_uint8(tmp_path, image_ds):
    files, _ = _folder(tmp_path)
    ds = image_ds(files, decoder="torchvision", transform=train_transform(32))
    with DataLoader(ds, batch_size=3, num_workers=1) as loader:
        batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 32, 32)] * 2
    assert all(x.dtype == torch.uint8 for x, _ in batches)
    ds.set_transform(eval_transform(32, 36))
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_corrupt_image_error_names_index_and_key(tmp_path, image_ds, decoder):
    files, _ = _folder(tmp_path, bad={3: BAD["jpeg_truncated"]})
    ds = image_ds(files, decoder=decoder)
    with DataLoader(ds, batch_size=2, num_workers=1, collate_fn=lambda b: b) as loader, \
            pytest.raises(OSError) as info:
        list(loader)
    text = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    assert "cannot decode image" in text and "index 3" in text and files[3].name in text
    assert "image file is truncated" in text  # PIL's own words, for both decoders


def test_pil_and_torchvision_errors_read_the_same(tmp_path):
    files, _ = _folder(tmp_path, bad={1: BAD["png_corrupt_idat"]})
    texts = []
    for decoder in sorted(DECODERS):
        with pytest.raises(OSError) as info:
            _scratch(tmp_path, decoder=decoder)[1]
        texts.append(str(info.value))
    assert texts[0] == texts[1] and files[1].name in texts[0]


def test_bad_decoder_arguments(tmp_path):
    _folder(tmp_path)
    with pytest.raises(ConfigError, match="decoder must be one of"):
        _scratch(tmp_path, decoder="opencv")
    with pytest.raises(ConfigError, match="needs decoder='torchvision'"):
        _scratch(tmp_path, decode_device="cuda")
    with pytest.raises(ConfigError, match="decode_device must be one of"):
        _scratch(tmp_path, decoder="torchvision", decode_device="tpu")


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_image_archive_torchvision(tmp_path):
    from concurrent_dataloader.formats import ImageArchive

    names = ["jpeg_rgb", "jpeg_cmyk", "png_palette", "jpeg_gray"]
    path = _tar(tmp_path / "a.tar", [(f"c{i % 2}/{n}.jpg", CASES[n]) for i, n in enumerate(names)]
                + [("c1/broken.jpg", BAD["jpeg_truncated"])])
    ds_pil = ImageArchive(path, progress=False)
    ds_tv = ImageArchive(path, progress=False, decoder="torchvision")
    for i in range(len(names)):
        img, target = ds_tv[i]
        pil_img, pil_target = ds_pil[i]
        assert target == pil_target and torch.equal(img, pil_to_tensor(pil_img))
    broken = ds_tv.names.index("c1/broken.jpg")
    for ds in (ds_pil, ds_tv):
        with pytest.raises(DataFormatError, match=r"a\.tar: member 'c1/broken\.jpg' is not a readable image "
                                                  r"\(OSError: image file is truncated"):
            ds[broken]
    with pytest.raises(ConfigError, match="not both"):
        ImageArchive(path, progress=False, decoder="torchvision", loader=lambda f: f.read())


def test_tar_shards_torchvision(tmp_path):
    from concurrent_dataloader.formats import ImageRecordDecoder, TarShardDataset

    members = []
    for i, n in enumerate(["jpeg_rgb", "png_rgba", "jpeg_cmyk"]):
        members += [(f"s{i}.jpg", CASES[n]), (f"s{i}.cls", str(i).encode())]
    path = _tar(tmp_path / "shard-0.tar", members)
    pil = list(TarShardDataset(str(path), map_fn=ImageRecordDecoder()))
    tv = list(TarShardDataset(str(path), map_fn=ImageRecordDecoder(decoder="torchvision")))
    assert [y for _, y in tv] == [0, 1, 2]
    for (a, ya), (b, yb) in zip(pil, tv):
        assert ya == yb and torch.equal(b, pil_to_tensor(a))
    bad = _tar(tmp_path / "shard-1.tar", [("k7.jpg", BAD["jpeg_truncated"]), ("k7.cls", b"1")])
    for decoder in sorted(DECODERS):
        with pytest.raises(DataFormatError, match=r"shard-1\.tar: record 'k7': not a readable image \(image file "
                                                  r"is truncated"):
            list(TarShardDataset(str(bad), map_fn=ImageRecordDecoder(decoder=decoder)))
    with pytest.raises(ConfigError):
        ImageRecordDecoder(decoder="torchvision", mode="L")


def test_tfrecord_parser_torchvision(tmp_path):
    from concurrent_dataloader.formats import ExampleImageParser, TFRecordDataset, TFRecordWriter, encode_example

    path = tmp_path / "x.tfrecord"
    with TFRecordWriter(path) as w:
        for i, n in enumerate(["jpeg_rgb", "png_palette", "jpeg_gray"]):
            w.write(encode_example({"image_raw": CASES[n], "label": i}))
        w.write(encode_example({"image_raw": BAD["jpeg_truncated"], "label": 9}))
    pil = TFRecordDataset(path, ExampleImageParser())
    tv = TFRecordDataset(path, ExampleImageParser(decoder="torchvision"))
    for decoder, ds in (("pil", pil), ("torchvision", tv)):
        with pytest.raises(DataFormatError, match=r"Example.image_raw \(label 9, \d+ bytes\): not a readable image "
                                                  r"\(image file is truncated"):
            list(ds)
    it_pil, it_tv = iter(pil), iter(tv)
    for _ in range(3):
        (a, ya), (b, yb) = next(it_pil), next(it_tv)
        assert ya == yb and torch.equal(b, pil_to_tensor(a))


# ------------------------------------------------------------------ GPU path (CPU half here)
def test_decode_device_cuda_hands_on_bytes(tmp_path):
    files, raws = _folder(tmp_path)
    ds = _scratch(tmp_path, decoder="torchvision", decode_device="cuda", transform=train_transform(16))
    with DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_encoded) as loader:
        batches = list(loader)
    encoded = [e for imgs, _ in batches for e in imgs]
    assert [bytes(e.data.numpy()) for e in encoded] == raws  # workers only moved bytes
    assert [e.index for e in encoded] == list(range(6)) and encoded[4].key.endswith(files[4].name)
    assert batches[0][1].tolist() == [0, 1, 0]
    # The main-process half, on the CPU here: same pixels as decoding each image alone.
    out = decode_batch(encoded, device="cpu", transform=eval_transform(16, 20))
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.uint8
    for i, raw in enumerate(raws):
        assert torch.equal(out[i], eval_transform(16, 20)(decode_image(raw, "torchvision")))
    with pytest.raises(OSError, match="image file is truncated") as info:
        decode_batch(encoded[:2] + [torch.frombuffer(bytearray(BAD["jpeg_truncated"]), dtype=torch.uint8)],
                     device="cpu", keys=["a", "b", "broken.jpg"])
    assert any("image 2 of the batch (broken.jpg)" in n for n in info.value.__notes__)
    # Through the dataset: the error names the dataset index and the file.
    files[2].write_bytes(BAD["jpeg_truncated"])
    with DataLoader(ds, batch_size=3, num_workers=0, collate_fn=collate_encoded) as loader:
        first, _ = next(iter(loader))
    with pytest.raises(OSError, match="image file is truncated") as info:
        decode_batch(first, device="cpu")
    notes = "\n".join(info.value.__notes__)
    assert f"image 2 of the batch, dataset index 2 ({first[2].key})" in notes and files[2].name in notes, notes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the nvJPEG path needs a CUDA device (none on this machine)")
def test_decode_batch_on_cuda_matches_cpu(tmp_path):
    raws = [CASES[n] for n in ("jpeg_rgb", "jpeg_gray", "jpeg_progressive", "png_palette")]
    encoded = [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raws]
    out = decode_batch(encoded, device="cuda")
    assert out.device.type == "cuda" and out.dtype == torch.uint8
    for img, raw in zip(out, raws):
        cpu = decode_image(raw, "torchvision")
        # nvJPEG's IDCT/upsampling may differ from libjpeg-turbo by a level or two.
        assert (img.cpu().int() - cpu.int()).abs().float().mean() < 1.0
    t = decode_batch(encoded, device="cuda", transform=train_transform(32))
    assert t.shape == (4, 3, 32, 32) and t.device.type == "cuda"


# ------------------------------------------------------------------ converted readers of encoded bytes
@pytest.mark.parametrize("fmt", ["parquet", "ipc", "tar"])
def test_converted_readers_torchvision(tmp_path, fmt):
    from concurrent_dataloader.formats.converted import get_format, open_converted

    names = ["jpeg_rgb", "jpeg_cmyk", "png_palette", "jpeg_gray", "png_rgba"]
    src = tmp_path / "src"
    for i, n in enumerate(names + ["broken"]):
        d = src / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img_{i}.jpg").write_bytes(CASES[n] if n != "broken" else BAD["jpeg_truncated"])
    out = tmp_path / fmt
    get_format(fmt).converter(str(src), str(out), 4, 2, progress=False, verify_images=False).convert()
    pil = open_converted(out)
    tv = open_converted(out, decoder="torchvision")
    assert tv.decoder == "torchvision"
    broken = None
    for i in range(len(pil)):
        try:
            a, ya = pil[i]
        except DataFormatError as exc:
            broken = (i, str(exc))
            continue
        b, yb = tv[i]
        assert ya == yb and torch.equal(b, pil_to_tensor(a.convert("RGB")))
    assert broken is not None and "cannot decode image (OSError: image file is truncated" in broken[1]
    with pytest.raises(DataFormatError) as info:
        tv[broken[0]]
    assert str(info.value) == broken[1]  # same message, naming the file and the record/member
    with DataLoader(tv, batch_size=2, num_workers=0, collate_fn=lambda b: b) as loader, \
            pytest.raises(DataFormatError) as info:
        list(loader)
    assert f"index {broken[0]}" in "\n".join(getattr(info.value, "__notes__", []))


def test_converted_fixed_size_readers_refuse_a_decoder(tmp_path):
    from concurrent_dataloader.formats.converted import get_format

    src = tmp_path / "src" / "class_0"
    src.mkdir(parents=True)
    (src / "a.jpg").write_bytes(CASES["jpeg_rgb"])
    get_format("memmap").converter(str(tmp_path / "src"), str(tmp_path / "m"), 4, 2, progress=False,
                                   shape=(8, 8), im_mode="RGB").convert()
    with pytest.raises(ConfigError, match="does not decode encoded images"):
        get_format("memmap").reader(str(tmp_path / "m"), decoder="torchvision")


# ------------------------------------------------------------------ examples/imagenet.py --decoder
def test_imagenet_example_trains_with_torchvision_decoder(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from benchmarking.make_synthetic import SyntheticSpec, make_synthetic

    d = tmp_path / "tiny"
    make_synthetic(d, SyntheticSpec(train=24, val=8, classes=3, width=64, height=48, target_kb=3, seed=1),
                   progress=False)
    path = Path(__file__).resolve().parents[2] / "examples" / "imagenet.py"
    spec = importlib.util.spec_from_file_location("imagenet_example_decode", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    seen = []
    real_normalize = example.normalize
    example.normalize = lambda x: seen.append((x.dtype, tuple(x.shape))) or real_normalize(x)
    result = example.main([
        "--dataset", "scratch", "--data-root", str(d), "--index-file", str(d / "index-scratch-train.json"),
        "--classes-file", str(d / "imagenet-train-classes.json"), "--val-index-file", str(d / "index-scratch-val.json"),
        "--val-classes-file", str(d / "imagenet-val-classes.json"), "--decoder", "torchvision", "--image-size", "32",
        "-b", "8", "-j", "1", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1", "--print-freq", "100",
        "--seed", "0", "--num-fetch-workers", "4", "--no-checkpoint"])
    assert result["history"][-1]["train"]["n"] == 16 and result["history"][-1]["val"]["n"] == 8
    assert seen and all(s == (torch.uint8, (8, 3, 32, 32)) for s in seen)  # uint8 batches, normalised after .to()
