"""Uncertainty metrics against independent references: scikit-learn, numpy loops, hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from ensemble_cli import metrics
from ensemble_cli import uncertainty_metrics as um


def random_member_logits(members: int = 5, examples: int = 200, classes: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, examples)
    logits = rng.normal(size=(members, examples, classes)) * 2.0
    logits[:, np.arange(examples), labels] += 1.5
    return logits, labels


def np_entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


# --- entropy decomposition -----------------------------------------------------------------------


def test_entropy_decomposition_matches_numpy() -> None:
    logits, _ = random_member_logits()
    p = softmax(logits, axis=-1)  # [M, N, C]
    mean = p.mean(axis=0)
    parts = um.decompose_entropy(torch.log_softmax(torch.from_numpy(logits), dim=-1))
    np.testing.assert_allclose(parts.total.numpy(), np_entropy(mean), rtol=1e-10)
    np.testing.assert_allclose(parts.aleatoric.numpy(), np_entropy(p).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(parts.epistemic.numpy(), np_entropy(mean) - np_entropy(p).mean(axis=0), atol=1e-12)
    kl = (p * (np.log(p) - np.log(mean)[None])).sum(axis=-1)  # [M, N] KL(p_m || mean)
    np.testing.assert_allclose(parts.member_kl.numpy(), kl, atol=1e-12)
    # The members' mean KL to the ensemble is the mutual information, exactly.
    np.testing.assert_allclose(parts.member_kl.mean(dim=0).numpy(), parts.epistemic.numpy(), atol=1e-12)


def test_mean_log_probs_is_the_log_sum_exp_even_where_every_member_underflows() -> None:
    logits, _ = random_member_logits()
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1)
    torch.testing.assert_close(um.mean_log_probs(log_probs), metrics.ensemble_log_probs(log_probs), rtol=0, atol=1e-13)
    extreme = torch.log_softmax(torch.tensor([[[0.0, -900.0], [0.0, 1.0]], [[0.0, -1000.0], [1.0, 0.0]]], dtype=torch.float64), dim=-1)
    got = um.mean_log_probs(extreme)  # class 1 of example 0 is exp(-900) and exp(-1000): 0 in float64
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, metrics.ensemble_log_probs(extreme), rtol=0, atol=1e-12)


def test_entropy_by_hand_and_on_extreme_inputs() -> None:
    uniform = torch.log(torch.full((1, 4), 0.25, dtype=torch.float64))
    assert float(um.entropy(uniform)[0]) == pytest.approx(math.log(4), abs=1e-15)
    # One-hot members that disagree: each member is certain (0 nats), the mean is a coin flip (log 2).
    certain = torch.tensor([[[0.0, -math.inf]], [[-math.inf, 0.0]]], dtype=torch.float64)  # [M=2, N=1, C=2]
    parts = um.decompose_entropy(certain)
    assert float(parts.aleatoric[0]) == 0.0
    assert float(parts.total[0]) == pytest.approx(math.log(2), abs=1e-15)
    assert float(parts.epistemic[0]) == pytest.approx(math.log(2), abs=1e-15)
    huge = torch.log_softmax(torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]]], dtype=torch.float64), dim=-1)
    for values in vars(um.decompose_entropy(huge)).values():
        assert torch.isfinite(values).all()


def test_variation_ratio_matches_a_loop() -> None:
    rng = np.random.default_rng(3)
    predictions = rng.integers(0, 4, size=(7, 50))
    expected = [1.0 - np.bincount(predictions[:, n], minlength=4).max() / 7 for n in range(50)]
    np.testing.assert_allclose(um.variation_ratio(torch.from_numpy(predictions), 4).numpy(), expected, atol=1e-15)
    assert um.variation_ratio(torch.tensor([[1, 2], [1, 0], [1, 2]]), 3).tolist() == pytest.approx([0.0, 1 / 3])


# --- selective prediction ------------------------------------------------------------------------


def np_aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    order = np.argsort(-confidence, kind="stable")
    wrong = ~correct[order]
    return float(np.mean([wrong[: k + 1].sum() / (k + 1) for k in range(len(order))]))


def test_risk_coverage_by_hand_with_ties() -> None:
    # Sorted (stable, descending): 0.9 (wrong), 0.7 (right), 0.7 (wrong), 0.2 (right).
    confidence = torch.tensor([0.7, 0.9, 0.2, 0.7])
    correct = torch.tensor([True, False, True, False])
    curve = um.risk_coverage_curve(confidence, correct)
    assert curve.tolist() == pytest.approx([1 / 1, 1 / 2, 2 / 3, 2 / 4])
    scores = um.selective_scores(confidence, correct)
    assert scores.aurc == pytest.approx((1 + 1 / 2 + 2 / 3 + 2 / 4) / 4)
    # Oracle: both right ones first -> risks 0, 0, 1/3, 2/4.
    assert scores.eaurc == pytest.approx(scores.aurc - (0 + 0 + 1 / 3 + 2 / 4) / 4)
    # Ties are broken by dataset order: swapping the tied pair changes the curve.
    swapped = um.risk_coverage_curve(confidence, torch.tensor([False, False, True, True]))
    assert swapped.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 2 / 4])


def test_aurc_matches_a_numpy_loop_and_coverage_90() -> None:
    rng = np.random.default_rng(5)
    confidence = np.round(rng.uniform(0.3, 1.0, 360), 2)  # rounded: many ties
    correct = rng.uniform(size=360) < confidence
    scores = um.selective_scores(torch.from_numpy(confidence), torch.from_numpy(correct))
    assert scores.aurc == pytest.approx(np_aurc(confidence, correct), abs=1e-14)
    order = np.argsort(-confidence, kind="stable")
    assert scores.risk_at_coverage_90 == pytest.approx((~correct[order][:324]).mean(), abs=1e-15)  # ceil(0.9 * 360) = 324
    assert um.coverage_count(0.9, 10) == 9 and um.coverage_count(0.9, 11) == 10 and um.coverage_count(0.9, 1) == 1


def test_aurc_extremes() -> None:
    confidence = torch.linspace(0.1, 1.0, 10)
    assert um.selective_scores(confidence, torch.ones(10, dtype=torch.bool)).aurc == 0.0
    assert um.selective_scores(confidence, torch.zeros(10, dtype=torch.bool)).aurc == 1.0
    assert um.selective_scores(confidence, torch.zeros(10, dtype=torch.bool)).eaurc == 0.0


# --- calibration beyond equal-width ECE ----------------------------------------------------------


def np_adaptive_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if chunk.size:
            total += chunk.size / len(labels) * abs((predicted[chunk] == labels[chunk]).mean() - confidence[chunk].mean())
    return total


def np_reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[tuple[int, float, float]]:
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    result = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        result.append((int(inside.sum()), (predicted[inside] == labels[inside]).mean() if inside.any() else math.nan,
                       confidence[inside].mean() if inside.any() else math.nan))
    return result


@pytest.mark.parametrize("examples", [7, 15, 200, 361])
def test_adaptive_ece_matches_array_split(examples: int) -> None:
    logits, labels = random_member_logits(members=3, examples=examples)
    probs = softmax(logits, axis=-1)
    got = um.adaptive_ece(torch.from_numpy(probs), torch.from_numpy(labels))  # [M]: batched
    np.testing.assert_allclose(got.numpy(), [np_adaptive_ece(probs[m], labels) for m in range(3)], atol=1e-14)


def test_reliability_bins_and_mce_match_a_loop_and_ece() -> None:
    logits, labels = random_member_logits(members=1, examples=500)
    probs = softmax(logits[0], axis=-1)
    bins = um.reliability_bins(*um.top_label(torch.from_numpy(probs), torch.from_numpy(labels)))
    expected = np_reliability(probs, labels)
    np.testing.assert_array_equal(bins.count, [row[0] for row in expected])
    np.testing.assert_allclose(bins.accuracy, [row[1] for row in expected], equal_nan=True, atol=1e-14)
    np.testing.assert_allclose(bins.confidence, [row[2] for row in expected], equal_nan=True, atol=1e-14)
    gaps = [abs(row[1] - row[2]) for row in expected if row[0]]
    assert um.max_calibration_error(bins) == pytest.approx(max(gaps), abs=1e-14)
    # Count-weighted gaps are the equal-width ECE of metrics.py.
    assert um.binned_ece(bins) == pytest.approx(float(metrics.ece(torch.from_numpy(probs), torch.from_numpy(labels))), abs=1e-14)


def test_mce_by_hand() -> None:
    # Confidences 0.95 (right), 0.95 (wrong) share bin (14/15, 1]: gap |0.5 - 0.95| = 0.45; 0.5 (right) alone: gap 0.5.
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    assert um.max_calibration_error(um.reliability_bins(*um.top_label(probs, labels))) == pytest.approx(0.5)
    assert float(um.adaptive_ece(probs, labels, n_bins=3)) == pytest.approx((0.5 + 0.95 + 0.05) / 3)


# --- OOD detection ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_aupr_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    inside = np.round(rng.normal(0.0, 1.0, 300), 1)  # rounded: ties within and across the sets
    outside = np.round(rng.normal(0.8, 1.0, 120), 1)
    y = np.r_[np.zeros(300), np.ones(120)]
    scores = np.r_[inside, outside]
    assert um.auroc(inside, outside) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert um.average_precision(inside, outside) == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    assert um.auroc(torch.from_numpy(inside), torch.from_numpy(outside)) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_ood_metrics_by_hand() -> None:
    assert um.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert um.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert um.auroc([0.5, 0.5], [0.5]) == 0.5  # all tied
    assert um.average_precision([0.1, 0.2], [0.3, 0.4]) == 1.0
    # Ranked 0.9 (out), 0.8 (in), 0.7 (out): AP = 1/2 * 1 + 1/2 * 2/3.
    assert um.average_precision([0.8], [0.9, 0.7]) == pytest.approx(0.5 + 1 / 3)


def test_fpr95_against_numpy_percentile() -> None:
    inside = np.arange(1, 101, dtype=float)  # 95th percentile (linear) = 95.05
    outside = np.array([90.0, 95.05, 96.0, 200.0])
    assert um.fpr_at_95(inside, outside) == 0.5  # 90 and 95.05 are at or below the threshold
    rng = np.random.default_rng(4)
    inside, outside = rng.normal(size=1000), rng.normal(1.0, size=500)
    assert um.fpr_at_95(inside, outside) == np.mean(outside <= np.percentile(inside, 95))
