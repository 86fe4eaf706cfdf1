"""Offline conversion: turning each input sample into what a format stores.

Fixed-size formats store uint8 pixels of one shape (:class:`FixedImageEncoder`,
:class:`DenseLabelEncoder`); flexible-size formats store encoded bytes
(:class:`FlexibleImageEncoder`). Every check raises naming the sample.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ...errors import ConfigError, DataFormatError
from .layout import LABEL_MODES, array_shape, mode_channels, normalize_shape, open_image

__all__ = [
    "ResizeAndConvert", "FixedImageEncoder", "FlexibleImageEncoder", "DenseLabelEncoder", "encode_image",
    "int_label", "LOSSY_FORMATS",
]

class ResizeAndConvert:
    """Convert an image to ``mode`` and resize it to ``shape = (height, width)``.

    The seed's version passed ``(height, width)`` to PIL, which expects ``(width, height)``,
    so non-square shapes came out transposed. Here the shape means (height, width) everywhere:
    the transform, the stored arrays and the metadata. ``size=`` is accepted as in the seed.
    """

    def __init__(self, shape: Any = None, mode: str | None = None, *, size: Any = None,
                 resample: int | None = None) -> None:
        if shape is not None and size is not None and normalize_shape(shape) != normalize_shape(size, "size"):
            raise ConfigError(f"ResizeAndConvert got both shape={shape!r} and size={size!r}; pass one")
        if shape is None:
            shape = size
        if shape is None or mode is None:
            raise ConfigError("ResizeAndConvert needs shape (height, width) and mode, e.g. ResizeAndConvert((224, 224), 'RGB')")
        self.shape = normalize_shape(shape)
        mode_channels(mode)
        self.mode = mode
        self.resample = resample

    @property
    def size(self) -> tuple[int, int]:
        return self.shape

    def __call__(self, img: Any) -> Any:
        if img.mode != self.mode:
            img = img.convert(self.mode)
        h, w = self.shape
        if img.size != (w, h):
            img = img.resize((w, h), resample=self.resample) if self.resample is not None else img.resize((w, h))
        return img

    def __repr__(self) -> str:
        return f"ResizeAndConvert(shape={self.shape}, mode={self.mode!r})"



_BYTES_TYPES = (bytes, bytearray, memoryview)


def _to_numpy(image: Any) -> Any:
    """torch tensors (CHW, as torchvision.io gives them) become HWC numpy arrays."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return image
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return arr
    return image


def _describe_array_input(image: Any) -> str:
    if hasattr(image, "size") and hasattr(image, "mode") and not isinstance(image, np.ndarray):
        w, h = image.size
        return f"a {image.mode} image of height {h}, width {w}"
    if isinstance(image, np.ndarray):
        return f"an array of shape {image.shape} and dtype {image.dtype}"
    return f"a {type(image).__name__}"


class FixedImageEncoder:
    """Turns one input image (encoded bytes, PIL image, uint8 array/tensor) into a uint8 array
    of exactly ``array_shape(shape, mode)``; with ``resize`` it applies ResizeAndConvert first,
    without it a mismatch is an error naming the sample."""

    def __init__(self, shape: tuple[int, int], mode: str, resize: bool, resample: int | None = None,
                 converter_name: str = "converter") -> None:
        self.shape = shape
        self.mode = mode
        self.resize = resize
        self.rc = ResizeAndConvert(shape, mode, resample=resample)
        self.expected = array_shape(shape, mode)
        self.converter_name = converter_name

    def __call__(self, image: Any, where: str) -> np.ndarray:
        from PIL import Image

        if isinstance(image, _BYTES_TYPES):
            image = open_image(bytes(image), where)
        image = _to_numpy(image)
        if isinstance(image, np.ndarray) and self.resize:
            if image.dtype != np.uint8:
                raise DataFormatError(f"{where}: image array has dtype {image.dtype}; uint8 is needed")
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            if self.resize:
                try:
                    image = self.rc(image)
                except Exception as exc:
                    raise DataFormatError(f"{where}: cannot convert image to {self.mode} {self.shape}: {exc}") from exc
            elif image.mode != self.mode or image.size != (self.shape[1], self.shape[0]):
                raise DataFormatError(self._mismatch(where, image))
            arr = np.asarray(image, dtype=np.uint8)
        elif isinstance(image, np.ndarray):
            arr = image
        else:
            raise DataFormatError(f"{where}: expected an image (PIL image, encoded bytes or uint8 array), got {type(image).__name__}")
        if arr.dtype != np.uint8 or arr.shape != self.expected:
            raise DataFormatError(self._mismatch(where, arr))
        return arr

    def _mismatch(self, where: str, got: Any) -> str:
        h, w = self.shape
        return (f"{where} is {_describe_array_input(got)}, but {self.converter_name}(shape={self.shape}, "
                f"im_mode={self.mode!r}) stores {self.mode} images of height {h}, width {w}: apply "
                f"ResizeAndConvert({self.shape}, {self.mode!r}) to the dataset, or pass resize=True")


