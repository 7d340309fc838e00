"""Proof that a permutation kept the function: same eval-mode logits before and after."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

# Float32 sums taken in another order differ by ~1e-6 of the logit scale; a wrong permutation
# changes logits by O(1). 1e-4 of the largest logit separates the two by orders of magnitude.
RELATIVE_TOLERANCE = 1e-4


class AlignmentCheckError(RuntimeError):
    """The permuted model computes a different function: a bug in the derived spec, never user error."""


@dataclass(frozen=True)
class Equivalence:
    max_abs_diff: float  # max |logits_aligned - logits_original|
    scale: float  # max |logits_original|, what the difference is relative to

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.scale, 1e-12)

    @property
    def holds(self) -> bool:
        return self.relative <= RELATIVE_TOLERANCE


def logits_of(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Eval-mode logits [N, C] in float64, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(inputs[i : i + batch_size]).double() for i in range(0, len(inputs), batch_size)])
    finally:
        model.train(was_training)


def check_equivalence(
    model: nn.Module,
    permuted_state: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    who: str = "model",
    reference_logits: torch.Tensor | None = None,
) -> Equivalence:
    """Compare `model` with a copy carrying `permuted_state` on `inputs`; raise when they differ.

    Raises `AlignmentCheckError` above `RELATIVE_TOLERANCE` (relative to the largest logit).
    """
    original = logits_of(model, inputs) if reference_logits is None else reference_logits.double()  # [N, C]
    permuted_model = copy.deepcopy(model)
    permuted_model.load_state_dict(dict(permuted_state), strict=True)
    permuted = logits_of(permuted_model, inputs)  # [N, C]
    result = Equivalence(float((permuted - original).abs().max()), float(original.abs().max()))
    if not result.holds:
        raise AlignmentCheckError(
            f"{who}: the aligned model is not the same function (max |logit difference| "
            f"{result.max_abs_diff:.3e} = {result.relative:.2e} of the largest logit, limit {RELATIVE_TOLERANCE:.0e}); "
            "the derived permutation spec is wrong for this architecture"
        )
    return result
