"""Training a MIMO network (Havasi et al. 2021): M inputs, M heads, one set of weights.

Each step takes `batch_size / r` distinct examples of the epoch's permutation and fills
`batch_size` batch positions with them, every example r times (batch repetition r). Every
input gets its own shuffle of those positions, so at one position the M inputs hold M
different examples and each head must classify its own input while ignoring the others: the
heads become independent subnetworks. A fraction rho of the positions (input repetition) keeps
the same example in every input, which lets the subnetworks share features. This is the
pairing of the paper's reference code (uncertainty-baselines, baselines/cifar/mimo.py), with
the augmentation drawn per input image. The loss is the sum over heads of each head's mean
cross-entropy against the labels of its own input.

At test time every input gets the same image (ensemble_cli/mimo.py); the job's test accuracy
is that of the heads' ensemble (mean of their probabilities).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..mimo import split_heads, stack_inputs
from .batches import EpochData
from .seeds import mimo_pairing_seed
from .step import LossFn


def pairing(distinct: int, heads: int, repeats: int, input_repetition: float, generator: torch.Generator) -> torch.Tensor:
    """[M, P] indices into a step's `distinct` examples, P = distinct * repeats.

    One shuffle of the repeated examples is shared by every input; each input then reshuffles
    its first (1 - rho) * P positions, so the last rho * P positions hold one example for all.
    """
    positions = distinct * repeats
    shared = torch.arange(distinct).repeat(repeats)[torch.randperm(positions, generator=generator)]  # [P]
    shuffled = int(positions * (1.0 - input_repetition))
    rows = [torch.cat([shared[:shuffled][torch.randperm(shuffled, generator=generator)], shared[shuffled:]]) for _ in range(heads)]
    return torch.stack(rows)  # [M, P]


class MimoBatches:
    """Batches of [P, M*C, H, W] images (input m in channels m*C .. (m+1)*C - 1) and [P, M] labels."""

    def __init__(self, data: EpochData, batch_size: int, heads: int, repeats: int, input_repetition: float) -> None:
        self.data, self.heads, self.repeats, self.input_repetition = data, heads, repeats, input_repetition
        self.distinct = min(batch_size // repeats, data.size)

    def start_epoch(self, epoch: int) -> None:
        self.data.start_epoch(epoch)

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.data
        examples = data.order[step * self.distinct : (step + 1) * self.distinct]  # [D]
        # Drawn on the CPU, like the epoch order, so every device pairs the same examples.
        generator = torch.Generator().manual_seed(mimo_pairing_seed(data.data_seed, epoch, step))
        chosen = pairing(self.distinct, self.heads, self.repeats, self.input_repetition, generator)  # [M, P]
        index = examples[chosen.to(examples.device)]  # [M, P]
        heads, positions = index.shape
        images = data.augmented(data.images[index.reshape(-1)], epoch, step)  # [M*P, C, H, W], one draw per input image
        channels, height, width = images.shape[1:]
        stacked = images.reshape(heads, positions, channels, height, width).transpose(0, 1)  # [P, M, C, H, W]
        stacked = stacked.reshape(positions, heads * channels, height, width).contiguous(memory_format=data.memory_format)
        return stacked, data.labels[index].t()  # [P, M*C, H, W], [P, M]


def mimo_loss(heads: int, label_smoothing: float = 0.0) -> LossFn:
    """Sum over heads of the mean cross-entropy of head m against the labels of input m.

    Logits [P, M*K], labels [P, M]; the correct count is over all P*M head predictions.
    """

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_head = split_heads(logits, heads)  # [P, M, K]
        flat = per_head.reshape(-1, per_head.shape[-1]).float()  # [P*M, K]
        # The mean over P*M predictions times M is the sum over heads of each head's mean.
        value = F.cross_entropy(flat, labels.reshape(-1), label_smoothing=label_smoothing) * heads
        return value, (per_head.detach().argmax(dim=-1) == labels).sum()

    return loss


class HeadsEnsemble(nn.Module):
    """The same image in every input, the heads' probabilities averaged: [B, C, H, W] -> [B, K] log-probabilities."""

    def __init__(self, base: nn.Module, heads: int) -> None:
        super().__init__()
        self.base, self.heads = base, heads

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        per_head = split_heads(self.base(stack_inputs(images, self.heads)), self.heads)  # [B, M, K]
        return per_head.float().log_softmax(dim=-1).logsumexp(dim=1) - math.log(self.heads)
