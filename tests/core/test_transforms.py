"""concurrent_dataloader.transforms: crop distribution vs torchvision's RandomResizedCrop.get_params
(two-sample KS / binomial tests, fixed seeds: deterministic), eval parity with the PIL recipe,
normalize, the float (GPU) resize path, pickling."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF2
from PIL import Image
from scipy import stats

from concurrent_dataloader.decoding import decode_image
from concurrent_dataloader.errors import ConfigError
from concurrent_dataloader.transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomResizedCropFlip, _resize,
                                              eval_transform, normalize, random_resized_crop_params,
                                              train_transform)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

N = 4000


def _samples(h: int, w: int, ours: bool, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    img = torch.empty(3, h, w, dtype=torch.uint8)
    out = []
    for _ in range(N):
        if ours:
            p = random_resized_crop_params(h, w)
        else:
            p = T.RandomResizedCrop.get_params(img, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        out.append(p)
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("h,w", [(375, 500), (500, 375), (100, 100), (40, 400)])  # 40x400: many fallbacks
def test_crop_parameters_follow_torchvision_distribution(h, w):
    ours, ref = _samples(h, w, True, seed=1), _samples(h, w, False, seed=2)
    features = {
        "area": lambda p: p[:, 2] * p[:, 3] / (h * w),
        "aspect": lambda p: np.log(p[:, 3] / p[:, 2]),
        "top": lambda p: p[:, 0] / h,
        "left": lambda p: p[:, 1] / w,
        "center_y": lambda p: (p[:, 0] + p[:, 2] / 2) / h,
    }
    for name, f in features.items():
        a, b = f(ours), f(ref)
        assert stats.ks_2samp(a, b).pvalue > 1e-3, f"{name} differs at {h}x{w}"
    # every crop inside the image and non-empty
    assert (ours[:, 2] >= 1).all() and (ours[:, 3] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    # the fallback (centre crop) happens as often as in torchvision
    fb = lambda p: np.mean((p[:, 0] == (h - p[:, 2]) // 2) & (p[:, 1] == (w - p[:, 3]) // 2)  # noqa: E731
                           & ((p[:, 2] == h) | (p[:, 3] == w)))
    assert abs(fb(ours) - fb(ref)) < 0.03


def test_a_test_that_can_fail_detects_a_wrong_distribution():
    """The KS check above is not vacuous: a crop of scale (0.2, 1) is told apart."""
    torch.manual_seed(3)
    wrong = np.array([random_resized_crop_params(375, 500, scale=(0.2, 1.0)) for _ in range(N)], dtype=float)
    ref = _samples(375, 500, False, seed=2)
    area = lambda p: p[:, 2] * p[:, 3]  # noqa: E731
    assert stats.ks_2samp(area(wrong), area(ref)).pvalue < 1e-6


def test_train_transform_is_crop_resize_flip_of_those_params():
    img = decode_image(_jpeg(_smooth(120, 160)), "torchvision")
    tt = train_transform(32)
    flips = 0
    for seed in range(200):
        torch.manual_seed(seed)
        out = tt(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        torch.manual_seed(seed)
        draws = torch.rand(41).tolist()
        top, left, h, w = random_resized_crop_params(120, 160, draws=draws[:40])
        want = TF2.resized_crop(img, top, left, h, w, [32, 32], antialias=True)
        if draws[40] < 0.5:
            want = want.flip(-1)
            flips += 1
        assert torch.equal(out, want)
    assert stats.binomtest(flips, 200, 0.5).pvalue > 1e-3


def test_train_transform_is_deterministic_under_a_seed_and_picklable():
    img = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    tt = pickle.loads(pickle.dumps(train_transform(24)))
    torch.manual_seed(7)
    a = tt(img)
    torch.manual_seed(7)
    assert torch.equal(a, RandomResizedCropFlip(24)(img))
    with pytest.raises(TypeError, match="uint8 CHW"):
        tt(img.float())
    with pytest.raises(ConfigError):
        RandomResizedCropFlip(24, scale=(0.5, 0.1))
    with pytest.raises(ConfigError):
        eval_transform(224, 200)


# ------------------------------------------------------------------ eval parity with the PIL recipe
def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like: smooth shading, edges, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([128 + 80 * np.sin(x / 37.0 + y / 53.0), 128 + 70 * np.cos(y / 41.0), 90 + 0.3 * x], -1)
    a[(x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 4) ** 2] = (200, 60, 40)
    return np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8)


def _noisy(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Like benchmarking.make_synthetic's painter: texture plus strong per-pixel noise (~100 KB
    JPEGs at 500x375)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.stack([128 + 70 * np.sin(x / 23.0 + 1.0) + 30 * np.cos(y / 17.0),
                  128 + 70 * np.sin(y / 29.0 + 2.0) + 30 * np.sin((x - y) / 41.0),
                  128 + 60 * np.cos((x + y) / 31.0)], -1)
    return np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


SHAPES = [(375, 500), (500, 375), (333, 500), (256, 256), (480, 640), (300, 300), (257, 400), (900, 1200)]
PIL_RECIPE = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])


def _mads(kind, exact: bool) -> list[float]:
    et = eval_transform(224, 256, exact=exact)
    out = []
    for i, (h, w) in enumerate(SHAPES):
        raw = _jpeg(kind(h, w, i))
        ref = PIL_RECIPE(decode_image(raw, "pil"))
        got = et(decode_image(raw, "torchvision"))
        assert got.shape == ref.shape == (3, 224, 224) and got.dtype == torch.uint8
        out.append((got.int() - ref.int()).abs().float().mean().item())
    return out


# The bounds stated in ResizeCenterCrop's docstring (mean absolute difference per pixel channel).
@pytest.mark.parametrize("kind,exact,mean_bound,max_bound", [
    (_smooth, False, 0.5, 1.0),
    (_noisy, False, 2.5, 6.0),
    (_smooth, True, 0.01, 0.02),
    (_noisy, True, 0.01, 0.02),
])
def test_eval_transform_matches_pil_recipe(kind, exact, mean_bound, max_bound):
    mads = _mads(kind, exact)
    print(f"{kind.__name__} exact={exact}: mean {np.mean(mads):.3f} max {np.max(mads):.3f} per shape {mads}")
    assert np.mean(mads) <= mean_bound and np.max(mads) <= max_bound, mads


# ------------------------------------------------------------------ normalize and the GPU-side resize
def test_normalize_matches_to_tensor_normalize():
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    got = normalize(batch)
    want = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(batch.float() / 255)
    assert got.dtype == torch.float32 and got.device == batch.device
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert normalize(batch[0], dtype=torch.float64).dtype == torch.float64
    assert batch.dtype == torch.uint8  # input untouched
    with pytest.raises(TypeError):
        normalize(batch.float())
    with pytest.raises(ValueError):
        normalize(batch[:, :2])


def test_float_resize_path_agrees_with_uint8_path():
    img = decode_image(_jpeg(_noisy(90, 120)), "torchvision")
    a = _resize(img[:, 5:80, 7:100], 40, 48, via_float=False)
    b = _resize(img[:, 5:80, 7:100], 40, 48, via_float=True)
    assert a.dtype == b.dtype == torch.uint8
    assert (a.int() - b.int()).abs().max() <= 1
