"""Image bytes -> image: the one decoder registry every dataset and format calls.

``decode_image(raw, decoder)`` is the single entry point; ``DECODERS`` maps each name to its
function. A dataset stores the decoder *name* (a string pickles into forked/spawned workers;
functions of optional libraries may not).

``"pil"`` (default)
    ``PIL.Image.open`` + ``load()`` + ``convert("RGB")``: an RGB ``PIL.Image``, as the seed and
    torchvision's ``ImageFolder`` give it.
``"torchvision"``
    A ``uint8`` CHW RGB tensor, decoded straight from the bytes (``torch.frombuffer``, no PIL
    image in between) by ``torchvision.io.decode_jpeg``. Pixel-identical to ``"pil"`` followed
    by a HWC->CHW conversion, for every mode (RGB, grayscale, CMYK, palette, RGBA, 16-bit): see
    NOTE [ torchvision decode fallbacks ].

See docs/decode.md for the options, the GPU path (``decode_batch``) and the measurements.
"""

from __future__ import annotations

import io
import threading
import warnings
from typing import Any, Callable, Sequence

from .errors import ConfigError

__all__ = ["DECODERS", "DECODE_DEVICES", "decode_image", "check_decoder", "check_decode_device", "EncodedImage",
           "encoded_image",
           "decode_batch", "collate_encoded", "image_size", "pil_to_tensor", "is_jpeg"]

# NOTE [ torchvision decode fallbacks ]
# Measured on torchvision 0.29.1 / Pillow 13 (tests/datasets/test_decoders.py keeps checking it):
# * JPEG (RGB, 4:2:0/4:4:4, progressive, grayscale, CMYK/Adobe): decode_jpeg(mode=RGB) equals
#   PIL's convert("RGB") bit for bit (both are libjpeg-turbo with the same IDCT and upsampling).
# * PNG: decode_image equals PIL too, BUT torchvision's libpng error handling crashes the
#   process (SIGSEGV) on a corrupt IDAT chunk (bad CRC or zlib data). A crashed worker is far
#   worse than a slow decode, so PNG -- and every format other than JPEG (GIF, WebP, BMP,
#   TIFF, 16-bit) -- is decoded by PIL and converted to a tensor. The fast path is JPEG only;
#   that is what photo datasets are.
# * On bad JPEG bytes torchvision is never more lenient than PIL (fuzzed: no file PIL refuses
#   decodes), but it is sometimes stricter (a missing end marker). So when decode_jpeg raises,
#   PIL decides: if PIL can read the file the sample is PIL's pixels, otherwise the error is
#   PIL's error -- the same exception, and so the same message, as with decoder="pil".
# * Decompression bombs: PIL refuses images over 2 * Image.MAX_IMAGE_PIXELS when it opens
#   them; the JPEG path reads the size from the header and applies the same limit first.


def _decode_pil(raw: bytes | bytearray | memoryview) -> Any:
    """Bytes -> an RGB ``PIL.Image``; ``load()`` forces the full decode here, so a truncated
    file fails now (in decode) rather than later inside a transform."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        return img.convert("RGB")


def pil_to_tensor(img: Any) -> Any:
    """An RGB ``PIL.Image`` -> ``uint8`` CHW tensor (contiguous, writable)."""
    import numpy as np
    import torch

    arr = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)  # a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def is_jpeg(raw: bytes | bytearray | memoryview) -> bool:
    return bytes(raw[:3]) == b"\xff\xd8\xff"


# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(raw: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG header without decoding, or None (not a JPEG, or no
    frame header found: the decoder then reports the problem)."""
    if not is_jpeg(raw):
        return None
    data = memoryview(raw)
    n, pos = len(data), 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF:
            if pos + 9 > n:
                return None
            h = (data[pos + 5] << 8) | data[pos + 6]
            w = (data[pos + 7] << 8) | data[pos + 8]
            return (w, h)
        if marker == 0xDA or length < 2:  # scan data before a frame header: malformed
            return None
        pos += 2 + length
    return None


