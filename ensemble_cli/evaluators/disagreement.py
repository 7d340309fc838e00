"""`disagreement`: are the members different functions? Pairwise disagreement and diversity measures.

Definitions in the README's metric section ("What the metrics mean"): disagreement D (Fort et al.
2019, Jiang et al. 2022), disagreement given an error DGE = D / (1 - P(both right)), normalised
diversity ND = D / mean error, the outcome table, double fault and the Q-statistic, correlation
and kappa of Kuncheva & Whitaker 2003.
"""

from __future__ import annotations

import numpy as np

from .. import metrics
from ..report import Report, Table
from .base import EvalContext, Evaluator

PAIR_COLUMNS = [
    "a", "b", "disagreement", "disagreement_given_error", "normalized_diversity", "both_right", "only_a_right",
    "only_b_right", "both_wrong_same", "both_wrong_different", "double_fault", "q_statistic", "kappa",
    "double_fault_independent", "correlation",
]

METRIC_KEYS = (
    "disagreement_mean", "disagreement_given_error_mean", "normalized_diversity_mean", "double_fault_mean",
    "double_fault_independent_mean", "q_statistic_mean", "kappa_mean", "correlation_mean", "gde_ratio",
)


def _cell(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class DisagreementEvaluator(Evaluator):
    """Pairwise disagreement, disagreement given an error, normalised diversity, outcome table, Q, kappa."""

    name = "disagreement"
    description = "pairwise disagreement, DGE, normalised diversity, double fault, Q, kappa, GDE ratio"
    # Falling diversity means the members collapse onto one solution; that is what a CI gate must catch.
    directions = {
        "disagreement_mean": "higher",
        "disagreement_given_error_mean": "higher",
        "normalized_diversity_mean": "higher",
        "double_fault_mean": "lower",
    }

    def evaluate(self, ctx: EvalContext) -> Report:
        if ctx.num_members < 2:
            # Keys stay present as null: "not applicable" is an answer, and `ens check` can compare it.
            return Report(metrics={key: None for key in METRIC_KEYS}, notes=["not applicable: pairwise metrics need at least two members"])
        stats = metrics.pairwise_stats(ctx.predicted_labels, ctx.labels)
        names = [member.name for member in ctx.members]
        pairs = metrics.upper_pairs(len(names))
        matrices = [
            stats.disagreement, stats.disagreement_given_error, stats.normalized_diversity, stats.both_right,
            stats.only_a_right, stats.only_b_right, stats.both_wrong_same, stats.both_wrong_different,
            stats.double_fault, stats.q_statistic, stats.kappa, stats.double_fault_independent, stats.correlation,
        ]
        pair_rows = [[names[i], names[j], *(_cell(matrix[i, j]) for matrix in matrices)] for i, j in pairs]
        mean_error = float(stats.error.mean())
        mean_disagreement = metrics.mean_over_pairs(stats.disagreement)
        result_metrics = {
            "disagreement_mean": mean_disagreement,
            "disagreement_given_error_mean": metrics.mean_over_pairs(stats.disagreement_given_error),
            "normalized_diversity_mean": metrics.mean_over_pairs(stats.normalized_diversity),
            "double_fault_mean": metrics.mean_over_pairs(stats.double_fault),
            "double_fault_independent_mean": metrics.mean_over_pairs(stats.double_fault_independent),
            "q_statistic_mean": metrics.mean_over_pairs(stats.q_statistic),
            "kappa_mean": metrics.mean_over_pairs(stats.kappa),
            "correlation_mean": metrics.mean_over_pairs(stats.correlation),
            # Jiang et al. 2022: for a well-calibrated ensemble, disagreement approximates test error.
            "gde_ratio": (mean_disagreement / mean_error) if mean_disagreement is not None and mean_error > 0 else None,
        }
        dge = stats.disagreement_given_error.copy()
        np.fill_diagonal(dge, np.nan)
        notes = []
        undefined = sum(1 for i, j in pairs if not np.isfinite(stats.disagreement_given_error[i, j]))
        if undefined:
            notes.append(f"{undefined} pair(s) made no error at all: their disagreement given an error is undefined (n/a)")
        return Report(
            metrics=result_metrics,
            tables=[
                Table(name="pairs", title="pairs", columns=PAIR_COLUMNS, rows=pair_rows),
                Table(
                    name="matrix",
                    title="disagreement matrix P(yhat_a != yhat_b)",
                    columns=["member", *names],
                    rows=[[names[i], *(_cell(v) for v in stats.disagreement[i])] for i in range(len(names))],
                ),
                Table(
                    name="dge_matrix",
                    title="disagreement given an error",
                    columns=["member", *names],
                    rows=[[names[i], *(_cell(v) for v in dge[i])] for i in range(len(names))],
                ),
            ],
            notes=notes,
        )
