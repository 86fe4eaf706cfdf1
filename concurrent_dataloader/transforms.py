"""Fast ImageNet-style transforms on ``uint8`` CHW tensors (the ``decoder="torchvision"`` output).

Both transforms crop first and then resize only the crop (one fused crop-and-resize: the
pixels outside the crop are never resampled), and return ``uint8``: a uint8 batch is a quarter
of the bytes of a float32 one through collate, shared memory and pinning. Convert and
normalise on the training device with :func:`normalize`, after ``.to(device, non_blocking=True)``.

They also run on CUDA tensors (the GPU path, see docs/decode.md); there the resize goes
through float32 because not every torch build has a uint8 antialiased resize on CUDA.

Measured costs and the DCT-domain (``PIL.Image.draft``) experiment: docs/decode.md.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import ConfigError

__all__ = ["train_transform", "eval_transform", "normalize", "RandomResizedCropFlip", "ResizeCenterCrop",
           "random_resized_crop_params", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_chw_uint8(img: Any) -> Any:
    import torch

    if not isinstance(img, torch.Tensor):  # a PIL image (decoder="pil"): accept it, at the cost of a copy
        from .decoding import pil_to_tensor

        img = pil_to_tensor(img)
    if img.dtype != torch.uint8 or img.ndim != 3:
        raise TypeError(f"expected a uint8 CHW tensor (decoder='torchvision'), got {img.dtype} of shape "
                        f"{tuple(img.shape)}")
    return img


def _resize(crop: Any, out_h: int, out_w: int, via_float: bool | None = None) -> Any:
    """Bilinear, antialiased (as torchvision's tensor ``Resize``), uint8 -> uint8. ``via_float``
    (default: off the CPU) resizes in float32 and rounds."""
    import torch
    import torch.nn.functional as F

    x = crop.unsqueeze(0)
    if not (crop.device.type != "cpu" if via_float is None else via_float):
        # uint8 has its own vectorised kernel on CPU, which works in channels-last (HWC) order, as
        # decode_jpeg's output already is: 0.19 ms for a 300x370 crop -> 224x224 instead of 0.48
        # from planar input. The result goes back to planar (0.06 ms), which batches 7x faster.
        y = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(out_h, out_w), mode="bilinear",
                          antialias=True, align_corners=False)[0]
        return y.contiguous()
    y = F.interpolate(x.float(), size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def random_resized_crop_params(height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
                               ratio: Sequence[float] = (3 / 4, 4 / 3), generator: Any = None,
                               draws: Sequence[float] | None = None) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` with the distribution of torchvision's
    ``RandomResizedCrop.get_params``: up to 10 tries of an area fraction uniform in ``scale`` and
    a log-uniform aspect ratio in ``ratio``, a uniform position, then a centre crop clamped to
    ``ratio``. All 40 uniforms come from one ``torch.rand`` call (``draws`` may supply them),
    i.e. torch's generator, which the DataLoader seeds per worker.
    (tests/core/test_transforms.py checks the distribution against torchvision's.)
    """
    import torch

    if draws is None:
        draws = torch.rand(40, generator=generator).tolist()
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(10):
        u_area, u_ratio, u_top, u_left = draws[4 * k:4 * k + 4]
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCropFlip:
    """``RandomResizedCrop(size, scale, ratio)`` + ``RandomHorizontalFlip(p)`` on a uint8 CHW tensor.

    Same crop distribution as torchvision's (see :func:`random_resized_crop_params`), bilinear
    antialiased resize of the crop only, flip applied to the small output. Picklable.
    """

    def __init__(self, size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> None:
        if int(size) < 1:
            raise ConfigError(f"size must be >= 1, got {size!r}")
        if not (0 < scale[0] <= scale[1] <= 1.0 and 0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got "
                              f"scale={tuple(scale)}, ratio={tuple(ratio)}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)

    def __call__(self, img: Any) -> Any:
        import torch

        img = _as_chw_uint8(img)
        draws = torch.rand(41).tolist()
        top, left, h, w = random_resized_crop_params(img.shape[-2], img.shape[-1], self.scale, self.ratio,
                                                     draws=draws[:40])
        out = _resize(img[:, top:top + h, left:left + w], self.size, self.size)
        if draws[40] < self.flip_p:
            out = out.flip(-1)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p})"


class ResizeCenterCrop:
    """``Resize(resize)`` (shorter side) + ``CenterCrop(size)`` on a uint8 CHW tensor.

    Fused (default): the centre crop is mapped back to source pixels, rounded to whole pixels,
    and only that region is resized to ``size x size``. The rounding shifts the sampling grid by
    up to half a source pixel, so on fine texture the result differs from the PIL recipe
    (``PIL decode -> Resize(256) -> CenterCrop(224) -> PILToTensor``): mean absolute difference
    per pixel channel, 0-255 scale, over 8 image shapes from 256x256 to 900x1200: mean 0.38
    (worst shape 0.78) on smooth photo-like images, mean 2.0 (worst 5.5) on noisy texture like
    the benchmark's synthetic JPEGs. tests/core/test_transforms.py asserts 0.5/1.0 and 2.5/6.0.

    ``exact=True`` resizes the whole image and then crops, as torchvision does: mean absolute
    difference from the PIL recipe 0.003 (worst shape 0.009; asserted <= 0.01/0.02): libjpeg-turbo
    decodes identically and torch's antialiased bilinear resize reproduces PIL's. It costs ~0.15 ms
    more per 500x375 image (about 0.44 vs 0.29 ms for the transform, one core; docs/decode.md).
    """

    def __init__(self, size: int = 224, resize: int = 256, exact: bool = False) -> None:
        if int(size) < 1 or int(resize) < int(size):
            raise ConfigError(f"need 1 <= size <= resize, got size={size!r}, resize={resize!r}")
        self.size = int(size)
        self.resize = int(resize)
        self.exact = bool(exact)

    def _geometry(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Resized ``(rh, rw)`` and the crop's ``(top, left)`` in resized pixels, as torchvision's
        ``Resize(int)`` (long side truncated) and ``CenterCrop`` (offsets rounded) compute them."""
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.resize * long / short)
        rh, rw = (self.resize, new_long) if height <= width else (new_long, self.resize)
        return rh, rw, int(round((rh - self.size) / 2.0)), int(round((rw - self.size) / 2.0))

    def source_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` in source pixels of the region that ends up in the output."""
        rh, rw, top_r, left_r = self._geometry(height, width)
        sy, sx = height / rh, width / rw
        h = min(height, max(1, int(round(self.size * sy))))
        w = min(width, max(1, int(round(self.size * sx))))
        top = min(max(0, int(round(top_r * sy))), height - h)
        left = min(max(0, int(round(left_r * sx))), width - w)
        return top, left, h, w

    def __call__(self, img: Any) -> Any:
        img = _as_chw_uint8(img)
        if self.exact:
            rh, rw, top, left = self._geometry(img.shape[-2], img.shape[-1])
            return _resize(img, rh, rw)[:, top:top + self.size, left:left + self.size].contiguous()
        top, left, h, w = self.source_box(img.shape[-2], img.shape[-1])
        return _resize(img[:, top:top + h, left:left + w], self.size, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, resize={self.resize}, exact={self.exact})"


def train_transform(size: int = 224) -> RandomResizedCropFlip:
    """RandomResizedCrop(size) + horizontal flip, uint8 CHW -> uint8 ``3 x size x size``."""
    return RandomResizedCropFlip(size)


def eval_transform(size: int = 224, resize: int = 256, exact: bool = False) -> ResizeCenterCrop:
    """Resize(resize) + CenterCrop(size), uint8 CHW -> uint8 ``3 x size x size``. Fused by default:
    mean absolute difference from the PIL recipe 0.38 per pixel channel on smooth photo-like
    images, 2.0 on noisy texture (sub-pixel grid shift); ``exact=True`` matches PIL to 0.003 at
    ~0.15 ms more per image. Details: :class:`ResizeCenterCrop`."""
    return ResizeCenterCrop(size, resize, exact)


def normalize(batch: Any, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              dtype: Any = None) -> Any:
    """uint8 NCHW (or CHW) batch -> float ``(x / 255 - mean) / std`` on the batch's own device.

    Call it after ``batch.to(device, non_blocking=True)``: the copy moves uint8 (4x fewer bytes)
    and the arithmetic runs where the model is. ``mean``/``std`` are on the 0-1 scale, as
    torchvision's ``Normalize`` after ``ToTensor``. ``dtype`` defaults to float32.
    """
    import torch

    dtype = dtype or torch.float32
    if batch.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 batch, got {batch.dtype}")
    if batch.ndim not in (3, 4) or batch.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(f"normalize: batch of shape {tuple(batch.shape)} vs {len(mean)} means, {len(std)} stds")
    m = torch.tensor(mean, dtype=dtype, device=batch.device).view(-1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=dtype, device=batch.device).view(-1, 1, 1) * 255.0
    return batch.to(dtype).sub_(m).div_(s)
