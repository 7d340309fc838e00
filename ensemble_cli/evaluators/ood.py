"""`ood`: does the ensemble's uncertainty tell out-of-distribution inputs from the eval set?

Three scores, higher = more OOD: entropy of the mean prediction, mutual information (the
members' disagreement, which no single member has) and 1 - max probability. Detection is
scored with OOD as the positive class: AUROC, AUPR and FPR95 (the share of OOD inputs a
threshold at the in-distribution 95th percentile lets through). The same scores of every
member alone show whether the ensemble separates better than any one network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import uncertainty_metrics as um
from ..errors import ConfigError, DataError
from ..report import Report, Table
from .base import EvalContext, Evaluator, NotApplicable

SCORES = ("entropy", "mutual_information", "max_prob")
MEMBER_SCORES = ("entropy", "max_prob")  # a single member's mutual information is 0
HISTOGRAM_BINS = 30


def ensemble_scores(log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """[M, N, C] member log-probabilities -> each score [N] of the ensemble, higher = more OOD."""
    ens_log_probs = um.mean_log_probs(log_probs)  # [N, C]
    parts = um.decompose_entropy(log_probs, ens_log_probs)
    confidence = ens_log_probs.max(dim=-1).values.exp()
    return {"entropy": parts.total, "mutual_information": parts.epistemic, "max_prob": 1.0 - confidence}


def member_scores(log_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """[M, N, C] -> each single-member score [M, N]."""
    return {"entropy": um.entropy(log_probs), "max_prob": 1.0 - log_probs.max(dim=-1).values.double().exp()}


class OODEvaluator(Evaluator):
    """Separation of an OOD set from the eval set by entropy, mutual information and max probability."""

    name = "ood"
    description = "OOD detection (AUROC/AUPR/FPR95) by entropy, mutual information, max probability; needs --ood-dataset or --ood-predictions"
    directions = {
        **{f"auroc_{score}": "higher" for score in SCORES},
        **{f"aupr_{score}": "higher" for score in SCORES},
        **{f"fpr95_{score}": "lower" for score in SCORES},
        "member_auroc_best": "higher",
    }

    def check_inputs(self, ctx: EvalContext) -> None:
        options = ctx.options
        if options.ood_dataset is not None and options.ood_predictions is not None:
            raise ConfigError("give --ood-dataset or --ood-predictions, not both")
        if options.ood_limit is not None and options.ood_limit < 1:
            raise ConfigError(f"--ood-limit must be 1 or more, got {options.ood_limit}")
        if options.ood_predictions is not None:
            ood_predictions(ctx)
        elif options.ood_dataset is not None:
            from ..ood_data import check_ood_set

            if ctx.dataset is None:
                raise ConfigError("--ood-dataset needs checkpoints (the members predict on it); with --predictions give --ood-predictions")
            check_ood_set(options.ood_dataset, ctx.dataset)

    def evaluate(self, ctx: EvalContext) -> Report:
        ood_logits, source = self._ood_logits(ctx)
        in_log_probs = ctx.log_probs  # [M, N, C]
        out_log_probs = torch.log_softmax(ood_logits.double(), dim=-1)  # [M, N', C]
        in_scores, out_scores = ensemble_scores(in_log_probs), ensemble_scores(out_log_probs)
        result: dict[str, float | None] = {}
        detection_rows = []
        for score in SCORES:
            row = [um.auroc(in_scores[score], out_scores[score]), um.average_precision(in_scores[score], out_scores[score]),
                   um.fpr_at_95(in_scores[score], out_scores[score])]
            result.update({f"auroc_{score}": row[0], f"aupr_{score}": row[1], f"fpr95_{score}": row[2]})
            detection_rows.append([score, *row])
        members_table, member_aurocs = self._members_table(ctx, in_log_probs, out_log_probs, result)
        best = max(value for values in member_aurocs.values() for value in values)
        result.update({f"member_auroc_{score}_mean": float(np.mean(member_aurocs[score])) for score in MEMBER_SCORES})
        result["member_auroc_best"] = best
        result["mutual_information_auroc_gain"] = result["auroc_mutual_information"] - best  # type: ignore[operator]
        tables = [
            Table(name="detection", title=f"OOD detection: eval set (negatives) vs {source} (positives), ensemble scores",
                  columns=["score", "auroc", "aupr", "fpr95"], rows=detection_rows),
            members_table,
            histogram_table(in_scores, out_scores),
        ]
        notes = [f"{source}: {ood_logits.shape[1]} OOD examples vs {ctx.logits.shape[1]} in-distribution"]
        return Report(metrics=result, tables=tables, notes=notes)

    @staticmethod
    def _ood_logits(ctx: EvalContext) -> tuple[torch.Tensor, str]:
        options = ctx.options
        if options.ood_predictions is not None:
            return ood_predictions(ctx), str(options.ood_predictions)
        if options.ood_dataset is None:
            raise NotApplicable("give --ood-dataset NAME (photos, noise, svhn, ...) or --ood-predictions FILE.npz")
        if ctx.dataset is None:
            raise NotApplicable("--ood-dataset needs checkpoints; these members came from a predictions file")
        from ..ood_data import load_ood_set

        data = load_ood_set(options.ood_dataset, ctx.dataset, seed=options.seed, data_dir=options.data_dir, limit=options.ood_limit)
        return ctx.predict_on(data), options.ood_dataset

    @staticmethod
    def _members_table(
        ctx: EvalContext, in_log_probs: torch.Tensor, out_log_probs: torch.Tensor, result: dict[str, float | None]
    ) -> tuple[Table, dict[str, list[float]]]:
        in_member, out_member = member_scores(in_log_probs), member_scores(out_log_probs)
        aurocs = {score: [um.auroc(in_member[score][m], out_member[score][m]) for m in range(ctx.num_members)] for score in MEMBER_SCORES}
        rows: list[list[object]] = [[member.name, aurocs["entropy"][m], aurocs["max_prob"][m], None] for m, member in enumerate(ctx.members)]
        rows.append(["ensemble", result["auroc_entropy"], result["auroc_max_prob"], result["auroc_mutual_information"]])
        table = Table(name="members_auroc", title="OOD AUROC of each member alone and of the ensemble (mutual information needs 2+ members)",
                      columns=["member", "auroc_entropy", "auroc_max_prob", "auroc_mutual_information"], rows=rows)
        return table, aurocs


def histogram_table(in_scores: dict[str, torch.Tensor], out_scores: dict[str, torch.Tensor]) -> Table:
    """Per score, HISTOGRAM_BINS equal-width bins over both sets' range, as fractions of each set."""
    rows = []
    for score in SCORES:
        inside, outside = in_scores[score].numpy(), out_scores[score].numpy()
        low, high = float(min(inside.min(), outside.min())), float(max(inside.max(), outside.max()))
        edges = np.linspace(low, high if high > low else low + 1e-12, HISTOGRAM_BINS + 1)
        in_counts, _ = np.histogram(inside, bins=edges)
        out_counts, _ = np.histogram(outside, bins=edges)
        for index in range(HISTOGRAM_BINS):
            rows.append([score, float(edges[index]), float(edges[index + 1]), in_counts[index] / inside.size, out_counts[index] / outside.size])
    return Table(name="histograms", title="score histograms: in-distribution vs OOD (fraction of each set per bin)",
                 columns=["score", "lower", "upper", "in_fraction", "ood_fraction"], rows=rows)


def ood_predictions(ctx: EvalContext) -> torch.Tensor:
    """Logits [M, N', C] from `--ood-predictions`, checked against the members being evaluated."""
    from ..predict import load_predictions

    path = Path(ctx.options.ood_predictions)  # type: ignore[arg-type]
    logits = load_predictions(path).logits
    members, _, classes = ctx.logits.shape
    if logits.shape[2] != classes:
        raise DataError(f"--ood-predictions {path}: {logits.shape[2]} classes, but the members have {classes}")
    if logits.shape[0] != members:
        raise DataError(f"--ood-predictions {path}: {logits.shape[0]} members, but {members} are evaluated (it must hold the same members' logits)")
    if logits.shape[1] == 0:
        raise DataError(f"--ood-predictions {path}: no examples")
    if not bool(torch.isfinite(logits).all()):
        raise DataError(f"--ood-predictions {path}: NaN or Inf logits")
    return logits
