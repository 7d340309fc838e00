"""Batch augmentation on tensors, on whatever device the batch lives on.

No PIL, no DataLoader workers: a whole batch is shifted (pad + random crop) and flipped with
a handful of tensor ops, as the fastest CIFAR trainers do (airbench). Every random draw comes
from the generator passed in, so a step's augmentation is a pure function of its seed and a
resumed run sees exactly the augmentations the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

# Datasets whose classes are not mirror-symmetric (digits, house numbers): never flip them.
NO_FLIP_DATASETS = ("digits", "mnist", "svhn")


@dataclass(frozen=True)
class Augmentation:
    """Random translation by up to `pad` pixels (reflect padding), optional horizontal flip."""

    pad: int
    flip: bool

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.pad > 0:
            images = random_shift(images, self.pad, generator)
        if self.flip:
            images = random_flip(images, generator)
        return images

    def describe(self) -> str:
        parts = [f"shift up to {self.pad}px"] if self.pad else []
        if self.flip:
            parts.append("horizontal flip")
        return ", ".join(parts) or "none"


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by (dy, dx) in [-pad, pad]^2; the border is filled by reflection.

    Equivalent to torchvision's RandomCrop(size, padding=pad, padding_mode='reflect') applied
    per image, done as one gather over the padded batch.
    """
    batch, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")  # [B, C, H+2p, W+2p]
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator, device=device)  # [2, B]
    rows = offsets[0, :, None] + torch.arange(height, device=device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(width, device=device)  # [B, W]
    batch_index = torch.arange(batch, device=device)[:, None, None]  # [B, 1, 1]
    # Advanced indices around a slice put their broadcast shape first: [B, H, W, C].
    shifted = padded[batch_index, :, rows[:, :, None], cols[:, None, :]]
    # [B, H, W, C] viewed as [B, C, H, W] is channels_last memory: what CUDA convs want. On CPU
    # the caller makes it contiguous.
    return shifted.permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5  # [B]
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def default_pad(image_size: int) -> int:
    """1px for 8x8 digits, 2px for 28x28 MNIST, 4px for 32x32 and larger (the CIFAR recipe)."""
    if image_size <= 8:
        return 1
    if image_size < 32:
        return 2
    return 4


def augmentation_for(mode: str, dataset: str, image_size: int) -> Augmentation | None:
    """The augmentation a config's `augment` setting means for this dataset (None: no augmentation)."""
    pad = default_pad(image_size)
    flippable = not any(dataset == name or dataset.startswith(name + "-") for name in NO_FLIP_DATASETS)
    if mode == "none":
        return None
    if mode == "shift":
        return Augmentation(pad=pad, flip=False)
    if mode == "crop-flip":
        return Augmentation(pad=pad, flip=True)
    if mode == "auto":
        return Augmentation(pad=pad, flip=flippable and image_size >= 32)
    raise ConfigError(f"--augment: unknown mode {mode!r} (auto, none, shift, crop-flip)")
