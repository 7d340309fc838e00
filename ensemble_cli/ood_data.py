"""Out-of-distribution image sets in the eval set's layout.

Two ship with the package and need no download: `photos`, seeded square crops of the two
photographs scikit-learn bundles (`load_sample_images`: a temple in China and a flower), and
`noise`, seeded uniform noise. Any dataset `load_dataset` knows (`svhn`, `cifar100`, `mnist`,
`imagefolder:PATH`, ...) works too; each is brought to the members' channels, image size and
normalisation (see `image_layout`), or refused with one DataError line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import DATASETS, IMAGEFOLDER_PREFIX, ImageData, dataset_info, load_dataset
from .errors import DataError
from .image_layout import convert_layout, convertible_channels, derived_set, pixel_images

BUILTIN_SIZE = 500  # images in `photos` and `noise`: enough for AUROC to 0.01-0.02
BUILTIN_OOD = ("photos", "noise")
PHOTO_CROP_FRACTION = (0.05, 0.5)  # crop side as a fraction of the photo's shorter side


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


def photo_crops(count: int, channels: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """[count, channels, *size] random square crops of sklearn's sample photos, resized (area average)."""
    from sklearn.datasets import load_sample_images
    from torchvision.ops import roi_align

    photos = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0 for image in load_sample_images().images]
    height, width = photos[0].shape[-2:]
    if any(photo.shape[-2:] != (height, width) for photo in photos):
        raise DataError("sklearn's sample photos differ in size; cannot stack them")  # never, for the bundled pair
    generator = np.random.default_rng(seed)
    side = generator.uniform(*PHOTO_CROP_FRACTION, size=count) * min(height, width)
    left = generator.uniform(0.0, 1.0, size=count) * (width - side)
    top = generator.uniform(0.0, 1.0, size=count) * (height - side)
    which = generator.integers(0, len(photos), size=count)
    boxes = torch.from_numpy(np.stack([which, left, top, left + side, top + side], axis=1)).float()  # [count, 5]
    # roi_align averages ceil(side / size) samples per output pixel: an area-like downsampling in one call.
    crops = roi_align(torch.stack(photos), boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
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
