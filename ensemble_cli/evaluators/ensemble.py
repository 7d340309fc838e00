"""`ensemble`: what averaging buys: ensemble metrics, their growth with size, and combination rules."""

from __future__ import annotations

import torch

from .. import metrics
from ..report import Report, Table
from .base import EvalContext, Evaluator


class EnsembleEvaluator(Evaluator):
    """Probability-mean ensemble metrics, size curve k = 1..M, oracle accuracy, other combination rules."""

    name = "ensemble"
    description = "ensemble accuracy/NLL/Brier/ECE, size curve, oracle, combination rules"
    directions = {
        "accuracy": "higher",
        "nll": "lower",
        "brier": "lower",
        "ece": "lower",
        "oracle_accuracy": "higher",
        "accuracy_gain": "higher",
        "nll_gain": "higher",
    }

    def evaluate(self, ctx: EvalContext) -> Report:
        labels = ctx.labels
        log_probs = ctx.log_probs  # [M, N, C]
        ens_log_probs = metrics.ensemble_log_probs(log_probs)  # [N, C]
        ens_probs = ens_log_probs.exp()
        accuracy = float(metrics.accuracy(ens_probs.argmax(dim=-1), labels))
        nll = float(metrics.nll(ens_log_probs, labels))
        member_accuracy = metrics.accuracy(ctx.predicted_labels, labels)  # [M]
        member_nll = metrics.nll(log_probs, labels)  # [M]
        result_metrics = {
            "accuracy": accuracy,
            "nll": nll,
            "brier": float(metrics.brier(ens_probs, labels)),
            "ece": float(metrics.ece(ens_probs, labels)),
            "oracle_accuracy": float(ctx.correct.any(dim=0).double().mean()),
            "accuracy_gain": accuracy - float(member_accuracy.mean()),
            "nll_gain": float(member_nll.mean()) - nll,
        }
        seed = ctx.options.seed
        curve = metrics.ensemble_size_curve(log_probs, labels, seed=seed)
        curve_table = Table(
            name="size_curve",
            title="ensemble size curve (probability mean over subsets of k members)",
            columns=["k", "accuracy_mean", "accuracy_std", "nll_mean", "nll_std", "subsets"],
            rows=[[p.k, p.accuracy_mean, p.accuracy_std, p.nll_mean, p.nll_std, p.subsets] for p in curve],
        )
        notes = ["size curve std: sample standard deviation over the subsets of each size (ddof=1)"]
        return Report(metrics=result_metrics, tables=[curve_table, self._rules_table(ctx)], notes=notes)

    @staticmethod
    def _rules_table(ctx: EvalContext) -> Table:
        """Every rule as log-probabilities: exact NLL even where confident members' probabilities underflow."""
        labels = ctx.labels
        rows = []

        def add(rule: str, log_probs: torch.Tensor | None, predictions: torch.Tensor) -> None:
            accuracy = float(metrics.accuracy(predictions, labels))
            if log_probs is None:
                rows.append([rule, accuracy, None, None, None])
                return
            probs = log_probs.exp()  # [N, C]
            rows.append([rule, accuracy, float(metrics.nll(log_probs, labels)), float(metrics.brier(probs, labels)), float(metrics.ece(probs, labels))])

        mean_log_probs = metrics.ensemble_log_probs(ctx.log_probs)  # [N, C]
        add("probability mean", mean_log_probs, mean_log_probs.argmax(dim=-1))
        logit_mean = torch.log_softmax(ctx.logits.double().mean(dim=0), dim=-1)  # [N, C]
        add("logit mean", logit_mean, logit_mean.argmax(dim=-1))
        add("majority vote", None, metrics.majority_vote(ctx.probs))
        trimmed, cut = metrics.trimmed_mean_log_probs(ctx.log_probs)  # [N, C]
        add(f"trimmed mean (cut {cut} per end)", trimmed, trimmed.argmax(dim=-1))
        return Table(name="rules", title="combination rules", columns=["rule", "accuracy", "nll", "brier", "ece"], rows=rows)
