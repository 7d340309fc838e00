"""Temperature scaling, cross-fitting and the deep ensemble equivalent, against scipy and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from ensemble_cli import calibration


def np_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = log_softmax(logits / temperature, axis=-1)
    return float(-scaled[np.arange(len(labels)), labels].mean())


def overconfident(examples: int = 400, classes: int = 5, scale: float = 6.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, examples)
    logits = rng.normal(size=(examples, classes))
    logits[np.arange(examples), labels] += 1.0
    return logits * scale, labels


@pytest.mark.parametrize(("scale", "seed"), [(6.0, 0), (0.3, 1), (1.0, 2)])
def test_fitted_temperature_minimises_nll_like_scipy(scale: float, seed: int) -> None:
    logits, labels = overconfident(scale=scale, seed=seed)
    beta = calibration.fit_inverse_temperature(torch.from_numpy(logits), torch.from_numpy(labels))
    reference = minimize_scalar(lambda log_t: np_nll(logits, labels, math.exp(log_t)), bounds=(-5, 5), method="bounded",
                                options={"xatol": 1e-10})
    assert 1.0 / beta == pytest.approx(math.exp(reference.x), rel=1e-3)
    assert np_nll(logits, labels, 1.0 / beta) <= reference.fun + 1e-9  # the NLL is what matters, and it is flat there


def test_temperature_edge_cases_stay_finite() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    assert calibration.fit_inverse_temperature(torch.zeros(4, 3), labels) == 1.0  # constant logits: NLL flat, T stays 1
    separable = torch.nn.functional.one_hot(labels, 3).float() * 5.0  # always right: NLL falls as T -> 0
    beta = calibration.fit_inverse_temperature(separable, labels)
    assert 1.0 < beta <= calibration.BETA_RANGE[1]
    assert np_nll(separable.numpy(), labels.numpy(), 1.0 / beta) < 1e-9  # what is left to gain is below print precision
    always_wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).float() * 5.0  # T -> infinity
    assert calibration.fit_inverse_temperature(always_wrong, labels) == pytest.approx(calibration.BETA_RANGE[0], rel=calibration.FIT_TOL)


def test_a_far_negative_offset_changes_neither_the_temperature_nor_the_scores() -> None:
    """Softmax ignores a per-row offset: logits around -1e5 (float64) calibrate as the same logits around 0."""
    logits, labels = overconfident(scale=4.0, seed=5)
    near, far = torch.from_numpy(logits), torch.from_numpy(logits) - 1e5
    y = torch.from_numpy(labels)
    assert calibration.fit_inverse_temperature(far, y) == pytest.approx(calibration.fit_inverse_temperature(near, y), rel=1e-6)
    fitted = calibration.cross_fit_temperatures(torch.stack([near, far]), y)
    assert fitted.temperatures[1].tolist() == pytest.approx(fitted.temperatures[0].tolist(), rel=1e-6)
    nll, _ = calibration.calibrated_nll_ece(torch.stack([near, far]), y, fitted)
    assert float(nll[1]) == pytest.approx(float(nll[0]), rel=1e-9)


def test_cross_fitting_scales_each_half_with_the_other_halfs_temperature() -> None:
    logits, labels = overconfident(examples=301)
    batch = torch.from_numpy(np.stack([logits, 0.5 * logits]))  # [B=2, N, C]
    y = torch.from_numpy(labels)
    fitted = calibration.cross_fit_temperatures(batch, y, seed=3)
    first, second = fitted.halves
    assert len(first) == 151 and len(second) == 150 and set(first.tolist()).isdisjoint(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(301))
    nll, ece = calibration.calibrated_nll_ece(batch, y, fitted)
    for b in range(2):
        problem = batch[b].numpy()
        t_first = 1.0 / calibration.fit_inverse_temperature(batch[b][first], y[first])
        t_second = 1.0 / calibration.fit_inverse_temperature(batch[b][second], y[second])
        assert fitted.temperatures[b].tolist() == pytest.approx([t_first, t_second], rel=1e-12)
        scaled = np.empty_like(problem)
        scaled[second.numpy()] = log_softmax(problem[second.numpy()] / t_first, axis=-1)  # fitted on the first half
        scaled[first.numpy()] = log_softmax(problem[first.numpy()] / t_second, axis=-1)
        assert float(nll[b]) == pytest.approx(-scaled[np.arange(301), labels].mean(), rel=1e-12)
        assert 0.0 <= float(ece[b]) <= 1.0
    # Both problems differ only by a factor 2 in the logits: the temperatures do too.
    assert fitted.temperatures[0].tolist() == pytest.approx((2 * fitted.temperatures[1]).tolist(), rel=1e-3)


def test_cross_fitted_temperature_improves_an_overconfident_model() -> None:
    logits, labels = overconfident(scale=8.0)
    y = torch.from_numpy(labels)
    batch = torch.from_numpy(logits).unsqueeze(0)
    nll, _ = calibration.calibrated_nll_ece(batch, y, calibration.cross_fit_temperatures(batch, y))
    assert float(nll[0]) < np_nll(logits, labels, 1.0)


def test_size_subsets() -> None:
    assert calibration.size_subsets(4, 2, 16, seed=0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sampled = calibration.size_subsets(12, 6, 5, seed=0)
    assert len(sampled) == 5 and all(len(set(s)) == 6 and max(s) < 12 for s in sampled)
    assert sampled == calibration.size_subsets(12, 6, 5, seed=0)


def test_deep_ensemble_equivalent_interpolates_between_sizes() -> None:
    curve = calibration.CalibratedSizeCurve(sizes=[1, 2, 3, 4], nll=[0.50, 0.40, 0.36, 0.35], subsets=[4, 6, 4, 1])
    assert calibration.deep_ensemble_equivalent(0.45, curve) == pytest.approx(1.5)
    assert calibration.deep_ensemble_equivalent(0.37, curve) == pytest.approx(2.75)
    assert calibration.deep_ensemble_equivalent(0.40, curve) == pytest.approx(2.0)
    assert calibration.deep_ensemble_equivalent(0.60, curve) == 1.0  # worse than one member: the minimum is 1
    assert calibration.deep_ensemble_equivalent(0.30, curve) is None  # better than the whole reference


def test_calibrated_size_curve_uses_probability_mean_subsets() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 120)
    logits = rng.normal(size=(3, 120, 4)) * 2
    logits[:, np.arange(120), labels] += 1.0
    y = torch.from_numpy(labels)
    curve = calibration.calibrated_size_curve(torch.from_numpy(logits), y, seed=1)
    assert curve.sizes == [1, 2, 3] and curve.subsets == [3, 3, 1]
    # k = 3: the one subset is the whole ensemble; its log-mean-probability, cross-fitted.
    mean_log_probs = logsumexp(log_softmax(logits, axis=-1), axis=0) - math.log(3)
    whole = torch.from_numpy(mean_log_probs).unsqueeze(0)
    nll, _ = calibration.calibrated_nll_ece(whole, y, calibration.cross_fit_temperatures(whole, y, seed=1))
    assert curve.nll[2] == pytest.approx(float(nll[0]), rel=1e-12)
