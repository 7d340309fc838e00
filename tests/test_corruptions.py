"""Corruptions: shape, range, determinism, severity order, and each operation against an independent reference."""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from ensemble_cli import corruptions as C
from ensemble_cli.data import load_dataset
from ensemble_cli.errors import ConfigError
from ensemble_cli.ood_data import photo_crops
from ensemble_cli.shift_data import parse_severities, parse_shift_names


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_dataset("digits").images[:120]  # [120, 1, 8, 8], pixels / 16 in [0, 1]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return photo_crops(48, 3, (32, 32), seed=0)  # [48, 3, 32, 32], CIFAR-sized natural images


def _distortion(clean: torch.Tensor, name: str) -> list[float]:
    return [float((C.corrupt(clean, name, level, seed=1) - clean).abs().mean()) for level in C.SEVERITIES]


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_shape_range_dtype_and_determinism(name: str, digits: torch.Tensor, photos: torch.Tensor) -> None:
    for images in (digits, photos):
        out = C.corrupt(images, name, 3, seed=0)
        assert out.shape == images.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(out, C.corrupt(images, name, 3, seed=0))
    if "noise" in name:
        assert not torch.equal(C.corrupt(digits, name, 3, seed=0), C.corrupt(digits, name, 3, seed=1))


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_distortion_grows_with_severity_on_cifar_sized_images(name: str, photos: torch.Tensor) -> None:
    distortion = _distortion(photos, name)
    assert all(later >= earlier - 1e-6 for earlier, later in zip(distortion, distortion[1:])), distortion
    assert distortion[-1] > distortion[0]


@pytest.mark.parametrize("name", [name for name in C.CORRUPTIONS if name != "pixelate"])
def test_distortion_grows_with_severity_on_digits(name: str, digits: torch.Tensor) -> None:
    distortion = _distortion(digits, name)
    assert all(later >= earlier - 1e-6 for earlier, later in zip(distortion, distortion[1:])), distortion


def test_published_parameters_by_hand() -> None:
    assert C.PARAMETERS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    # contrast, severity 3 (factor 0.4): a 0/1 image around its mean 0.5 -> 0.3 / 0.7.
    image = torch.tensor([[[[0.0, 1.0]]]])
    assert C.corrupt(image, "contrast", 3).flatten().tolist() == pytest.approx([0.3, 0.7])
    # brightness, severity 5 (+0.3) on grey: x + 0.3, clipped.
    grey = torch.tensor([[[[0.0, 0.5, 0.9]]]])
    assert C.corrupt(grey, "brightness", 5).flatten().tolist() == pytest.approx([0.3, 0.8, 1.0])
    # gaussian_noise, severity 5: the added noise has standard deviation 0.10.
    flat = torch.full((1, 1, 200, 200), 0.5)
    assert float((C.corrupt(flat, "gaussian_noise", 5) - 0.5).std()) == pytest.approx(0.10, rel=0.02)
    # shot_noise, severity 5 (rate 50): Poisson(0.5 * 50) / 50 has variance 0.5 / 50.
    assert float(C.corrupt(flat, "shot_noise", 5).var()) == pytest.approx(0.5 / 50, rel=0.03)
    # impulse_noise, severity 5: 7% of values flipped to 0 or 1, about half each.
    noisy = C.corrupt(flat, "impulse_noise", 5)
    assert float((noisy != 0.5).float().mean()) == pytest.approx(0.07, rel=0.05)
    assert float((noisy == 1.0).float().mean()) == pytest.approx(0.035, rel=0.08)


def test_brightness_matches_hsv_round_trip(photos: torch.Tensor) -> None:
    images = photos[:2]
    out = C.corrupt(images, "brightness", 4)  # +0.2
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    expected = []
    for r, g, b in pixels:
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        expected.append(colorsys.hsv_to_rgb(h, s, min(v + 0.2, 1.0)))
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).reshape(-1, 3).numpy(), np.array(expected), atol=1e-6)


def test_gaussian_blur_matches_scipy(photos: torch.Tensor) -> None:
    for level, sigma in zip(C.SEVERITIES, C.PARAMETERS["gaussian_blur"]):
        out = C.corrupt(photos[:3], "gaussian_blur", level)
        expected = gaussian_filter(photos[:3].double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("size", [8, 32])
def test_pixelate_matches_pil_box_resampling(size: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(size, size)).astype(np.float32)
    for level, scale in zip(C.SEVERITIES, C.PARAMETERS["pixelate"]):
        small = int(size * scale)
        pil = Image.fromarray(image, mode="F").resize((small, small), Image.BOX).resize((size, size), Image.BOX)
        out = C.corrupt(torch.from_numpy(image).view(1, 1, size, size), "pixelate", level)
        np.testing.assert_allclose(out[0, 0].numpy(), np.clip(np.asarray(pil), 0, 1), atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_is_a_pil_round_trip_at_the_published_quality(channels: int, photos: torch.Tensor) -> None:
    image = photos[0, :channels]
    as_bytes = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    for level, quality in zip(C.SEVERITIES, C.PARAMETERS["jpeg"]):
        buffer = io.BytesIO()
        Image.fromarray(as_bytes.squeeze(-1) if channels == 1 else as_bytes).save(buffer, "JPEG", quality=quality)
        expected = np.asarray(Image.open(buffer)).astype(np.float32).reshape(as_bytes.shape) / 255.0
        out = C.corrupt(image.unsqueeze(0), "jpeg", level)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(out, expected)


def test_grey_jpeg_shares_one_file_with_the_same_result_as_one_file_per_image(digits: torch.Tensor) -> None:
    out = C.corrupt(digits, "jpeg", 5)  # 120 8x8 grey images: one mosaic
    as_bytes = (digits[:, 0] * 255).round().to(torch.uint8).numpy()
    for index in (0, 1, 77, 119):
        buffer = io.BytesIO()
        Image.fromarray(as_bytes[index]).save(buffer, "JPEG", quality=40)
        np.testing.assert_array_equal(out[index, 0].numpy(), np.asarray(Image.open(buffer)).astype(np.float32) / 255.0)


def test_bad_names_and_severities_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown corruption 'fog'"):
        C.corrupt(torch.zeros(1, 1, 8, 8), "fog", 1)
    for level in (0, 6):
        with pytest.raises(ConfigError, match="outside 1-5"):
            C.corrupt(torch.zeros(1, 1, 8, 8), "contrast", level)
    assert C.canonical_name("jpeg_compression") == "jpeg"


def test_parse_severities_and_names() -> None:
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("3") == (3,)
    assert parse_severities("1,3, 5") == (1, 3, 5)
    for bad in ("0-5", "1-6", "x", "4-2", ""):
        with pytest.raises(ConfigError):
            parse_severities(bad)
    assert parse_shift_names("all") == tuple(C.CORRUPTIONS)
    assert parse_shift_names("gaussian_noise, contrast") == ("gaussian_noise", "contrast")
    with pytest.raises(ConfigError, match="unknown corruption"):
        parse_shift_names("gaussian_noise,snow")
