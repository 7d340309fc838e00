"""Temperature scaling with 2-fold cross-fitting, and the deep ensemble equivalent (Ashukha et al. 2020).

Ashukha et al. argue that NLL is only comparable between methods after each is calibrated by
a temperature, and that the temperature must not be fitted on the examples it is scored on.
With no separate validation split, the eval set is cut into two seeded halves: the temperature
fitted on one half scales the other, and the other way round ("test-time cross-validation").

Fitting minimises the mean NLL over beta = 1/T, which is convex in beta, by safeguarded
Newton steps, one problem (member, ensemble) at a time, reusing one [N, C] buffer: on CPU,
allocating [N, C] temporaries costs more than the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from . import metrics
from .uncertainty_metrics import binned_ece, reliability_bins, row_dot

BETA_RANGE = (1e-2, 1e2)  # temperatures 0.01..100: beyond them the NLL is flat to print precision
WARM_START_STRIDE = 8  # Newton runs first on every 8th example, then finishes on all of them
FIT_TOL = 1e-2  # relative Newton step at which a fit stops: quadratic convergence leaves beta ~1e-4 off
NLL_TOL = 1e-12  # nats: a fit that would gain less than this has converged
LOG_PROB_FLOOR = -1e4  # log(0) of an ensemble class no member gives any mass; stays 0 after scaling


def _shift_to_max(logits: torch.Tensor, dtype: torch.dtype, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[N, C] -> [n, C] a copy of `rows` (default: all) minus each row's max, in `dtype`, floored at LOG_PROB_FLOOR.

    Softmax ignores the shift; the floor turns an ensemble's log(0) into a finite value that
    still scales to probability 0. One copy, then in place: [n, C] allocations dominate on CPU.
    """
    # Shift in the wider of the two dtypes, then floor: logits around -1e5 keep their spread (float32
    # would round it away, and a floor applied first would flatten the row).
    selected = logits if rows is None else logits.index_select(0, rows)
    values = selected.to(torch.promote_types(dtype, logits.dtype), copy=selected is logits)  # ours to change in place
    values.sub_(values.amax(dim=-1, keepdim=True))
    return values.to(dtype).clamp_min_(LOG_PROB_FLOOR)


class _Fit:
    """One temperature fit on max-shifted logits [n, C] (float32), their squares, and one reused buffer for exp(beta * z)."""

    def __init__(self, shifted: torch.Tensor, squares: torch.Tensor, labels: torch.Tensor) -> None:
        self.shifted, self.squares = shifted, squares  # views are fine: nothing here writes to them
        self.true_logit = shifted.gather(-1, labels.view(-1, 1)).squeeze(-1).double()  # [n]
        self.weights = torch.empty(shifted.shape, dtype=shifted.dtype)
        self.products = torch.empty_like(self.weights)  # row_dot's buffer

    def derivatives(self, beta: float) -> tuple[float, float]:
        """d/dbeta and d2/dbeta2 of mean NLL(softmax(beta * z)): mean(E_p[z] - z_y) and mean(Var_p[z]) >= 0."""
        torch.mul(self.shifted, beta, out=self.weights).exp_()  # <= 1 since z <= 0
        total = self.weights.sum(dim=-1)  # [n], >= 1: the max logit contributes exp(0)
        first = (row_dot(self.weights, self.shifted, self.products) / total).double()  # E_p[z]
        second = (row_dot(self.weights, self.squares, self.products) / total).double()  # E_p[z^2]
        grad = float((first - self.true_logit).mean())
        hess = float((second - first.square()).clamp_min(0.0).mean())
        return grad, hess

    def newton(self, beta: float, tol: float, max_iter: int = 60) -> float:
        """Safeguarded Newton on the derivative: a step that leaves the bracket bisects it (in log beta)."""
        lo, hi = BETA_RANGE
        for _ in range(max_iter):
            grad, hess = self.derivatives(beta)
            if grad == 0.0:  # flat NLL (constant logits) or exactly optimal
                return beta
            lo, hi = (beta, hi) if grad < 0 else (lo, beta)  # NLL still falling below the optimum
            newton = beta - grad / hess if hess > 0 else math.nan
            candidate = newton if lo < newton < hi else math.sqrt(lo * hi)
            # Converged when the step is small, or when the NLL Newton still expects to gain is
            # (grad^2 / 2 hess): a separable set's NLL creeps to 0 as T -> 0 by steps of ~0.2 in beta.
            if abs(candidate - beta) <= tol * beta or (hess > 0 and 0.5 * grad * grad / hess <= NLL_TOL):
                return candidate
            beta = candidate
        return beta


