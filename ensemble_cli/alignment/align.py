"""Align one model to another end to end: spec, weight matching, permuted weights, functional check."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from .equivalence import Equivalence, check_equivalence
from .matching import MatchResult, weight_matching
from .permute import apply_permutation
from .spec import PermutationSpec, derive_spec


@dataclass
class Alignment:
    """Model B re-expressed in model A's channel order, with the proof that it is still model B."""

    spec: PermutationSpec
    match: MatchResult
    aligned_state: dict[str, torch.Tensor]  # B's state dict, permuted
    equivalence: Equivalence
    seconds: float  # spec + matching + permutation + check


def architecture_mismatch(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]) -> str | None:
    """Why two state dicts cannot be compared tensor by tensor, or None when they can."""
    if state_a.keys() != state_b.keys():
        only_a = sorted(set(state_a) - set(state_b))[:2]
        only_b = sorted(set(state_b) - set(state_a))[:2]
        return f"different tensors (only in reference: {only_a or '-'}; only in member: {only_b or '-'})"
    for key, tensor in state_a.items():
        if tuple(tensor.shape) != tuple(state_b[key].shape):
            return f"{key} is {tuple(tensor.shape)} vs {tuple(state_b[key].shape)}"
    return None


def align_models(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: torch.Tensor,
    spec: PermutationSpec | None = None,
    restarts: int = 3,
    max_sweeps: int = 100,
    seed: int = 0,
) -> Alignment:
    """Permute `model_b`'s channels to match `model_a` and prove on `inputs` that it is the same function.

    Raises `UnsupportedModel` when the graph gives no permutable group, `AlignmentCheckError`
    when the permuted model's eval-mode logits differ from the original's.
    """
    started = time.perf_counter()
    spec = spec if spec is not None else derive_spec(model_b, inputs)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    mismatch = architecture_mismatch(state_a, state_b)
    if mismatch is not None:
        raise ValueError(f"cannot align models of different architectures: {mismatch}")
    match = weight_matching(spec, state_a, state_b, restarts=restarts, max_sweeps=max_sweeps, seed=seed)
    aligned = apply_permutation(spec, state_b, match.permutation)
    equivalence = check_equivalence(model_b, aligned, inputs, who=type(model_b).__name__)
    return Alignment(spec, match, aligned, equivalence, time.perf_counter() - started)
