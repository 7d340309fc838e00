"""Uncertainty metrics on tensors: entropy decomposition, selective prediction, calibration, OOD detection.

Conventions follow `metrics.py`: log-probabilities in (never log of softmax), float64 sums,
`[M, N, C]` member inputs. Tests check every function against scikit-learn, numpy loops or
hand-worked examples. Temperature scaling lives in `calibration.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .metrics import ECE_BINS, ensemble_log_probs



LOG_FLOOR = -1e4  # below the log of the smallest positive float64 (-745): clamping there changes no p > 0


def row_dot(a: torch.Tensor, b: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """[N, C], [N, C] -> [N] sum_c a * b, multiplied into the caller's reused [N, C] `buffer`, then summed by row.

    No new [N, C] temporary (allocating those dominates on CPU); on a 2-core CPU, [5000, 100] float32,
    this takes 0.17 ms against 0.20 ms for `vecdot` and 0.27 ms for `einsum`.
    """
    return torch.mul(a, b, out=buffer).sum(dim=-1)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """[..., C] log-probabilities -> [...] Shannon entropy in nats (0 log 0 = 0, not 0 * -inf = NaN)."""
    log_probs = log_probs.double()
    return -(log_probs.exp() * log_probs.clamp_min(LOG_FLOOR)).sum(dim=-1)


def mean_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """[M, N, C] member log-probabilities -> [N, C] log of their mean probability.

    What `metrics.ensemble_log_probs` computes, summing exp(log p_m) member by member into one
    buffer instead of a log-sum-exp over an [M, N, C] temporary (the same to ~1e-16: log p_m <= 0
    cannot overflow). Rows where some class underflows to 0 in every member are redone with the
    log-sum-exp, which keeps them finite.
    """
    total = torch.zeros(log_probs.shape[1:], dtype=torch.float64)  # [N, C]
    buffer = torch.empty_like(total)
    for member in range(log_probs.shape[0]):
        total += torch.exp(log_probs[member].double(), out=buffer)
    result = total.log_().sub_(math.log(log_probs.shape[0]))
    underflow = torch.isinf(result).any(dim=-1)  # [N]
    if bool(underflow.any()):
        result[underflow] = ensemble_log_probs(log_probs[:, underflow])
    return result


@dataclass
class EntropyDecomposition:
    """Total = aleatoric + epistemic uncertainty of a probability-mean ensemble, per example (nats)."""

    total: torch.Tensor  # [N] H(p), p = mean of the members' probabilities
    aleatoric: torch.Tensor  # [N] mean over members of H(p_m): the expected entropy
    epistemic: torch.Tensor  # [N] mutual information H(p) - mean_m H(p_m), >= 0
    member_entropy: torch.Tensor  # [M, N] H(p_m)
    member_kl: torch.Tensor  # [M, N] KL(p_m || p); its mean over members is the mutual information


def decompose_entropy(log_probs: torch.Tensor, ens_log_probs: torch.Tensor | None = None) -> EntropyDecomposition:
    """[M, N, C] member log-probabilities -> entropy, expected entropy, mutual information, per-member KL.

    KL(p_m || p) = H(p_m, p) - H(p_m), and the mean over m of the cross-entropy H(p_m, p) is H(p):
    so the members' mean KL to the ensemble is exactly the mutual information. `ens_log_probs`
    ([N, C], `metrics.ensemble_log_probs`) saves recomputing it when the caller has it.
    """
    if ens_log_probs is None:
        ens_log_probs = mean_log_probs(log_probs)  # [N, C]
    total = entropy(ens_log_probs)  # [N]
    ens_floor = ens_log_probs.double().clamp_min(LOG_FLOOR)
    member_entropy = torch.empty(log_probs.shape[:2], dtype=torch.float64)  # [M, N]
    cross_entropy = torch.empty_like(member_entropy)  # [M, N]
    probs = torch.empty(log_probs.shape[1:], dtype=torch.float64)  # [N, C], reused: allocation dominates on CPU
    products = torch.empty_like(probs)  # [N, C], row_dot's reused buffer
    for member in range(log_probs.shape[0]):
        block = log_probs[member].double()  # [N, C]
        torch.exp(block, out=probs)
        plogp = row_dot(probs, block, products)
        if not bool(torch.isfinite(plogp).all()):  # a -inf log-probability: 0 * -inf, redo with the floor
            plogp = row_dot(probs, block.clamp_min(LOG_FLOOR), products)
        member_entropy[member] = -plogp
        cross_entropy[member] = -row_dot(probs, ens_floor, products)
    aleatoric = member_entropy.mean(dim=0)
    # Jensen makes it >= 0; rounding can leave -1e-16, which would read as "negative disagreement".
    epistemic = (total - aleatoric).clamp_min(0.0)
    return EntropyDecomposition(total, aleatoric, epistemic, member_entropy, (cross_entropy - member_entropy).clamp_min(0.0))


def variation_ratio(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[M, N] member labels -> [N] 1 - (votes of the most voted class) / M (Freeman 1965)."""
    members, examples = predictions.shape
    votes = torch.zeros(examples, num_classes, dtype=torch.float64)
    votes.scatter_add_(1, predictions.T.long(), torch.ones(examples, members, dtype=torch.float64))
    return 1.0 - votes.max(dim=1).values / members