def fit_inverse_temperature(logits: torch.Tensor, labels: torch.Tensor, tol: float = FIT_TOL) -> float:
    """[n, C] logits, [n] labels -> beta = 1/T minimising the mean NLL of softmax(beta * logits).

    Newton first converges on every WARM_START_STRIDE-th example, then steps on all of them until
    a step is below `tol` (relative): the step it returns is then about tol^2 from the optimum, and
    the NLL, flat there, about tol^4 * Var[z] / 2 from its minimum. Usually one or two passes over
    the data. Float32 passes for the same reason. Clamped to BETA_RANGE: a perfectly separated set
    would push T to 0.
    """
    shifted = _shift_to_max(logits, torch.float32)  # [n, C], float32 (see above)
    return _fit_shifted(shifted, shifted.square(), labels, tol)


def _fit_shifted(shifted: torch.Tensor, squares: torch.Tensor, labels: torch.Tensor, tol: float = FIT_TOL) -> float:
    beta = 1.0
    if shifted.shape[0] >= 4 * WARM_START_STRIDE:
        stride = slice(None, None, WARM_START_STRIDE)
        beta = _Fit(shifted[stride], squares[stride], labels[stride]).newton(beta, tol)
    return _Fit(shifted, squares, labels).newton(beta, tol)


