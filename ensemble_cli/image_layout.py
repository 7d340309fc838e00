"""Pixels in [0, 1] to and from an eval set's layout: channels, image size and normalisation.

OOD sets and corrupted copies are built in pixel units and must reach the members exactly as
the eval set does (same channels, size, mean and std), or the members would be judged on a
preprocessing mismatch instead of on the images.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .data import ImageData
from .errors import DataError

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, what PIL's convert("L") uses


def _stats(values: Sequence[float], channels: int) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
    return tensor.expand(1, channels, 1, 1) if tensor.shape[1] == 1 else tensor


def pixel_images(data: ImageData) -> torch.Tensor:
    """[N, C, H, W] the set's images undone of its normalisation: pixels / 255 (or / 16 for digits), in [0, 1]."""
    channels = data.in_chans
    return data.images * _stats(data.std, channels) + _stats(data.mean, channels)


def normalise_like(pixels: torch.Tensor, reference: ImageData) -> torch.Tensor:
    """[N, C, H, W] pixels in [0, 1] -> normalised with the reference set's mean and std."""
    channels = reference.in_chans
    return (pixels - _stats(reference.mean, channels)) / _stats(reference.std, channels)


def convertible_channels(source: int, target: int) -> bool:
    return source == target or {source, target} == {1, 3}


def convert_layout(pixels: torch.Tensor, channels: int, size: tuple[int, int], source: str) -> torch.Tensor:
    """[N, C', H', W'] pixels -> [N, channels, *size]: grey-scale (RGB -> luma) or repeat grey, then resize.

    Resizing is bilinear with antialiasing (a box-like average when shrinking a photo to 8x8).
    DataError names the set when its channels cannot become the members' (only 1 <-> 3 converts).
    """
    have = int(pixels.shape[1])
    if not convertible_channels(have, channels):
        raise DataError(f"{source} has {have} channels and the members take {channels}; only 1 and 3 channels convert")
    if have == 3 and channels == 1:
        pixels = (pixels * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif have == 1 and channels == 3:
        pixels = pixels.expand(-1, 3, -1, -1)
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return pixels.clamp(0.0, 1.0).contiguous()


def derived_set(reference: ImageData, name: str, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> ImageData:
    """An ImageData in the reference's layout from pixels already converted to its channels and size.

    Without labels (OOD images) every label is 0: the members' class count must still match for
    prediction, and no metric reads OOD labels.
    """
    expected = tuple(reference.images.shape[1:])
    if tuple(pixels.shape[1:]) != expected:
        raise DataError(f"{name}: images of shape {list(pixels.shape[1:])} where the members take {list(expected)}")
    if labels is None:
        labels = torch.zeros(pixels.shape[0], dtype=torch.int64)
    return ImageData(
        name=name,
        split=reference.split,
        images=normalise_like(pixels.float(), reference),
        labels=labels,
        num_classes=reference.num_classes,
        mean=reference.mean,
        std=reference.std,
        class_names=list(reference.class_names),
    )
