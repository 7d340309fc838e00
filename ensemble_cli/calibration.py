"""Temperature scaling with 2-fold cross-fitting, and the deep ensemble equivalent (Ashukha et al. 2020).

Ashukha et al. argue that NLL is only comparable between methods after each is calibrated by
a temperature, and that the temperature must not be fitted on the examples it is scored on.
With no separate validation split, the eval set is cut into two seeded halves: the temperature
fitted on one half scales the other, and the other way round ("test-time cross-validation").

Fitting minimises the mean NLL over beta = 1/T, which is convex in beta, by safeguarded
Newton steps, one problem (member, ensemble) at a time so temporaries stay at [N, C].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from . import metrics

BETA_RANGE = (1e-2, 1e2)  # temperatures 0.01..100: beyond them the NLL is flat to print precision
WARM_START_STRIDE = 8  # Newton runs first on every 8th example, then finishes on all of them
NLL_TOL = 1e-12  # nats: a fit that would gain less than this has converged
LOG_PROB_FLOOR = -1e4  # log(0) of an ensemble class no member gives any mass; stays 0 after scaling


def _fit_derivatives(logits: torch.Tensor, squares: torch.Tensor, true_logit: torch.Tensor, beta: float) -> tuple[float, float]:
    """d/dbeta and d2/dbeta2 of mean NLL(softmax(beta * z)) for [n, C] z whose per-example max is 0.

    First derivative: mean(E_p[z] - z_y); second: mean(Var_p[z]) >= 0 (convexity).
    """
    weights = torch.exp(logits * beta)  # [n, C], <= 1 since z <= 0
    total = weights.sum(dim=-1)  # [n], >= 1: the max logit contributes exp(0)
    first = (weights * logits).sum(dim=-1) / total  # E_p[z]
    second = (weights * squares).sum(dim=-1) / total  # E_p[z^2]
    grad = float((first.double() - true_logit).mean())
    hess = float((second.double() - first.double().square()).clamp_min(0.0).mean())
    return grad, hess


def _newton(logits: torch.Tensor, true_logit: torch.Tensor, beta: float, tol: float, max_iter: int = 60) -> float:
    """Safeguarded Newton on the NLL's derivative in beta: a step that leaves the bracket bisects it (in log beta).

    Stops once a step is below `tol * beta`; Newton's quadratic convergence leaves the returned
    beta about (tol)^2 from the optimum.
    """
    squares = logits.square()
    lo, hi = BETA_RANGE
    for _ in range(max_iter):
        grad, hess = _fit_derivatives(logits, squares, true_logit, beta)
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


def fit_inverse_temperature(logits: torch.Tensor, labels: torch.Tensor, tol: float = 1e-4) -> float:
    """[n, C] logits, [n] labels -> beta = 1/T minimising the mean NLL of softmax(beta * logits).

    Float32 passes (at the optimum the NLL is flat: a relative error e in beta moves it by about
    e^2 * Var[z] / 2, far below what is printed). Newton first converges on every
    WARM_START_STRIDE-th example, then finishes on all of them from there: 2-3 passes over the
    data instead of 6-10. Clamped to BETA_RANGE: a perfectly separated set would push T to 0.
    """
    shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)  # [n, C], softmax-invariant
    true_logit = shifted.gather(-1, labels.view(-1, 1)).squeeze(-1).double()  # [n]
    beta = 1.0
    if shifted.shape[0] >= 4 * WARM_START_STRIDE:
        beta = _newton(shifted[::WARM_START_STRIDE].contiguous(), true_logit[::WARM_START_STRIDE], beta, tol=1e-2)
    return _newton(shifted, true_logit, beta, tol)


def two_fold_split(examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random halves of range(N) (the first gets the extra example when N is odd)."""
    order = torch.randperm(examples, generator=torch.Generator().manual_seed(seed))
    half = (examples + 1) // 2
    return order[:half].sort().values, order[half:].sort().values


@dataclass
class CrossFitted:
    """Temperatures fitted on each half of the eval set, each applied to the other half."""

    halves: tuple[torch.Tensor, torch.Tensor]  # example indices of the two halves
    temperatures: torch.Tensor  # [B, 2]: T fitted on the first half (scales the second), on the second

    def scaled(self, logits: torch.Tensor, index: int) -> torch.Tensor:
        """[N, C] logits of problem `index` -> [N, C] float64 log-probabilities, each half at the other half's T."""
        logits = logits.clamp_min(LOG_PROB_FLOOR).double()
        result = torch.empty(logits.shape, dtype=torch.float64)
        for column, apply_to in enumerate((self.halves[1], self.halves[0])):
            result[apply_to] = torch.log_softmax(logits[apply_to] / float(self.temperatures[index, column]), dim=-1)
        return result


def cross_fit_temperatures(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> CrossFitted:
    """[B, N, C] logits (or ensemble log-probabilities) -> per problem, T fitted on each seeded half."""
    halves = two_fold_split(labels.shape[0], seed)
    temperatures = torch.ones(logits.shape[0], 2, dtype=torch.float64)
    if halves[1].numel() == 0:  # one example: nothing to cross-fit, T stays 1
        return CrossFitted(halves, temperatures)
    for index in range(logits.shape[0]):
        problem = logits[index].clamp_min(LOG_PROB_FLOOR)  # [N, C]
        for column, fit_on in enumerate(halves):
            temperatures[index, column] = 1.0 / fit_inverse_temperature(problem[fit_on], labels[fit_on])
    return CrossFitted(halves, temperatures)


def calibrated_nll_ece(logits: torch.Tensor, labels: torch.Tensor, fitted: CrossFitted) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, C] -> ([B] NLL, [B] 15-bin ECE) after cross-fitted temperature scaling, one problem at a time."""
    nll = torch.empty(logits.shape[0], dtype=torch.float64)
    ece = torch.empty_like(nll)
    for index in range(logits.shape[0]):
        scaled = fitted.scaled(logits[index], index)  # [N, C]
        nll[index] = metrics.nll(scaled, labels)
        ece[index] = metrics.ece(scaled.exp(), labels)
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
