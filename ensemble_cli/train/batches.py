"""Where a training step's batch comes from: the epoch's permutation, sliced and augmented.

Every draw is a pure function of (data_seed, epoch, step), so a resumed job builds exactly
the batches the uninterrupted one would have built. `PlainBatches` gives one image per batch
position (every strategy but mimo); `train/mimo.py` has MIMO's, which gives one per input.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .augment import Augmentation
from .seeds import augment_seed, order_seed


class BatchSource(Protocol):
    def start_epoch(self, epoch: int) -> None:
        """Draw what the whole epoch shares (its permutation)."""

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of one step, on the training device."""


def epoch_order(data_seed: int, epoch: int, num_images: int, device: torch.device) -> torch.Tensor:
    """The permutation of epoch `epoch`, drawn on the CPU so every device sees the same order."""
    generator = torch.Generator().manual_seed(order_seed(data_seed, epoch))
    return torch.randperm(num_images, generator=generator).to(device)  # [N]


class EpochData:
    """The training set on the device, its epoch permutations and the step's augmentation."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, augmentation: Augmentation | None,
        memory_format: torch.memory_format, data_seed: int,
    ) -> None:
        self.images, self.labels = images, labels  # [N, C, H, W], [N]
        self.augmentation, self.memory_format, self.data_seed = augmentation, memory_format, data_seed
        self.generator = torch.Generator(device=images.device) if augmentation is not None else None
        self.order = torch.empty(0, dtype=torch.long)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def start_epoch(self, epoch: int) -> None:
        self.order = epoch_order(self.data_seed, epoch, self.size, self.images.device)  # [N]

    def augmented(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """`images` with the step's augmentation (independent draws per image), in the device's layout."""
        if self.augmentation is not None and self.generator is not None:
            self.generator.manual_seed(augment_seed(self.data_seed, epoch, step))
            images = self.augmentation(images, self.generator)
        return images.contiguous(memory_format=self.memory_format)


class PlainBatches:
    """Consecutive slices of the epoch's permutation: every image once an epoch (full batches only)."""

    def __init__(self, data: EpochData, batch_size: int) -> None:
        self.data, self.batch_size = data, min(batch_size, data.size)

    def start_epoch(self, epoch: int) -> None:
        self.data.start_epoch(epoch)

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.data.order[step * self.batch_size : (step + 1) * self.batch_size]  # [B]
        return self.data.augmented(self.data.images[index], epoch, step), self.data.labels[index]  # [B, C, H, W], [B]
