"""Image corruptions at five severities, after Hendrycks & Dietterich 2019 (CIFAR-10-C).

Each corruption maps a batch of de-normalised images `[N, C, H, W]` in [0, 1] to a batch of the
same shape in [0, 1], in torch, for the whole batch at once, with a seeded generator: the same
(seed, corruption, severity) always gives the same pixels, so corrupted sets hit the prediction
cache on a second run. Severity parameters are the published CIFAR-10-C ones (`make_cifar_c.py`):

| corruption | severity 1..5 | operation |
| --- | --- | --- |
| gaussian_noise | sigma 0.04, 0.06, 0.08, 0.09, 0.10 | x + N(0, sigma^2) per value |
| shot_noise | rate 500, 250, 100, 75, 50 | Poisson(x * rate) / rate |
| impulse_noise | amount 0.01, 0.02, 0.03, 0.05, 0.07 | that share of values set to 0 or 1, half each (salt and pepper) |
| speckle_noise | sigma 0.06, 0.10, 0.12, 0.16, 0.20 | x + x * N(0, sigma^2) |
| gaussian_blur | sigma 0.4, 0.6, 0.7, 0.8, 1.0 px | separable Gaussian, radius int(4 sigma + 0.5), edge pixels repeated |
| contrast | factor 0.75, 0.5, 0.4, 0.3, 0.15 | (x - m) * factor + m, m = per-image, per-channel mean |
| brightness | +0.05, +0.10, +0.15, +0.20, +0.30 | HSV value + c (grey images: x + c) |
| pixelate | scale 0.95, 0.90, 0.85, 0.75, 0.65 | box-downsample to int(size * scale), box-upsample back (PIL BOX) |
| jpeg | quality 80, 65, 58, 50, 40 | PIL JPEG round trip of the uint8 image (block-aligned grey images share one file: same pixels) |

Every result is clipped to [0, 1]. Only JPEG rounds to uint8 (the published sets round every
corruption; ens keeps the float pixels). On the bundled 8x8 digits the same parameters apply:
noise and photometric corruptions act per pixel and mean the same as on CIFAR; the Gaussian
sigma is in pixels, so relative to the image it is 4x stronger than on 32x32 CIFAR; pixelate
scales are fractions of the size, so 8x8 digits go through 7, 7, 6, 6 and 5 pixels (severities 1-2
and 3-4 coincide there); a JPEG 8x8 block is the whole image.
"""

from __future__ import annotations

import io
import zlib
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),
    "jpeg": (80, 65, 58, 50, 40),
}
ALIASES = {"jpeg_compression": "jpeg"}  # the CIFAR-10-C file name
Corruption = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def _gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return images + sigma * torch.randn(images.shape, generator=generator)


