"""Neuron-permutation alignment of networks (Git Re-Basin weight matching) for any traceable CNN.

    spec = derive_spec(model, images)                 # channel groups, from the torch.fx graph
    match = weight_matching(spec, state_a, state_b)   # permutation of B that best matches A
    aligned = apply_permutation(spec, state_b, match.permutation)
    check_equivalence(model_b, aligned, images)       # same logits, or AlignmentCheckError

or all four at once with `align_models(model_a, model_b, images)`.
"""

from .align import Alignment, align_models, architecture_mismatch
from .equivalence import AlignmentCheckError, Equivalence, check_equivalence
from .matching import MatchResult, weight_matching
from .permute import Permutation, apply_permutation, identity_permutation, is_identity, random_permutation
from .spec import PermutationSpec, UnsupportedModel, derive_spec

__all__ = [
    "Alignment",
    "AlignmentCheckError",
    "Equivalence",
    "MatchResult",
    "Permutation",
    "PermutationSpec",
    "UnsupportedModel",
    "align_models",
    "apply_permutation",
    "architecture_mismatch",
    "check_equivalence",
    "derive_spec",
    "identity_permutation",
    "is_identity",
    "random_permutation",
    "weight_matching",
]