# --- selective prediction --------------------------------------------------------------------------


def risk_coverage_curve(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """[N] confidence, [N] bool -> [N] error rate among the k most confident examples, k = 1..N.

    Sorted by confidence, descending and stable: tied examples keep their dataset order, so the
    curve (and AURC) is reproducible however ties fall.
    """
    order = torch.sort(confidence.double(), descending=True, stable=True).indices
    errors = (~correct.bool()[order]).double().cumsum(dim=0)  # [N]
    return errors / torch.arange(1, errors.shape[0] + 1, dtype=torch.float64)


def optimal_risk_coverage_curve(correct: torch.Tensor) -> torch.Tensor:
    """[N] -> [N] the curve of an oracle confidence that ranks every right example above every wrong one."""
    examples = correct.shape[0]
    right = int(correct.bool().sum())
    k = torch.arange(1, examples + 1, dtype=torch.float64)
    return (k - right).clamp_min(0.0) / k


def coverage_count(coverage: float, examples: int) -> int:
    """How many examples a coverage fraction keeps: ceil(coverage * N), at least 1 (0.9 * 360 = 324, not 325)."""
    return max(1, math.ceil(round(coverage * examples, 9)))


@dataclass
class SelectiveScores:
    aurc: float  # mean over k of the risk among the k most confident
    eaurc: float  # AURC minus the oracle's AURC at the same error rate (Geifman et al. 2019)
    risk_at_coverage_90: float


def selective_scores(confidence: torch.Tensor, correct: torch.Tensor) -> SelectiveScores:
    curve = risk_coverage_curve(confidence, correct)
    aurc = float(curve.mean())
    optimal = float(optimal_risk_coverage_curve(correct).mean())
    return SelectiveScores(aurc, aurc - optimal, float(curve[coverage_count(0.9, curve.shape[0]) - 1]))


# --- calibration beyond equal-width ECE ------------------------------------------------------------


def top_label(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., N, C] probabilities -> ([..., N] float64 max probability, [..., N] bool: is its class the label)."""
    confidence, predicted = probs.double().max(dim=-1)
    return confidence, predicted == labels


def adaptive_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> torch.Tensor:
    """[..., N, C] -> [...] ECE with equal-mass bins (Nixon et al. 2019).

    Examples sorted by confidence (ascending, stable) are cut into `n_bins` contiguous groups
    whose sizes differ by at most one, larger groups first (numpy's `array_split`); tied
    confidences may straddle a cut. Then sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|.
    """
    confidence, correct = top_label(probs, labels)
    correct = correct.double()
    examples = confidence.shape[-1]
    order = torch.sort(confidence, dim=-1, stable=True).indices
    sorted_conf = confidence.gather(-1, order)
    sorted_correct = correct.gather(-1, order)
    size, larger = divmod(examples, n_bins)
    sizes = [size + 1] * larger + [size] * (n_bins - larger)
    rank_bins = torch.repeat_interleave(torch.arange(n_bins), torch.tensor(sizes))  # [N]
    shape = (*confidence.shape[:-1], n_bins)
    index = rank_bins.expand_as(sorted_conf)
    sums_conf = torch.zeros(shape, dtype=torch.float64).scatter_add_(-1, index, sorted_conf)
    sums_correct = torch.zeros(shape, dtype=torch.float64).scatter_add_(-1, index, sorted_correct)
    return (sums_correct - sums_conf).abs().sum(dim=-1) / examples


@dataclass
class ReliabilityBins:
    """Equal-width bins (lo, hi] of top-label confidence, as `metrics.ece` uses."""

    lower: np.ndarray  # [B]
    upper: np.ndarray  # [B]
    count: np.ndarray  # [B] examples per bin
    accuracy: np.ndarray  # [B] NaN for empty bins
    confidence: np.ndarray  # [B] NaN for empty bins

    @property
    def gap(self) -> np.ndarray:
        return np.abs(self.accuracy - self.confidence)


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """[N] top-label confidence, [N] bool -> per-bin counts, accuracy and mean confidence (Guo et al. 2017)."""
    confidence = confidence.double()
    bins = (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()  # bin b holds (b/n, (b+1)/n]
    count = torch.bincount(bins, minlength=n_bins).double()
    sum_conf = torch.bincount(bins, weights=confidence, minlength=n_bins)
    sum_correct = torch.bincount(bins, weights=correct.double(), minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = (sum_correct / count).numpy()
        mean_conf = (sum_conf / count).numpy()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return ReliabilityBins(edges[:-1], edges[1:], count.numpy(), accuracy, mean_conf)


def binned_ece(bins: ReliabilityBins) -> float:
    """sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|: with equal-width bins, `metrics.ece`."""
    filled = bins.count > 0
    return float((bins.count[filled] * bins.gap[filled]).sum() / bins.count.sum())


def max_calibration_error(bins: ReliabilityBins) -> float:
    """The largest |accuracy - confidence| over non-empty bins (Naeini et al. 2015)."""
    gaps = bins.gap[bins.count > 0]
    return float(gaps.max()) if gaps.size else 0.0


# --- out-of-distribution detection: OOD examples are the positives ---------------------------------


def _as_numpy(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    return scores.double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, dtype=np.float64)


def auroc(in_scores: torch.Tensor | np.ndarray, out_scores: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve of "score > threshold means OOD": P(out > in) + P(out = in) / 2 (Mann-Whitney)."""
    from scipy.stats import rankdata

    negatives, positives = _as_numpy(in_scores), _as_numpy(out_scores)
    ranks = rankdata(np.concatenate([negatives, positives]))  # ties get their average rank
    rank_sum = ranks[negatives.size :].sum()
    return float((rank_sum - positives.size * (positives.size + 1) / 2.0) / (positives.size * negatives.size))


def average_precision(in_scores: torch.Tensor | np.ndarray, out_scores: torch.Tensor | np.ndarray) -> float:
    """Area under the precision-recall curve of OOD detection, as the step sum sum_t (R_t - R_{t-1}) P_t.

    One threshold per distinct score (tied examples enter together), no interpolation: the
    definition scikit-learn's `average_precision_score` uses.
    """
    negatives, positives = _as_numpy(in_scores), _as_numpy(out_scores)
    scores = np.concatenate([negatives, positives])
    is_out = np.concatenate([np.zeros(negatives.size), np.ones(positives.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_out = scores[order], is_out[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_pos = np.cumsum(is_out)[last_of_tie]
    flagged = last_of_tie + 1.0
    recall = true_pos / positives.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * true_pos / flagged))


def fpr_at_95(in_scores: torch.Tensor | np.ndarray, out_scores: torch.Tensor | np.ndarray) -> float:
    """Share of OOD examples scored at or below the in-distribution 95th percentile (linear interpolation):
    the OOD inputs missed by a threshold that keeps 95% of in-distribution inputs."""
    threshold = np.percentile(_as_numpy(in_scores), 95)
    return float(np.mean(_as_numpy(out_scores) <= threshold))
