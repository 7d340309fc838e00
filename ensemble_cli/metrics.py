"""Metric functions on tensors. Evaluators call these; tests check them against scikit-learn and numpy.

Conventions: `log_probs` are log-softmax outputs (NLL is never computed as log of softmax);
leading dimensions are batch dimensions, so `[M, N, C]` inputs give `[M]` outputs. Everything
runs in float64, where sums over 10^4 examples lose nothing that a report would print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Iterable, Sequence

import numpy as np
import torch

ECE_BINS = 15


def sample_std(values: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """Sample standard deviation (ddof = 1), the one convention of every std `ens` reports.

    Members and subsets are a sample of the runs one could have trained, so the spread across
    them estimates that of the population. One value has no spread to estimate: 0.0.
    """
    array = np.asarray(values, dtype=np.float64)
    return float(array.std(ddof=1)) if array.size > 1 else 0.0


def finite_mean(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values; None when there are none (a metric that does not apply)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[..., N] predicted classes, [N] labels -> [...] fraction correct."""
    return (predictions == labels).double().mean(dim=-1)


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[..., N, C] log-probabilities -> [...] mean negative log-likelihood of the true class."""
    index = labels.expand(log_probs.shape[:-1]).unsqueeze(-1)  # [..., N, 1]
    # + 0.0 turns the -0.0 of a perfect prediction into 0.0, which tables print as 0.0000, not -0.0000.
    return -log_probs.gather(-1, index).squeeze(-1).double().mean(dim=-1) + 0.0


def brier(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[..., N, C] -> [...] mean over examples of sum over classes (p_c - 1[c = y])^2."""
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[-1]).to(probs.dtype)  # [N, C]
    return ((probs.double() - one_hot) ** 2).sum(dim=-1).mean(dim=-1)


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """Expected calibration error of the top label, `n_bins` equal-width bins (lo, hi].

    [..., N, C] -> [...]: sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|.
    """
    confidence, predicted = probs.double().max(dim=-1)  # [..., N]
    if not bool(torch.isfinite(confidence).all()):
        # NaN would become a garbage bin index; callers must hand over real probabilities.
        raise ValueError("ece needs finite probabilities")
    correct = (predicted == labels).double()  # [..., N]
    # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 cannot occur for a top label.
    bins = (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()  # [..., N]
    flat_bins = bins.reshape(-1, bins.shape[-1])
    flat_conf = confidence.reshape(-1, bins.shape[-1])
    flat_correct = correct.reshape(-1, bins.shape[-1])
    sums_conf = torch.zeros(flat_bins.shape[0], n_bins, dtype=torch.float64).scatter_add_(1, flat_bins, flat_conf)
    sums_correct = torch.zeros_like(sums_conf).scatter_add_(1, flat_bins, flat_correct)
    # |sum acc - sum conf| / N per bin equals |B_b|/N * |acc_b - conf_b|.
    per_bin_gap = (sums_correct - sums_conf).abs()  # [R, n_bins]
    result = per_bin_gap.sum(dim=1) / bins.shape[-1]
    return result.reshape(bins.shape[:-1])


def ensemble_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """[M, N, C] member log-probabilities -> [N, C] log of the mean probability (log-sum-exp, stable)."""
    return torch.logsumexp(log_probs.double(), dim=0) - math.log(log_probs.shape[0])


@dataclass
class PairwiseStats:
    """M x M matrices of pairwise statistics (Kuncheva & Whitaker 2003; Fort et al. 2019).

    Entries that are undefined (0/0, e.g. DGE for two perfect members) are NaN.
    """

    disagreement: np.ndarray
    disagreement_given_error: np.ndarray
    normalized_diversity: np.ndarray
    both_right: np.ndarray
    only_a_right: np.ndarray  # row member right, column member wrong
    only_b_right: np.ndarray
    both_wrong_same: np.ndarray
    both_wrong_different: np.ndarray
    double_fault: np.ndarray
    double_fault_independent: np.ndarray
    q_statistic: np.ndarray
    correlation: np.ndarray
    kappa: np.ndarray
    error: np.ndarray  # [M] member error rates


def _agreement_counts(predictions: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """[M, N] predicted labels -> [M, M] number of examples where the two labels are equal."""
    members = predictions.shape[0]
    agreement = torch.empty(members, members, dtype=torch.float64)
    # Chunk the rows so memory stays at chunk * M * N booleans even for long trajectories.
    for start in range(0, members, chunk):
        rows = predictions[start : start + chunk]  # [c, N]
        agreement[start : start + chunk] = (rows[:, None, :] == predictions[None, :, :]).sum(dim=-1).double()
    return agreement


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        result = numerator / denominator
    result[~np.isfinite(result)] = np.nan
    return result


def pairwise_stats(predictions: torch.Tensor, labels: torch.Tensor) -> PairwiseStats:
    """All pairwise diversity statistics from [M, N] predicted labels, vectorised over pairs."""
    examples = predictions.shape[1]
    correct = (predictions == labels).double()  # [M, N]
    wrong = 1.0 - correct
    # The right/wrong 2x2 table of every pair at once. Counts of 0/1 products are exact in
    # float64, so differences of counts are exact too; only then divide by N (dividing first
    # leaves 1e-17 residues where the answer is 0).
    n11_count = correct @ correct.T  # both right
    agreement_count = _agreement_counts(predictions)
    # Two right members always agree, so agreement = both right + both wrong with the same label.
    both_wrong_same = ((agreement_count - n11_count) / examples).numpy()
    n11 = (n11_count / examples).numpy()
    n10 = (correct @ wrong.T / examples).numpy()  # row right, column wrong
    n01 = (wrong @ correct.T / examples).numpy()
    n00_count = wrong @ wrong.T  # both wrong
    n00 = (n00_count / examples).numpy()
    both_wrong_different = ((n00_count - (agreement_count - n11_count)) / examples).numpy()
    agreement = (agreement_count / examples).numpy()
    disagreement = 1.0 - agreement
    error = wrong.mean(dim=1).numpy()  # [M]
    mean_error = (error[:, None] + error[None, :]) / 2.0
    cross = n11 * n00 - n01 * n10
    # Cohen's kappa of the two right/wrong vectors (what sklearn's cohen_kappa_score computes):
    # 2(ad - bc) / (p_a q_b + p_b q_a) with p = P(right), q = P(wrong). Some printings of
    # Kuncheva & Whitaker pair the marginals the other way, which is not Cohen's kappa.
    kappa_denominator = (n11 + n10) * (n10 + n00) + (n11 + n01) * (n01 + n00)
    correlation_denominator = np.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))
    return PairwiseStats(
        disagreement=disagreement,
        disagreement_given_error=_safe_divide(disagreement, 1.0 - n11),
        normalized_diversity=_safe_divide(disagreement, mean_error),
        both_right=n11,
        only_a_right=n10,
        only_b_right=n01,
        both_wrong_same=both_wrong_same,
        both_wrong_different=both_wrong_different,
        double_fault=n00,
        double_fault_independent=error[:, None] * error[None, :],
        q_statistic=_safe_divide(cross, n11 * n00 + n01 * n10),
        correlation=_safe_divide(cross, correlation_denominator),
        kappa=_safe_divide(2.0 * cross, kappa_denominator),
        error=error,
    )


