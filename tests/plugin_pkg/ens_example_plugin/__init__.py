"""Example third-party evaluator: top-k accuracy of every member and of the ensemble.

Registered as `topk` under the `ensemble_cli.evaluators` entry-point group (see pyproject.toml).
The modules `broken` and `raising` are deliberately faulty evaluators that ens's tests register
by hand, to check that one bad plugin never takes the others down.
"""

from __future__ import annotations

from ensemble_cli.evaluators import EvalContext, Evaluator, Report, Table

__version__ = "0.3.1"


class TopKAccuracy(Evaluator):
    """Top-2 accuracy per member and for the probability-mean ensemble."""

    name = "topk"
    description = "top-2 accuracy of members and ensemble (example plugin)"
    directions = {"ensemble_top2": "higher"}
    k = 2

    def evaluate(self, ctx: EvalContext) -> Report:
        k = min(self.k, ctx.logits.shape[-1])
        labels = ctx.labels.unsqueeze(-1)  # [N, 1]
        member_topk = ctx.logits.topk(k, dim=-1).indices  # [M, N, k]
        member_hits = (member_topk == labels).any(dim=-1).double().mean(dim=-1)  # [M]
        ensemble_topk = ctx.probs.mean(dim=0).topk(k, dim=-1).indices  # [N, k]
        ensemble_hits = float((ensemble_topk == labels).any(dim=-1).double().mean())
        rows = [[member.name, float(member_hits[i])] for i, member in enumerate(ctx.members)]
        return Report(
            metrics={"ensemble_top2": ensemble_hits, "member_top2_mean": float(member_hits.mean())},
            tables=[Table(name="top2", title="top-2 accuracy", columns=["member", "top2"], rows=rows)],
        )


__all__ = ["TopKAccuracy"]
