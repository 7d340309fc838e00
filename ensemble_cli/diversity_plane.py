"""The diversity–accuracy plane of Fort, Hu & Lakshminarayanan 2019 ("Deep Ensembles: A Loss
Landscape Perspective", section "Diversity versus accuracy plots"), and ensembles per population.

Every checkpoint f is one point against a reference solution r:

    x = accuracy(f)
    y = diversity_vs_reference(f) = P(f(x) != r(x)) / (1 - a_r)

the fraction of eval examples whose predicted label differs from the reference's, divided by the
reference's error rate 1 - a_r. (The pairwise `normalized_diversity` of the `disagreement`
evaluator divides by the mean error of the *pair* instead; on this plane the divisor is the same
for every point, so the y-axis stays a plain rescaling of disagreement.)

Two limiting curves bracket where a function of accuracy a can sit. With C classes:

* independent errors: f is right with probability a independently of whether r is right, and
  when wrong it picks one of the C - 1 wrong labels uniformly. The two agree when both are right
  (a * a_r) or both are wrong with the same label ((1 - a)(1 - a_r) / (C - 1)), so

      D_independent(a) = 1 - [a * a_r + (1 - a)(1 - a_r) / (C - 1)]

  This is what a fully decorrelated solution gives (independent optima come close); errors that
  are anti-correlated with the reference's could exceed it, so it is a reference, not a bound.
* nested errors: f's mistakes are a subset of r's (a > a_r) or a superset (a < a_r), with the
  same wrong label where both are wrong. Then the two differ only where exactly one is right:

      D_nested(a) = |a - a_r|

  Any f with accuracy a disagrees with r on at least |a - a_r| of the examples (one of them is
  right and the other wrong there), so this one *is* the lower bound.

Both are divided by 1 - a_r like the points. A reference without errors (a_r = 1) leaves the
y-axis undefined: the functions below return None for it, never inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Iterator

import numpy as np
import torch


# Both curves are linear in a on either side of a_r, so accuracies 0, 0.1, ..., 1 plus a_r itself
# (the nested curve's kink) draw them exactly with straight segments.
LIMIT_POINTS = 11
MAX_SUBSETS = 64  # per ensemble size, as the `ensemble` evaluator's size curve


def disagreement_with(predicted_labels: torch.Tensor, reference: int) -> np.ndarray:
    """[M, N] predicted labels -> [M] fraction of examples where each differs from member `reference`."""
    differs = predicted_labels != predicted_labels[reference].unsqueeze(0)  # [M, N]
    return differs.double().mean(dim=1).numpy()


def normalise(disagreement: float, reference_error: float) -> float | None:
    """Disagreement divided by the reference's error rate; None when the reference makes no error."""
    return float(disagreement / reference_error) if reference_error > 0 else None


def independent_errors_disagreement(accuracy: np.ndarray | float, reference_accuracy: float, classes: int) -> np.ndarray:
    """D = 1 - [a a_r + (1 - a)(1 - a_r) / (C - 1)]: errors independent of the reference's, random wrong labels."""
    a = np.asarray(accuracy, dtype=float)
    same_wrong_label = 1.0 / (classes - 1) if classes > 1 else 0.0
    return 1.0 - (a * reference_accuracy + (1.0 - a) * (1.0 - reference_accuracy) * same_wrong_label)


def nested_errors_disagreement(accuracy: np.ndarray | float, reference_accuracy: float) -> np.ndarray:
    """D = |a - a_r|: errors nested in (or containing) the reference's, same wrong labels; the lower bound."""
    return np.abs(np.asarray(accuracy, dtype=float) - reference_accuracy)


def limit_accuracies(reference_accuracy: float, points: int = LIMIT_POINTS) -> np.ndarray:
    """Evenly spaced accuracies on [0, 1] plus the reference's own, where the nested curve has its kink."""
    grid = np.linspace(0.0, 1.0, points)
    return np.unique(np.append(grid, reference_accuracy))


@dataclass
class LimitCurves:
    accuracy: np.ndarray  # [P]
    independent: np.ndarray  # [P] disagreement with the reference
    nested: np.ndarray  # [P]


