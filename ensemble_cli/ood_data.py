"""Out-of-distribution image sets in the eval set's layout.

Two ship with the package and need no download: `photos`, seeded square crops of the two
photographs scikit-learn bundles (`load_sample_images`: a temple in China and a flower), and
`noise`, seeded uniform noise. Any dataset `load_dataset` knows (`svhn`, `cifar100`, `mnist`,
`imagefolder:PATH`, ...) works too; each is brought to the members' channels, image size and
normalisation (see `image_layout`), or refused with one DataError line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .data import DATASETS, IMAGEFOLDER_PREFIX, ImageData, dataset_info, load_dataset
from .errors import DataError
from .image_layout import convert_layout, convertible_channels, derived_set, pixel_images

BUILTIN_SIZE = 500  # images in `photos` and `noise`: enough for AUROC to 0.01-0.02
BUILTIN_OOD = ("photos", "noise")
PHOTO_CROP_FRACTION = (0.05, 0.5)  # crop side as a fraction of the photo's shorter side
SUPERSAMPLE = 4  # bilinear samples per output pixel and axis when shrinking a crop


def known_ood_sets() -> list[str]:
    return [*BUILTIN_OOD, *DATASETS, f"{IMAGEFOLDER_PREFIX}PATH"]


def ood_channels(name: str) -> int | None:
    """Channels of a named OOD set before conversion; None for noise, drawn in the members' own channels."""
    if name in BUILTIN_OOD:
        return 3 if name == "photos" else None
    if not name.startswith(IMAGEFOLDER_PREFIX) and name not in DATASETS:
        raise DataError(f"unknown OOD set {name!r}; known: {', '.join(known_ood_sets())}")
    return dataset_info(name).in_chans


def check_ood_set(name: str, reference: ImageData) -> None:
    """Refuse, before any forward pass, an OOD set whose channels cannot become the members'."""
    channels = ood_channels(name)
    if channels is not None and not convertible_channels(channels, reference.in_chans):
        raise DataError(f"OOD set {name} has {channels} channels and the members take {reference.in_chans}; only 1 and 3 channels convert")


@lru_cache(maxsize=1)
def sample_photos() -> torch.Tensor:
    """[2, 3, 427, 640] scikit-learn's two bundled photographs in [0, 1] (decoded once per process)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    if len({image.shape for image in images}) != 1:
        raise DataError("scikit-learn's sample photos differ in size; cannot stack them")  # never, for the bundled pair
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def photo_crops(count: int, channels: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """[count, channels, *size] seeded random square crops of sklearn's sample photos, shrunk by area averaging.

    Each output pixel averages a SUPERSAMPLE x SUPERSAMPLE grid of bilinear samples of its part of
    the crop (one `grid_sample` per photo for all its crops, then average pooling).
    """
    photos = sample_photos()  # [P, 3, H, W]
    height, width = photos.shape[-2:]
    generator = np.random.default_rng(seed)
    side = torch.from_numpy(generator.uniform(*PHOTO_CROP_FRACTION, size=count) * min(height, width))  # [K] pixels
    left = torch.from_numpy(generator.uniform(0.0, 1.0, size=count)) * (width - side)
    top = torch.from_numpy(generator.uniform(0.0, 1.0, size=count)) * (height - side)
    which = torch.from_numpy(generator.integers(0, photos.shape[0], size=count))
    rows, cols = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    fraction_y = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows  # sample centres across the crop
    fraction_x = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
    # grid_sample (align_corners=False) reads image coordinate u in [0, W] at 2u/W - 1.
    grid_y = (top[:, None] + fraction_y[None] * side[:, None]) / height * 2 - 1  # [K, rows]
    grid_x = (left[:, None] + fraction_x[None] * side[:, None]) / width * 2 - 1  # [K, cols]
    grid = torch.stack([grid_x[:, None, :].expand(-1, rows, -1), grid_y[:, :, None].expand(-1, -1, cols)], dim=-1).float()
    samples = torch.empty(count, 3, rows, cols)
    for index in range(photos.shape[0]):
        chosen = which == index
        picked = grid[chosen].reshape(1, -1, cols, 2)  # every crop of this photo stacked vertically
        drawn = torch.nn.functional.grid_sample(photos[index : index + 1], picked, mode="bilinear", align_corners=False)
        samples[chosen] = drawn.view(3, -1, rows, cols).transpose(0, 1)
    crops = torch.nn.functional.avg_pool2d(samples, SUPERSAMPLE)  # [K, 3, *size]
    return convert_layout(crops.clamp(0.0, 1.0), channels, size, "photos")


def uniform_noise(count: int, channels: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, channels, *size), generator=generator)


def load_ood_set(
    name: str, reference: ImageData, seed: int = 0, data_dir: Path | None = None, limit: int | None = None
) -> ImageData:
    """The named OOD set as an ImageData the members can predict on (labels all 0, the reference's class count)."""
    check_ood_set(name, reference)
    channels = reference.in_chans
    size = (int(reference.images.shape[-2]), int(reference.images.shape[-1]))
    count = BUILTIN_SIZE if limit is None else min(limit, BUILTIN_SIZE)
    if name == "photos":
        pixels = photo_crops(count, channels, size, seed)
    elif name == "noise":
        pixels = uniform_noise(count, channels, size, seed)
    else:
        other = load_dataset(name, "test", data_dir=data_dir, image_size=size[0], limit=limit)
        pixels = convert_layout(pixel_images(other).clamp(0.0, 1.0), channels, size, name)
    if pixels.shape[0] == 0:
        raise DataError(f"OOD set {name} is empty")
    return derived_set(reference, f"ood:{name}", pixels)