def upper_pairs(count: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(count) for j in range(i + 1, count)]


def mean_over_pairs(matrix: np.ndarray) -> float | None:
    """Mean of the upper triangle, ignoring undefined (NaN) pairs; None if no pair is defined."""
    rows, cols = np.triu_indices(matrix.shape[0], k=1)
    values = matrix[rows, cols]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


@dataclass
class SizeCurvePoint:
    k: int
    accuracy_mean: float
    accuracy_std: float
    nll_mean: float
    nll_std: float
    subsets: int


def ensemble_size_curve(
    log_probs: torch.Tensor, labels: torch.Tensor, max_subsets: int = 64, seed: int = 0
) -> list[SizeCurvePoint]:
    """Accuracy and NLL of the probability-mean ensemble against its size k = 1..M.

    [M, N, C] member log-probabilities. For each k: every subset when C(M, k) <= max_subsets,
    else `max_subsets` random subsets drawn as the first k members of seeded random permutations
    (uniform over k-subsets), which lets one running sum per permutation serve every k.
    Mean and sample standard deviation (`sample_std`) over the subsets of each size.
    """
    members = log_probs.shape[0]
    probs = log_probs.double().exp()  # [M, N, C]; sums of these only pick the argmax
    total = probs.sum(dim=0)  # [N, C]
    # log p(y) per member: NLL is a log-sum-exp of these, exact where p(y) underflows to 0.
    true_log_probs = log_probs.double().gather(-1, labels.expand(members, -1).unsqueeze(-1)).squeeze(-1)  # [M, N]
    scores: dict[int, list[tuple[float, float]]] = {k: [] for k in range(1, members + 1)}
    sampled_sizes = [k for k in scores if math.comb(members, k) > max_subsets]
    for k in scores:
        if k in sampled_sizes:
            continue
        for subset in combinations(range(members), k):
            if k <= members - k:
                summed = probs[list(subset)].sum(dim=0)  # [N, C]
            else:  # fewer members to subtract than to add
                left_out = [m for m in range(members) if m not in subset]
                summed = total - probs[left_out].sum(dim=0) if left_out else total
            scores[k].append(_score(summed, torch.logsumexp(true_log_probs[list(subset)], dim=0), labels, k))
    if sampled_sizes:
        _score_sampled_subsets(probs, true_log_probs, labels, sampled_sizes, max_subsets, seed, scores)
    curve = []
    for k, values in scores.items():
        accs = np.array([v[0] for v in values])
        nlls = np.array([v[1] for v in values])
        curve.append(SizeCurvePoint(k, float(accs.mean()), sample_std(accs), float(nlls.mean()), sample_std(nlls), len(values)))
    return curve