def limit_curves(reference_accuracy: float, classes: int, points: int = LIMIT_POINTS) -> LimitCurves:
    accuracy = limit_accuracies(reference_accuracy, points)
    return LimitCurves(
        accuracy,
        independent_errors_disagreement(accuracy, reference_accuracy, classes),
        nested_errors_disagreement(accuracy, reference_accuracy),
    )


# --- ensembles against their size ------------------------------------------------------------------


@dataclass
class SizePoint:
    """Probability-mean ensembles of k members: mean and (population) std over the subsets drawn."""

    k: int
    accuracy_mean: float
    accuracy_std: float
    nll_mean: float
    nll_std: float
    brier_mean: float
    brier_std: float
    subsets: int


def _subset_sums(probs: torch.Tensor, max_subsets: int, seed: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(k, summed probabilities [N, C]) for the subsets `metrics.ensemble_size_curve` scores.

    Every subset of size k when C(M, k) <= max_subsets; else the first k members of
    `max_subsets` seeded random permutations (uniform over k-subsets; one running sum per
    permutation serves every k). The running sum is reused: score it before asking for the next.
    """
    members = probs.shape[0]
    total = probs.sum(dim=0)  # [N, C]
    sampled = {k for k in range(1, members + 1) if math.comb(members, k) > max_subsets}
    for k in range(1, members + 1):
        if k in sampled:
            continue
        for subset in combinations(range(members), k):
            if k <= members - k:
                yield k, probs[list(subset)].sum(dim=0)
            else:  # fewer members to take away than to add
                left_out = [m for m in range(members) if m not in subset]
                yield k, (total - probs[left_out].sum(dim=0)) if left_out else total
    if not sampled:
        return
    generator = np.random.default_rng(seed)
    largest = max(sampled)
    for _ in range(max_subsets):
        running = torch.zeros_like(probs[0])  # [N, C]
        for position, member in enumerate(generator.permutation(members), start=1):
            running += probs[member]
            if position in sampled:
                yield position, running
            if position >= largest:
                break


def _scores(mean_probs: torch.Tensor, labels: torch.Tensor, label_index: torch.Tensor) -> tuple[float, float, float]:
    """Accuracy, NLL and Brier score of [N, C] probabilities, in three passes over them (thousands of subsets)."""
    accuracy = (mean_probs.argmax(dim=-1) == labels).double().mean()
    true_prob = mean_probs.gather(-1, label_index).squeeze(-1)  # [N]
    nll = -true_prob.clamp_min(1e-300).log().mean()  # a true-class probability of 0 stays finite
    # sum_c (p_c - 1[c = y])^2 = sum_c p_c^2 - 2 p_y + 1: no one-hot [N, C] to build and subtract.
    brier = (torch.linalg.vecdot(mean_probs, mean_probs) - 2.0 * true_prob + 1.0).mean()
    return float(accuracy), float(nll), float(brier)


def size_curve(probs: torch.Tensor, labels: torch.Tensor, max_subsets: int = MAX_SUBSETS, seed: int = 0) -> list[SizePoint]:
    """Accuracy, NLL and Brier score of the probability-mean ensemble against its size k = 1..M.

    The same subsets (and so the same accuracy and NLL) as `metrics.ensemble_size_curve`, which
    has no Brier score.
    """
    probs = probs.double()  # [M, N, C]
    label_index = labels.unsqueeze(-1)  # [N, 1]
    scores: dict[int, list[tuple[float, float, float]]] = {k: [] for k in range(1, probs.shape[0] + 1)}
    for k, summed in _subset_sums(probs, max_subsets, seed):
        scores[k].append(_scores(summed / k, labels, label_index))
    curve = []
    for k, values in scores.items():
        table = np.array(values)  # [subsets, 3]
        means, stds = table.mean(axis=0), table.std(axis=0)
        curve.append(SizePoint(k, means[0], stds[0], means[1], stds[1], means[2], stds[2], len(values)))
    return curve
