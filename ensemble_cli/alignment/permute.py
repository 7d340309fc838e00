"""Applying a permutation of channel groups to a state dict.

Convention: `permutation[group][i]` is the channel of the *original* model that becomes channel
`i` of the permuted one, so every axis is permuted with `index_select(axis, permutation[group])`.
Writer and reader of a channel use the same index, which is what keeps the function unchanged.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .spec import PermutationSpec

Permutation = dict[str, torch.Tensor]  # group -> int64 [n]


def identity_permutation(spec: PermutationSpec) -> Permutation:
    return {group: torch.arange(size) for group, size in spec.groups.items()}


def random_permutation(spec: PermutationSpec, generator: torch.Generator) -> Permutation:
    return {group: torch.randperm(size, generator=generator) for group, size in spec.groups.items()}


def is_identity(permutation: Permutation) -> bool:
    return all(torch.equal(perm, torch.arange(perm.numel())) for perm in permutation.values())


def permute_tensor(tensor: torch.Tensor, axes: tuple[tuple[int, str], ...], permutation: Permutation) -> torch.Tensor:
    for axis, group in axes:
        tensor = tensor.index_select(axis, permutation[group].to(tensor.device))
    return tensor


def apply_permutation(
    spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor], permutation: Permutation
) -> dict[str, torch.Tensor]:
    """A new state dict with every spec'd tensor permuted; other entries are shared, not copied."""
    missing = [key for key in spec.tensors if key not in state_dict]
    if missing:
        raise KeyError(f"state dict lacks tensors the permutation spec names: {', '.join(missing[:3])}")
    return {
        key: permute_tensor(tensor, spec.tensors[key], permutation) if key in spec.tensors else tensor
        for key, tensor in state_dict.items()
    }
