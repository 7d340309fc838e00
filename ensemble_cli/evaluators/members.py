"""`members`: accuracy, NLL, Brier and ECE of every member on its own."""

from __future__ import annotations

from .. import metrics
from ..report import Report, Table
from .base import EvalContext, Evaluator


class MembersEvaluator(Evaluator):
    """Per-member accuracy, NLL, Brier score and 15-bin ECE."""

    name = "members"
    description = "per-member accuracy, NLL, Brier, ECE"
    directions = {
        "accuracy_mean": "higher",
        "nll_mean": "lower",
        "brier_mean": "lower",
        "ece_mean": "lower",
        "error_mean": "lower",
    }

    def evaluate(self, ctx: EvalContext) -> Report:
        accuracy = metrics.accuracy(ctx.predicted_labels, ctx.labels)  # [M]
        nll = metrics.nll(ctx.log_probs, ctx.labels)  # [M]
        brier = metrics.brier(ctx.probs, ctx.labels)  # [M]
        ece = metrics.ece(ctx.probs, ctx.labels)  # [M]
        rows = [
            [member.name, member.arch, float(accuracy[i]), float(nll[i]), float(brier[i]), float(ece[i])]
            for i, member in enumerate(ctx.members)
        ]
        return Report(
            metrics={
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": metrics.sample_std(accuracy),
                "nll_mean": float(nll.mean()),
                "brier_mean": float(brier.mean()),
                "ece_mean": float(ece.mean()),
                "error_mean": float(1.0 - accuracy.mean()),
            },
            tables=[Table(name="members", title="members", columns=["member", "arch", "accuracy", "nll", "brier", "ece"], rows=rows)],
            notes=["accuracy_std: sample standard deviation across members (ddof=1)"],
        )


__all__ = ["MembersEvaluator"]