LOSSY_FORMATS = {"JPEG", "WEBP"}


def encode_image(image: Any, fmt: str, quality: int | None, where: str) -> bytes:
    fmt = fmt.upper()
    kwargs: dict[str, Any] = {}
    if fmt in LOSSY_FORMATS:
        kwargs["quality"] = 95 if quality is None else int(quality)
        if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt, **kwargs)
    except Exception as exc:
        raise DataFormatError(f"{where}: cannot encode image as {fmt}: {exc}") from exc
    return buf.getvalue()


class FlexibleImageEncoder:
    """Keeps encoded bytes as they are (after checking they decode, unless ``verify=False``).

    Decoded inputs (PIL images, arrays) are encoded losslessly as PNG. Re-encoding encoded
    inputs happens only when asked for with ``reencode`` (and ``quality`` for JPEG/WEBP).
    """

    def __init__(self, reencode: str | None = None, quality: int | None = None, verify: bool = True,
                 label_map: bool = False) -> None:
        self.reencode = reencode.upper() if reencode else None
        self.quality = quality
        self.verify = verify
        self.label_map = label_map

    def __call__(self, image: Any, where: str) -> bytes:
        from PIL import Image

        if isinstance(image, _BYTES_TYPES):
            data = bytes(image)
            if self.reencode:
                return encode_image(open_image(data, where), self.reencode, self.quality, where)
            if self.verify:
                open_image(data, where)
            return data
        image = _to_numpy(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise DataFormatError(f"{where}: image array has dtype {image.dtype}; uint8 is needed")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise DataFormatError(f"{where}: expected an image (PIL image, encoded bytes or uint8 array), got {type(image).__name__}")
        # Label maps are never encoded lossily: a JPEG-ed mask has wrong classes at every edge.
        fmt = "PNG" if self.label_map or not self.reencode else self.reencode
        return encode_image(image, fmt, self.quality, where)


class DenseLabelEncoder:
    """A per-pixel label map as a uint8 array of ``array_shape(shape, label_mode)``.

    Palette ("P") maps keep their indices; resizing (with ``resize``) uses nearest neighbour
    so no new class values appear.
    """

    def __init__(self, shape: tuple[int, int], label_mode: str, resize: bool) -> None:
        self.shape = shape
        self.label_mode = label_mode
        self.resize = resize
        self.expected = array_shape(shape, label_mode, LABEL_MODES)

    def __call__(self, label: Any, where: str) -> np.ndarray:
        from PIL import Image

        if isinstance(label, _BYTES_TYPES):
            label = open_image(bytes(label), f"{where} (label map)")
        label = _to_numpy(label)
        if isinstance(label, Image.Image):
            h, w = self.shape
            if self.resize and label.size != (w, h):
                label = label.resize((w, h), resample=Image.NEAREST)
            label = np.asarray(label)
        if not isinstance(label, np.ndarray):
            raise DataFormatError(f"{where}: expected a label map (PIL image or uint8 array), got {type(label).__name__}")
        if label.dtype != np.uint8 and label.size and label.min() >= 0 and label.max() <= 255:
            label = label.astype(np.uint8)
        if label.dtype != np.uint8 or label.shape != self.expected:
            raise DataFormatError(f"{where}: label map is {_describe_array_input(label)}, but the converter stores "
                                  f"{self.label_mode} label maps of shape {self.expected}")
        return label


def int_label(label: Any, where: str) -> int:
    try:
        import torch

        if isinstance(label, torch.Tensor):
            label = label.item() if label.numel() == 1 else label
    except ImportError:  # pragma: no cover
        pass
    if isinstance(label, np.ndarray) and label.size == 1:
        label = label.reshape(()).item()
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise DataFormatError(f"{where}: label must be an integer class index, got {type(label).__name__} {label!r}; "
                              "per-pixel labels need a Dense* converter")
    return int(label)