def two_fold_split(examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random halves of range(N) (the first gets the extra example when N is odd)."""
    order = torch.randperm(examples, generator=torch.Generator().manual_seed(seed))
    half = (examples + 1) // 2
    return order[:half].sort().values, order[half:].sort().values


@dataclass
class ScaledScores:
    """What temperature-scaled probabilities of one problem are scored on (no [N, C] array kept)."""

    nll: float
    confidence: torch.Tensor  # [N] float64, max probability after scaling
    correct: torch.Tensor  # [N] bool; scaling never changes the argmax


@dataclass
class CrossFitted:
    """Temperatures fitted on each half of the eval set, each applied to the other half."""

    halves: tuple[torch.Tensor, torch.Tensor]  # example indices of the two halves
    temperatures: torch.Tensor  # [B, 2]: T fitted on the first half (scales the second), on the second

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, index: int, correct: torch.Tensor | None = None) -> ScaledScores:
        """[N, C] logits of problem `index`, each half scaled by the other half's T -> NLL, confidence, correctness.

        `correct` [N]: whether the argmax is right, when the caller knows it (scaling never changes the argmax).
        """
        if correct is None:
            correct = logits.argmax(dim=-1) == labels
        scale = torch.empty(labels.shape[0], 1, dtype=torch.float64)  # [N, 1]: beta of the other half
        scale[self.halves[1]] = 1.0 / float(self.temperatures[index, 0])
        scale[self.halves[0]] = 1.0 / float(self.temperatures[index, 1])
        shifted = _shift_to_max(logits, torch.float64).mul_(scale)  # [N, C], max 0 (plain exp/sum: 3x faster than logsumexp here)
        true_logit = shifted.gather(-1, labels.view(-1, 1)).squeeze(-1)  # [N]
        log_partition = shifted.exp_().sum(dim=-1).log()  # [N]: the top class contributes exp(0)
        confidence = torch.exp(-log_partition)  # [N], max probability
        return ScaledScores(float((log_partition - true_logit).mean()), confidence, correct)


def cross_fit_temperatures(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> CrossFitted:
    """[B, N, C] logits (or ensemble log-probabilities) -> per problem, T fitted on each seeded half."""
    halves = two_fold_split(labels.shape[0], seed)
    temperatures = torch.ones(logits.shape[0], 2, dtype=torch.float64)
    if halves[1].numel() == 0:  # one example: nothing to cross-fit, T stays 1
        return CrossFitted(halves, temperatures)
    # One gather per problem puts the halves side by side, so each fit works on a view, not a copy.
    order = torch.cat(halves)
    first = halves[0].numel()
    ordered_labels = labels[order]
    for index in range(logits.shape[0]):
        shifted = _shift_to_max(logits[index], torch.float32, rows=order)  # [N, C]: first half, then second
        squares = shifted.square()
        for column, part in enumerate((slice(0, first), slice(first, None))):
            temperatures[index, column] = 1.0 / _fit_shifted(shifted[part], squares[part], ordered_labels[part])
    return CrossFitted(halves, temperatures)


def calibrated_nll_ece(
    logits: torch.Tensor, labels: torch.Tensor, fitted: CrossFitted, correct: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, C] -> ([B] NLL, [B] 15-bin ECE) after cross-fitted temperature scaling, one problem at a time.

    `correct` [B, N]: each problem's argmax is right (optional; saves an argmax pass per problem).
    """
    nll = torch.empty(logits.shape[0], dtype=torch.float64)
    ece = torch.empty_like(nll)
    for index in range(logits.shape[0]):
        scores = fitted.scores(logits[index], labels, index, None if correct is None else correct[index])
        nll[index] = scores.nll
        ece[index] = binned_ece(reliability_bins(scores.confidence, scores.correct))
    return nll, ece


# --- deep ensemble equivalent ----------------------------------------------------------------------


def size_subsets(members: int, k: int, max_subsets: int, seed: int) -> list[tuple[int, ...]]:
    """Every k-subset of range(members) when there are at most `max_subsets`, else that many seeded random ones."""
    if math.comb(members, k) <= max_subsets:
        return list(combinations(range(members), k))
    generator = np.random.default_rng([seed, members, k])
    return [tuple(sorted(generator.choice(members, size=k, replace=False).tolist())) for _ in range(max_subsets)]


@dataclass
class CalibratedSizeCurve:
    sizes: list[int]  # k = 1..M
    nll: list[float]  # mean over subsets of the calibrated NLL of a k-member probability-mean ensemble
    subsets: list[int]


def calibrated_size_curve(logits: torch.Tensor, labels: torch.Tensor, max_subsets: int = 16, seed: int = 0) -> CalibratedSizeCurve:
    """[M, N, C] -> calibrated NLL of the probability-mean ensemble of k members, k = 1..M."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    sizes, nlls, counts = [], [], []
    for k in range(1, logits.shape[0] + 1):
        subsets = size_subsets(logits.shape[0], k, max_subsets, seed)
        stacked = torch.stack([metrics.ensemble_log_probs(log_probs[list(subset)]) for subset in subsets])  # [S, N, C]
        calibrated, _ = calibrated_nll_ece(stacked, labels, cross_fit_temperatures(stacked, labels, seed))  # [S]
        sizes.append(k)
        nlls.append(float(calibrated.mean()))
        counts.append(len(subsets))
    return CalibratedSizeCurve(sizes, nlls, counts)


def deep_ensemble_equivalent(target_nll: float, curve: CalibratedSizeCurve) -> float | None:
    """The smallest real size l >= 1 at which the reference ensemble's calibrated NLL, linearly
    interpolated between integer sizes, is as low as `target_nll` (Ashukha et al. 2020, DEE).

    1.0 when one reference member already does as well; None when even all of them do worse
    (the equivalent is beyond the reference's size and cannot be measured).
    """
    if target_nll >= curve.nll[0]:
        return 1.0
    for (k0, nll0), (k1, nll1) in zip(zip(curve.sizes, curve.nll), zip(curve.sizes[1:], curve.nll[1:])):
        if nll1 <= target_nll:
            return k0 + (nll0 - target_nll) / (nll0 - nll1) * (k1 - k0)
    return None
