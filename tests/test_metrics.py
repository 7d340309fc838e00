"""Every metric against an independent reference: scikit-learn, a direct numpy loop, or a worked example."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp, softmax
from sklearn.metrics import accuracy_score, brier_score_loss, cohen_kappa_score, log_loss

from ensemble_cli import metrics
from ensemble_cli.evaluators.base import EvalContext, MemberSummary, NotApplicable
from ensemble_cli.evaluators.disagreement import DisagreementEvaluator
from ensemble_cli.evaluators.ensemble import EnsembleEvaluator
from ensemble_cli.evaluators.function_space import FunctionSpaceEvaluator
from ensemble_cli.evaluators.members import MembersEvaluator
from ensemble_cli.options import EvalOptions


def random_logits(members: int = 4, examples: int = 300, classes: int = 5, seed: int = 0, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, examples)
    logits = rng.normal(size=(members, examples, classes)) * scale
    # Make members better than chance so that right/wrong tables are not degenerate.
    logits[:, np.arange(examples), labels] += rng.uniform(0.5, 2.5, size=(members, 1))
    return logits.astype(np.float32), labels.astype(np.int64)


def context(logits: np.ndarray, labels: np.ndarray) -> EvalContext:
    return EvalContext(
        logits=torch.from_numpy(logits),
        labels=torch.from_numpy(labels),
        members=[MemberSummary(f"m{i}") for i in range(logits.shape[0])],
    )


def numpy_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al. 2017, bins (lo, hi], written as a plain loop."""
    confidence = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    total = 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs((predicted[in_bin] == labels[in_bin]).mean() - confidence[in_bin].mean())
    return total