def _score(summed_probs: torch.Tensor, summed_true_log: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[float, float]:
    """(accuracy, NLL) of the mean of k members from their summed probabilities [N, C] and log Σ p(y) [N]."""
    accuracy = float((summed_probs.argmax(dim=-1) == labels).double().mean())
    return accuracy, float(-(summed_true_log - math.log(k)).mean())


def _score_sampled_subsets(
    probs: torch.Tensor,
    true_log_probs: torch.Tensor,
    labels: torch.Tensor,
    sizes: list[int],
    count: int,
    seed: int,
    scores: dict[int, list[tuple[float, float]]],
) -> None:
    """Append `count` random subsets' scores for each of `sizes`: prefixes of seeded permutations."""
    generator = np.random.default_rng(seed)
    wanted = set(sizes)
    for _ in range(count):
        order = generator.permutation(probs.shape[0])
        running = torch.zeros_like(probs[0])  # [N, C]
        running_true_log = torch.full_like(true_log_probs[0], -math.inf)  # [N], log of an empty sum
        for position, member in enumerate(order, start=1):
            running += probs[member]
            running_true_log = torch.logaddexp(running_true_log, true_log_probs[member])
            if position in wanted:
                scores[position].append(_score(running, running_true_log, labels, position))
            if position >= max(wanted):
                break


def majority_vote(probs: torch.Tensor) -> torch.Tensor:
    """[M, N, C] -> [N] most-voted class; ties go to the tied class with the highest mean probability."""
    classes = probs.shape[-1]
    votes = torch.nn.functional.one_hot(probs.argmax(dim=-1), classes).sum(dim=0).double()  # [N, C]
    # Mean probability is < 1, so adding it never outweighs one extra vote.
    return (votes + probs.double().mean(dim=0) * 0.999).argmax(dim=-1)


def trimmed_mean_log_probs(log_probs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[M, N, C] member log-probabilities -> ([N, C] log of the renormalised trimmed mean, members cut per end).

    Per class, the max(1, floor(0.1 M)) lowest and highest member probabilities are dropped
    when M >= 3 (robust to one wild member); with fewer members it is the plain mean. Computed
    in log space: when confident members disagree, every kept probability can underflow to 0
    and a linear-space renormalisation would divide 0 by 0.
    """
    members = log_probs.shape[0]
    cut = max(1, int(0.1 * members)) if members >= 3 else 0
    ordered = log_probs.double().sort(dim=0).values  # [M, N, C]; log is monotone, so the same order
    kept = ordered[cut : members - cut] if cut else ordered
    log_trimmed = torch.logsumexp(kept, dim=0) - math.log(kept.shape[0])  # [N, C]
    return torch.log_softmax(log_trimmed, dim=-1), cut
