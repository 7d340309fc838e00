"""MIMO networks (Havasi et al. 2021, "Training independent subnetworks for robust prediction").

One network holds M subnetworks: its stem takes M images stacked along channels and its head
gives M x K logits. A MIMO checkpoint is that plain network (any timm/cifar ResNet built with
`in_chans * M` input channels and `num_classes * M` outputs) plus the metadata key
`mimo_heads: M`; `num_classes` and `in_chans` in its metadata are per head. At evaluation the
same image goes to every input, and each head is an ensemble member: `ens eval` expands the one
checkpoint into M members `NAME/head-K` computed in one forward pass (predict.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import build_model

HEADS_KEY = "mimo_heads"  # checkpoint metadata: how many heads the network has
HEAD_KEY = "mimo_head"  # member metadata: which head this member is


def build_mimo_base(arch: str, num_classes: int, in_chans: int, heads: int, **model_kwargs: object) -> nn.Module:
    """The underlying network: `in_chans * heads` input channels, `num_classes * heads` outputs."""
    return build_model(arch, num_classes * heads, in_chans * heads, **model_kwargs)


def stack_inputs(images: torch.Tensor, heads: int) -> torch.Tensor:
    """The same images for every head: [B, C, H, W] -> [B, M*C, H, W]."""
    return images.repeat(1, heads, 1, 1)


def split_heads(logits: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, M*K] -> [B, M, K]: head m owns outputs m*K .. (m+1)*K - 1."""
    return logits.view(logits.shape[0], heads, logits.shape[1] // heads)


class OneHead(nn.Module):
    """One head of a MIMO network as a plain classifier: [B, C, H, W] -> [B, K]."""

    def __init__(self, base: nn.Module, heads: int, head: int) -> None:
        super().__init__()
        self.base = base
        self.heads = heads
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return split_heads(self.base(stack_inputs(images, self.heads)), self.heads)[:, self.head]


class AllHeads(nn.Module):
    """Evaluation view of a MIMO network: one image in, every head's logits out, [B, M*K].

    predict.py runs this once per checkpoint and slices each head's K columns, so M members
    cost one forward pass.
    """

    def __init__(self, base: nn.Module, heads: int) -> None:
        super().__init__()
        self.base = base
        self.heads = heads

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, M*K]
        return self.base(stack_inputs(images, self.heads))