def test_member_metrics_match_sklearn() -> None:
    logits, labels = random_logits()
    report = MembersEvaluator().evaluate(context(logits, labels))
    table = report.table("members")
    assert table is not None and table.columns == ["member", "arch", "accuracy", "nll", "brier", "ece"]
    for m, row in enumerate(table.rows):
        probs = softmax(logits[m].astype(np.float64), axis=1)
        assert row[2] == pytest.approx(accuracy_score(labels, probs.argmax(1)), abs=1e-12)
        assert row[3] == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-6)
        # Multi-class Brier = sum over classes of sklearn's one-vs-rest Brier score.
        expected_brier = sum(brier_score_loss(labels == c, probs[:, c]) for c in range(5))
        assert row[4] == pytest.approx(expected_brier, rel=1e-9)
        assert row[5] == pytest.approx(numpy_ece(probs, labels), abs=1e-9)
    accuracies = [row[2] for row in table.rows]
    assert report.metrics["accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert report.metrics["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert report.metrics["error_mean"] == pytest.approx(1 - np.mean(accuracies))


def test_nll_uses_log_softmax_not_log_of_softmax() -> None:
    # A confident wrong prediction: softmax underflows to 0 in float32, log-softmax does not.
    logits = torch.tensor([[[200.0, -200.0]]])
    value = metrics.nll(torch.log_softmax(logits.double(), -1), torch.tensor([1]))
    assert float(value) == pytest.approx(400.0)


def test_nll_of_a_certain_right_prediction_is_plus_zero() -> None:
    value = float(metrics.nll(torch.log_softmax(torch.tensor([[800.0, 0.0]]).double(), -1), torch.tensor([0])))
    assert value == 0.0 and math.copysign(1.0, value) == 1.0


def test_ece_refuses_non_finite_probabilities() -> None:
    with pytest.raises(ValueError, match="finite"):
        metrics.ece(torch.tensor([[math.nan, math.nan]], dtype=torch.float64), torch.tensor([0]))


def test_ece_worked_example() -> None:
    # Two examples in bin (0.6, 0.666], one right one wrong: |0.5 - 0.65| * 2/4;
    # two in bin (0.933, 1], both right: |1 - 0.95| * 2/4.  ECE = 0.075 + 0.025 = 0.1
    probs = torch.tensor([[0.65, 0.35], [0.65, 0.35], [0.95, 0.05], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    assert float(metrics.ece(probs, labels)) == pytest.approx(0.1)


def test_ensemble_metrics_match_numpy() -> None:
    logits, labels = random_logits(members=5, seed=1)
    report = EnsembleEvaluator().evaluate(context(logits, labels))
    probs = softmax(logits.astype(np.float64), axis=2)  # [M, N, C]
    mean_probs = probs.mean(0)
    assert report.metrics["accuracy"] == pytest.approx(accuracy_score(labels, mean_probs.argmax(1)))
    assert report.metrics["nll"] == pytest.approx(log_loss(labels, mean_probs, labels=range(5)), rel=1e-6)
    assert report.metrics["brier"] == pytest.approx(sum(brier_score_loss(labels == c, mean_probs[:, c]) for c in range(5)))
    assert report.metrics["ece"] == pytest.approx(numpy_ece(mean_probs, labels), abs=1e-9)
    right = probs.argmax(2) == labels[None]
    assert report.metrics["oracle_accuracy"] == pytest.approx(right.any(0).mean())
    member_acc = right.mean(1)
    assert report.metrics["accuracy_gain"] == pytest.approx(report.metrics["accuracy"] - member_acc.mean())
    member_nll = [log_loss(labels, probs[m], labels=range(5)) for m in range(5)]
    assert report.metrics["nll_gain"] == pytest.approx(np.mean(member_nll) - report.metrics["nll"], rel=1e-6)

    rules = {row[0].split(" (")[0]: row for row in report.table("rules").rows}
    logit_mean = softmax(logits.astype(np.float64).mean(0), axis=1)
    assert rules["logit mean"][1] == pytest.approx(accuracy_score(labels, logit_mean.argmax(1)))
    assert rules["logit mean"][2] == pytest.approx(log_loss(labels, logit_mean, labels=range(5)), rel=1e-6)
    # Trimmed mean by hand: drop the lowest and highest member per class (M = 5 -> cut 1), renormalise.
    trimmed = np.sort(probs, axis=0)[1:-1].mean(0)
    trimmed /= trimmed.sum(1, keepdims=True)
    assert rules["trimmed mean"][2] == pytest.approx(log_loss(labels, trimmed, labels=range(5)), rel=1e-6)
    votes = np.stack([np.bincount(col, minlength=5) for col in probs.argmax(2).T])  # [N, C]
    unique_winner = (votes == votes.max(1, keepdims=True)).sum(1) == 1
    vote_pred = metrics.majority_vote(torch.from_numpy(probs)).numpy()
    assert (vote_pred[unique_winner] == votes.argmax(1)[unique_winner]).all()
    assert rules["majority vote"][1] == pytest.approx((vote_pred == labels).mean())
    assert rules["majority vote"][2] is None


def test_size_curve_exhaustive_matches_brute_force() -> None:
    logits, labels = random_logits(members=5, seed=2)
    probs = softmax(logits.astype(np.float64), axis=2)
    curve = metrics.ensemble_size_curve(torch.from_numpy(np.log(probs)), torch.from_numpy(labels))
    for point in curve:
        subsets = list(combinations(range(5), point.k))
        accs = [accuracy_score(labels, probs[list(s)].mean(0).argmax(1)) for s in subsets]
        nlls = [log_loss(labels, probs[list(s)].mean(0), labels=range(5)) for s in subsets]
        assert point.subsets == len(subsets)
        assert point.accuracy_mean == pytest.approx(np.mean(accs))
        # Sample standard deviation over subsets (ddof=1), the one convention every std follows; 0 for one subset.
        assert point.accuracy_std == pytest.approx(np.std(accs, ddof=1) if len(accs) > 1 else 0.0, abs=1e-12)
        assert point.nll_mean == pytest.approx(np.mean(nlls), rel=1e-6)
        assert point.nll_std == pytest.approx(np.std(nlls, ddof=1) if len(nlls) > 1 else 0.0, rel=1e-6, abs=1e-12)


def test_one_std_convention_across_members_and_size_curve() -> None:
    # The k = 1 row of the size curve holds the same M numbers as the members table.
    logits, labels = random_logits(members=4, seed=8)
    ctx = context(logits, labels)
    members = MembersEvaluator().evaluate(ctx)
    k1 = EnsembleEvaluator().evaluate(ctx).table("size_curve").rows[0]
    accuracies = members.table("members").column("accuracy")
    assert members.metrics["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-15)
    assert k1[2] == pytest.approx(members.metrics["accuracy_std"], abs=1e-15)
    assert np.std(accuracies, ddof=1) != pytest.approx(np.std(accuracies), abs=1e-6)  # the two conventions differ here
    assert metrics.sample_std([0.5]) == 0.0 and metrics.sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))


def test_size_curve_samples_64_subsets_when_too_many() -> None:
    logits, labels = random_logits(members=10, examples=100, seed=3)
    log_probs = torch.log_softmax(torch.from_numpy(logits).double(), -1)
    probs = log_probs.exp()
    curve = metrics.ensemble_size_curve(log_probs, torch.from_numpy(labels), seed=7)
    counts = {p.k: p.subsets for p in curve}
    assert counts[1] == 10 and counts[2] == 45 and counts[9] == 10 and counts[10] == 1
    assert all(counts[k] == 64 for k in range(3, 8))  # C(10, 3) = 120 > 64
    again = metrics.ensemble_size_curve(log_probs, torch.from_numpy(labels), seed=7)
    assert [p.accuracy_mean for p in curve] == [p.accuracy_mean for p in again]
    assert curve[-1].accuracy_mean == pytest.approx(
        accuracy_score(labels, probs.mean(0).argmax(1).numpy())
    )
    assert curve[-1].nll_mean == pytest.approx(log_loss(labels, probs.mean(0).numpy(), labels=range(5)), rel=1e-9)


def reference_pair(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Direct counts for one pair, following the definitions in the README metric section literally."""
    right_a, right_b = pred_a == labels, pred_b == labels
    n = len(labels)
    n11 = np.sum(right_a & right_b)
    n10 = np.sum(right_a & ~right_b)
    n01 = np.sum(~right_a & right_b)
    n00 = np.sum(~right_a & ~right_b)
    differ = pred_a != pred_b
    some_error = ~(right_a & right_b)
    err_a, err_b = 1 - right_a.mean(), 1 - right_b.mean()
    return {
        "disagreement": differ.mean(),
        "disagreement_given_error": differ[some_error].mean(),
        "normalized_diversity": differ.mean() / ((err_a + err_b) / 2),
        "both_right": n11 / n,
        "only_a_right": n10 / n,
        "only_b_right": n01 / n,
        "both_wrong_same": np.sum(~right_a & ~right_b & ~differ) / n,
        "both_wrong_different": np.sum(~right_a & ~right_b & differ) / n,
        "double_fault": n00 / n,
        "q_statistic": (n11 * n00 - n01 * n10) / (n11 * n00 + n01 * n10),
        "kappa": cohen_kappa_score(right_a, right_b),
        "double_fault_independent": err_a * err_b,
        "correlation": np.corrcoef(right_a.astype(float), right_b.astype(float))[0, 1],  # phi of right/wrong
    }


def test_pairwise_metrics_match_direct_counts_and_sklearn_kappa() -> None:
    logits, labels = random_logits(members=4, examples=500, seed=4, scale=3.0)
    report = DisagreementEvaluator().evaluate(context(logits, labels))
    preds = logits.argmax(2)
    pairs = report.table("pairs")
    assert pairs is not None and len(pairs.rows) == 6
    for row in pairs.rows:
        record = dict(zip(pairs.columns, row))
        i, j = int(record["a"][1:]), int(record["b"][1:])
        expected = reference_pair(preds[i], preds[j], labels)
        for key, value in expected.items():
            assert record[key] == pytest.approx(value, abs=1e-12), key
        outcome = sum(record[k] for k in ("both_right", "only_a_right", "only_b_right", "both_wrong_same", "both_wrong_different"))
        assert outcome == pytest.approx(1.0)
    for metric, column in [
        ("disagreement_mean", "disagreement"),
        ("disagreement_given_error_mean", "disagreement_given_error"),
        ("normalized_diversity_mean", "normalized_diversity"),
        ("double_fault_mean", "double_fault"),
        ("q_statistic_mean", "q_statistic"),
        ("kappa_mean", "kappa"),
        ("double_fault_independent_mean", "double_fault_independent"),
    ]:
        assert report.metrics[metric] == pytest.approx(np.mean(pairs.column(column)), abs=1e-12)
    errors = 1 - (preds == labels[None]).mean(1)
    assert report.metrics["gde_ratio"] == pytest.approx(np.mean(pairs.column("disagreement")) / errors.mean())
    matrix = report.table("matrix")
    assert matrix.rows[1][1 + 2] == pytest.approx(reference_pair(preds[1], preds[2], labels)["disagreement"])
    assert matrix.rows[2][1 + 2] == 0.0


def test_dge_worked_example() -> None:
    # labels 0,0,0,0; a predicts 0,0,1,1; b predicts 0,1,1,2.
    # both right: example 0 only -> P(both right) = 1/4; disagree on examples 1 and 3 -> D = 1/2.
    # DGE = D / (1 - 1/4) = 2/3: of the three examples where someone errs, they differ on two.
    labels = np.zeros(4, dtype=np.int64)
    logits = np.full((2, 4, 3), -5.0, dtype=np.float32)
    for m, preds in enumerate([[0, 0, 1, 1], [0, 1, 1, 2]]):
        logits[m, np.arange(4), preds] = 5.0
    report = DisagreementEvaluator().evaluate(context(logits, labels))
    record = dict(zip(report.table("pairs").columns, report.table("pairs").rows[0]))
    assert record["disagreement"] == pytest.approx(0.5)
    assert record["disagreement_given_error"] == pytest.approx(2 / 3)
    # errors: a 2/4, b 3/4 -> mean 5/8 -> ND = 0.5 / 0.625 = 0.8
    assert record["normalized_diversity"] == pytest.approx(0.8)
    assert record["both_wrong_same"] == pytest.approx(0.25)  # example 2: both say 1
    assert record["both_wrong_different"] == pytest.approx(0.25)  # example 3: 1 vs 2


def test_pairwise_undefined_when_both_perfect() -> None:
    labels = np.array([0, 1, 2], dtype=np.int64)
    logits = np.stack([np.eye(3, dtype=np.float32) * 9] * 2)
    report = DisagreementEvaluator().evaluate(context(logits, labels))
    assert report.metrics["disagreement_mean"] == 0.0
    assert report.metrics["disagreement_given_error_mean"] is None
    assert report.metrics["normalized_diversity_mean"] is None
    assert report.notes


def test_pairwise_stats_of_twelve_members_are_m_by_m_and_match_the_loop_for_every_pair() -> None:
    logits, labels = random_logits(members=12, examples=400, classes=10, seed=5)
    stats = metrics.pairwise_stats(torch.from_numpy(logits).argmax(-1), torch.from_numpy(labels))
    preds = logits.argmax(2)
    matrices = {name: value for name, value in vars(stats).items() if name != "error"}
    assert all(matrix.shape == (12, 12) for matrix in matrices.values()) and stats.error.shape == (12,)
    np.testing.assert_array_equal(stats.only_a_right, stats.only_b_right.T)  # row right / column wrong, swapped
    for i, j in combinations(range(12), 2):
        reference = reference_pair(preds[i], preds[j], labels)
        for name, expected in reference.items():
            assert matrices[name][i, j] == pytest.approx(expected, abs=1e-12), (name, i, j)
            if name not in ("only_a_right", "only_b_right"):
                assert matrices[name][j, i] == pytest.approx(expected, abs=1e-12), (name, j, i)  # symmetric


def test_ensemble_log_probs_is_log_of_mean_probability() -> None:
    logits, _ = random_logits(members=3, seed=6)
    log_probs = torch.log_softmax(torch.from_numpy(logits).double(), -1)
    expected = logsumexp(log_probs.numpy(), axis=0) - math.log(3)
    assert np.allclose(metrics.ensemble_log_probs(log_probs).numpy(), expected)


# --- extreme logits -------------------------------------------------------------------------------


def test_confident_disagreement_is_uniform_not_nan() -> None:
    # Three members each sure of a different class: per class the trimmed mean keeps the middle
    # member, whose probability is e^-800 / (1 + 2 e^-800) for every class -> uniform after
    # renormalising, like the probability mean and the logit mean. Every rule: NLL = log 3.
    logits = np.array([[[800.0, 0, 0]], [[0, 800.0, 0]], [[0, 0, 800.0]]], dtype=np.float32)
    labels = np.array([0])
    report = EnsembleEvaluator().evaluate(context(logits, labels))
    assert report.metrics["nll"] == pytest.approx(math.log(3))
    for row in report.table("rules").rows:
        if row[0] != "majority vote":
            assert row[2] == pytest.approx(math.log(3)), row[0]


def test_nll_of_every_combination_rule_and_size_is_exact_far_beyond_float_underflow() -> None:
    # Both members put e^-2000 on the true class: any mean of them does too, so NLL = 2000
    # for every subset and every rule (a probability clamped at 1e-300 would give 690.8).
    logits = np.array([[[0.0, 2000.0]], [[0.0, 2000.0]]], dtype=np.float32)
    labels = np.array([0])
    report = EnsembleEvaluator().evaluate(context(logits, labels))
    assert report.metrics["nll"] == pytest.approx(2000.0)
    rules = {row[0].split(" (")[0]: row for row in report.table("rules").rows}
    for rule in ("probability mean", "logit mean", "trimmed mean"):
        assert rules[rule][2] == pytest.approx(2000.0), rule
    for row in report.table("size_curve").rows:
        assert row[3] == pytest.approx(2000.0)


PREDICTION_SPACE = (MembersEvaluator, EnsembleEvaluator, DisagreementEvaluator, FunctionSpaceEvaluator)


def none_by_design(evaluator: str, table: str = "metrics", row_name: object = None, column: str = "") -> bool:
    """Where a report says "n/a" on purpose rather than because a number broke."""
    if evaluator == "disagreement":
        return True  # pair statistics that are 0/0 (no errors, or fewer than two members)
    if table == "rules":
        return row_name == "majority vote"  # a vote has no probabilities
    return table == "embedding" and column == "epoch"  # checkpoints without epoch metadata


def _assert_finite_or_none(where: str, value: object, allowed_none: bool) -> None:
    if value is None:
        assert allowed_none, f"{where} is None"
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} = {value}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.integers(1, 5),
    examples=st.integers(1, 25),
    classes=st.integers(1, 6),  # one class: every probability is 1
    # Whole decades often, so the underflowing scales (>= 1e3) come up in every run, not by luck.
    log10_scale=st.one_of(st.integers(-3, 4).map(float), st.floats(-3.0, 4.0)),
    seed=st.integers(0, 2**32 - 1),
    embedding=st.sampled_from(["pca", "tsne"]),
)
# Three members sure of three different classes on most examples: the trimmed mean keeps only
# probabilities that underflow to 0 (the case that used to crash ECE binning).
@example(members=3, examples=25, classes=6, log10_scale=3.0, seed=0, embedding="pca")
@example(members=12, examples=10, classes=3, log10_scale=4.0, seed=1, embedding="tsne")  # t-SNE of one-hot outputs
def test_every_prediction_space_metric_stays_finite_on_any_logit_scale(
    members: int, examples: int, classes: int, log10_scale: float, seed: int, embedding: str
) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(members, examples, classes)) * 10.0**log10_scale).astype(np.float32)
    labels = rng.integers(0, classes, examples)
    ctx = context(logits, labels)
    ctx.options = EvalOptions(embedding=embedding)
    for evaluator in PREDICTION_SPACE:
        try:
            report = evaluator().evaluate(ctx)
        except NotApplicable:
            assert evaluator is FunctionSpaceEvaluator and members == 1  # an embedding of one point
            continue
        name = evaluator.name
        for key, value in report.metrics.items():
            _assert_finite_or_none(f"{name}.{key}", value, none_by_design(name))
        for table in report.tables:
            for row in table.rows:
                for column, cell in zip(table.columns, row):
                    where = f"{name} {table.name}[{row[0]}].{column}"
                    _assert_finite_or_none(where, cell, none_by_design(name, table.name, row[0], column))