def _check_pixels(size: tuple[int, int]) -> None:
    """PIL's decompression-bomb rule (same limit, same exception types), for decoders that
    bypass ``Image.open``."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if not limit:
        return
    pixels = size[0] * size[1]
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(
            f"image of {size[0]}x{size[1]} = {pixels} pixels is over twice PIL's MAX_IMAGE_PIXELS ({limit}): "
            "refused as a possible decompression bomb")
    if pixels > limit:
        warnings.warn(f"image of {pixels} pixels is over PIL's MAX_IMAGE_PIXELS ({limit})",
                      Image.DecompressionBombWarning, stacklevel=3)


_tv_lock = threading.Lock()
_tv: tuple[Callable[..., Any], Any] | None = None


def _torchvision_jpeg() -> tuple[Callable[..., Any], Any]:
    """``(decode_jpeg, ImageReadMode.RGB)``, imported once per process.

    torchvision 0.29 marks its decoders deprecated (in favour of torchcodec, not installed
    here) and warns on *every* call; the warning is silenced for that message only.
    """
    global _tv
    if _tv is None:
        with _tv_lock:
            if _tv is None:
                warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                                        "TorchVision are deprecated", category=DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg

                _tv = (decode_jpeg, ImageReadMode.RGB)
    return _tv


def _byte_tensor(raw: bytes | bytearray | memoryview) -> Any:
    """A 1-D uint8 tensor over ``raw``. Immutable ``bytes`` are copied once into a bytearray
    (~5 us per 100 KB): torch warns about, and may write through, a read-only buffer."""
    import torch

    buf = raw if isinstance(raw, bytearray) or (isinstance(raw, memoryview) and not raw.readonly) else bytearray(raw)
    return torch.frombuffer(buf, dtype=torch.uint8)


def _decode_torchvision(raw: bytes | bytearray | memoryview) -> Any:
    """Bytes -> ``uint8`` CHW RGB tensor. JPEG via ``decode_jpeg``; anything else, or a JPEG
    torchvision refuses, via PIL (NOTE [ torchvision decode fallbacks ])."""
    if is_jpeg(raw):
        size = image_size(raw)
        if size is not None:
            _check_pixels(size)
        decode_jpeg, rgb = _torchvision_jpeg()
        try:
            return decode_jpeg(_byte_tensor(raw), mode=rgb)
        except RuntimeError:
            pass  # PIL decides: its pixels if it can read the file, else its error.
    return pil_to_tensor(_decode_pil(raw))


DECODERS: dict[str, Callable[[bytes], Any]] = {"pil": _decode_pil, "torchvision": _decode_torchvision}
DECODE_DEVICES = ("cpu", "cuda")


def check_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ConfigError(f"decoder must be one of {tuple(DECODERS)}, got {decoder!r}")
    return decoder


def check_decode_device(decode_device: str | None, decoder: str) -> str:
    """``"cpu"`` (decode in the fetch workers) or ``"cuda"`` (workers pass the bytes on, the
    main process decodes whole batches with nvJPEG: :func:`decode_batch`)."""
    device = "cpu" if decode_device is None else str(decode_device)
    if device.split(":")[0] not in DECODE_DEVICES:
        raise ConfigError(f"decode_device must be one of {DECODE_DEVICES} (or 'cuda:N'), got {decode_device!r}")
    if device != "cpu" and decoder != "torchvision":
        raise ConfigError(f"decode_device={device!r} needs decoder='torchvision' (got {decoder!r})")
    return device


def decode_image(raw: bytes | bytearray | memoryview, decoder: str = "pil") -> Any:
    """Decode one image with the named decoder: an RGB ``PIL.Image`` (``"pil"``) or a ``uint8``
    CHW RGB tensor (``"torchvision"``). Errors propagate unchanged (callers name the sample)."""
    return DECODERS[check_decoder(decoder)](raw)


# ---------------------------------------------------------------------------------------- GPU path
class EncodedImage:
    """What a fetch worker hands on when ``decode_device="cuda"``: the encoded bytes as a 1-D uint8
    tensor (``data``; shared memory carries it to the main process, nothing is decoded in the
    worker), with the dataset ``index`` and ``key`` so that a decode error can name the sample."""

    __slots__ = ("data", "index", "key")

    def __init__(self, data: Any, index: int | None = None, key: str | None = None) -> None:
        self.data, self.index, self.key = data, index, key

    def __reduce__(self):
        return (EncodedImage, (self.data, self.index, self.key))

    def __repr__(self) -> str:
        return f"EncodedImage({self.data.numel()} bytes, index={self.index}, key={self.key!r})"


def encoded_image(raw: bytes | bytearray | memoryview, index: int | None = None,
                  key: str | None = None) -> EncodedImage:
    return EncodedImage(_byte_tensor(raw), index, key)


def collate_encoded(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], Any]:
    """``collate_fn`` for ``decode_device="cuda"`` datasets: ``(list of EncodedImage, labels)``.
    (The default collate would try to stack byte strings of different lengths.)"""
    from torch.utils.data import default_collate

    images = [sample[0] for sample in batch]
    return images, default_collate([sample[1] for sample in batch])


def decode_batch(encoded: Sequence[Any], device: str | Any = "cuda", transform: Callable[[Any], Any] | None = None,
                 *, keys: Sequence[str] | None = None) -> Any:
    """Main-process half of the GPU path: decode a batch of encoded images on ``device`` and
    apply ``transform`` there.

    ``encoded``: :class:`EncodedImage` items (from :func:`collate_encoded`) or 1-D uint8 tensors.
    JPEGs go to ``decode_jpeg(list, device=device)`` in one call (nvJPEG batch decode on CUDA);
    other formats, or a batch nvJPEG refuses, are decoded on the CPU (``"torchvision"`` decoder,
    PIL fallbacks included) and moved. Returns a stacked NCHW uint8 tensor when the transformed
    images share a shape, else a list. A decode error names the sample: its dataset index and
    key (from the EncodedImage, or ``keys``).
    """
    import torch

    dev = torch.device(device)
    items = list(encoded)
    encoded = [e.data if isinstance(e, EncodedImage) else e for e in items]
    decode_jpeg, rgb = _torchvision_jpeg()
    out: list[Any] = [None] * len(encoded)
    jpeg_pos = [i for i, e in enumerate(encoded) if bool(e.numel() >= 3 and e[:3].tolist() == [0xFF, 0xD8, 0xFF])]
    if jpeg_pos:
        for i in jpeg_pos:
            size = image_size(memoryview(encoded[i].numpy()))
            if size is not None:
                _check_pixels(size)
        try:
            decoded = decode_jpeg([encoded[i] for i in jpeg_pos], mode=rgb, device=dev)
            for i, img in zip(jpeg_pos, decoded):
                out[i] = img
        except RuntimeError:
            pass  # one bad image fails the whole nvJPEG call: decode one by one below, naming the bad one
    for i, e in enumerate(encoded):
        if out[i] is None:
            raw = e.numpy().tobytes()
            try:
                out[i] = _decode_torchvision(raw).to(dev, non_blocking=True)
            except Exception as exc:
                item = items[i] if isinstance(items[i], EncodedImage) else EncodedImage(e)
                key = keys[i] if keys is not None else item.key
                index = item.index
                where = (f", dataset index {index}" if index is not None else "") + (f" ({key})" if key else "")
                exc.add_note(f"[concurrent_dataloader] decode_batch: image {i} of the batch{where}, {len(raw)} bytes")
                raise
    if transform is not None:
        out = [transform(img) for img in out]
    if out and all(o.shape == out[0].shape for o in out):
        return torch.stack(out)
    return out