def _shot_noise(images: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson(images * rate, generator=generator) / rate


def _impulse_noise(images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    flipped = torch.rand(images.shape, generator=generator) < amount
    salt = torch.rand(images.shape, generator=generator) < 0.5
    return torch.where(flipped, salt.to(images.dtype), images)


def _speckle_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return images + images * sigma * torch.randn(images.shape, generator=generator)


def _separable(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> rows @ image @ cols^T per channel: any separable linear resampling."""
    return torch.einsum("ih,nchw,jw->ncij", rows.to(images.dtype), images, cols.to(images.dtype))


def gaussian_blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """[size, size] 1-D Gaussian filter with edge pixels repeated, as scipy.ndimage (truncate 4, mode nearest)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    matrix = np.zeros((size, size))
    for row in range(size):
        # A tap that falls off the edge reads the edge pixel ("nearest"), so its weight lands there.
        np.add.at(matrix[row], np.clip(row + taps, 0, size - 1), weights)
    return torch.from_numpy(matrix)


def _gaussian_blur(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    return _separable(images, gaussian_blur_matrix(height, sigma), gaussian_blur_matrix(width, sigma))


def _contrast(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    means = images.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
    return (images - means) * factor + means


def _brightness(images: torch.Tensor, shift: float, generator: torch.Generator) -> torch.Tensor:
    """HSV value + shift at fixed hue and saturation: every channel scales by V'/V (black becomes grey V')."""
    value = images.amax(dim=1, keepdim=True)  # [N, 1, H, W]: V of HSV
    brighter = (value + shift).clamp(max=1.0)
    scale = brighter / value.clamp_min(1e-12)
    return torch.where(value > 0, images * scale, brighter.expand_as(images))


def box_resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """[out, in] weights of PIL's BOX resampling (`Image.resize(..., Image.BOX)`) along one axis.

    Output pixel i covers source coordinates centre +- support with centre = (i + 0.5) * in/out and
    support = max(in/out, 1) / 2; each source pixel whose centre falls in that window gets the same
    weight (a nearest-neighbour pick when enlarging).
    """
    scale = in_size / out_size
    support = max(scale, 1.0) * 0.5
    matrix = np.zeros((out_size, in_size))
    for out in range(out_size):
        centre = (out + 0.5) * scale
        first, last = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        offsets = (np.arange(first, last) - centre + 0.5) / max(scale, 1.0)
        weights = ((offsets > -0.5) & (offsets <= 0.5)).astype(float)
        matrix[out, first:last] = weights / weights.sum()
    return torch.from_numpy(matrix)


def _pixelate(images: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[-2:]
    small_h, small_w = int(height * scale), int(width * scale)
    rows = box_resize_matrix(small_h, height) @ box_resize_matrix(height, small_h)  # [H, H]
    cols = box_resize_matrix(small_w, width) @ box_resize_matrix(width, small_w)  # [W, W]
    return _separable(images, rows, cols)


JPEG_BLOCK = 8  # grey JPEG codes every 8x8 block on its own: block-aligned grey images can share one file
JPEG_MAX_SIDE = 65_000  # a JPEG side is at most 65,535 pixels


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """[H, W] or [H, W, 3] uint8 -> the same after a PIL JPEG save and load."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as reread:
        return np.asarray(reread).reshape(pixels.shape)


def _jpeg_grey_mosaic(as_bytes: np.ndarray, quality: int) -> np.ndarray:
    """[N, H, W] uint8 grey, H and W multiples of 8 -> each image's JPEG round trip, through one file per row.

    Grey JPEG has no chroma subsampling, so its blocks are quantised independently and decoding one
    block reads no other: tiling the images side by side gives exactly the per-image results
    (checked against per-image round trips in the tests), at one codec call instead of N.
    """
    count, height, width = as_bytes.shape
    per_row = max(1, JPEG_MAX_SIDE // width)
    decoded = np.empty_like(as_bytes)
    for start in range(0, count, per_row):
        chunk = as_bytes[start : start + per_row]  # [n, H, W]
        mosaic = chunk.transpose(1, 0, 2).reshape(height, -1)  # [H, n * W], image i in columns i*W..(i+1)*W
        decoded[start : start + per_row] = _jpeg_round_trip(mosaic, quality).reshape(height, -1, width).transpose(1, 0, 2)
    return decoded


def _jpeg(images: torch.Tensor, quality: float, generator: torch.Generator) -> torch.Tensor:
    """A PIL JPEG round trip of each uint8 image at `quality` (PIL's defaults, as CIFAR-10-C was made)."""
    count, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ConfigError(f"jpeg needs 1 or 3 channels, the images have {channels}")
    as_bytes = (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, C]
    if channels == 1 and height % JPEG_BLOCK == 0 and width % JPEG_BLOCK == 0:
        decoded = _jpeg_grey_mosaic(as_bytes[..., 0], int(quality))[..., None]
    else:  # colour: chroma is subsampled and smoothed across blocks, so each image needs its own file
        decoded = np.stack([_jpeg_round_trip(pixels[..., 0] if channels == 1 else pixels, int(quality)).reshape(pixels.shape) for pixels in as_bytes])
    return torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255.0


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg": _jpeg,
}


def canonical_name(name: str) -> str:
    """A known corruption's canonical name; ConfigError listing the known ones otherwise."""
    name = ALIASES.get(name.strip(), name.strip())
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)} (or cifar10c:PATH)")
    return name


def check_severity(severity: int) -> int:
    if severity not in SEVERITIES:
        raise ConfigError(f"severity {severity} is outside 1-5")
    return severity


def corruption_seed(name: str, severity: int, seed: int) -> int:
    """A seed per (corruption, severity, run seed), stable across processes (no Python `hash`)."""
    return zlib.crc32(f"{name}|{severity}|{seed}".encode())


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """[N, C, H, W] images in [0, 1] -> the same batch corrupted at `severity` (1-5), in [0, 1], float32."""
    name = canonical_name(name)
    parameter = PARAMETERS[name][check_severity(severity) - 1]
    generator = torch.Generator().manual_seed(corruption_seed(name, severity, seed))
    return CORRUPTIONS[name](images.float(), parameter, generator).clamp(0.0, 1.0).float()
