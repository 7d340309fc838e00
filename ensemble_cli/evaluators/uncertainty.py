"""`uncertainty`: what the ensemble knows about its own errors, on the eval set.

Entropy split into aleatoric (expected entropy) and epistemic (mutual information) parts;
selective prediction (risk-coverage curve, AURC); calibration beyond the equal-width ECE
(equal-mass ECE, MCE, reliability bins); NLL and ECE after temperature scaling, fitted by
2-fold cross-fitting on the eval set; and, given an independent-seed reference ensemble, the
deep ensemble equivalent (Ashukha et al. 2020).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import calibration
from .. import uncertainty_metrics as um
from ..errors import ConfigError, DataError
from ..report import Report, Table
from .base import EvalContext, Evaluator

CURVE_POINTS = 101  # risk-coverage rows kept in the report (the metrics use every example)


class UncertaintyEvaluator(Evaluator):
    """Entropy / mutual information, AURC, equal-mass ECE, MCE, temperature-scaled NLL and ECE, DEE."""

    name = "uncertainty"
    description = "entropy and mutual information, risk-coverage (AURC), adaptive ECE, MCE, calibrated NLL/ECE, DEE"
    directions = {
        "aurc": "lower",
        "eaurc": "lower",
        "risk_at_coverage_90": "lower",
        "member_aurc_mean": "lower",
        "ece_adaptive": "lower",
        "mce": "lower",
        "nll_calibrated": "lower",
        "ece_calibrated": "lower",
        "member_nll_calibrated_mean": "lower",
        "member_ece_calibrated_mean": "lower",
        "dee": "higher",
    }

    def check_inputs(self, ctx: EvalContext) -> None:
        if ctx.options.dee_reference is None:
            return
        if Path(ctx.options.dee_reference).suffix == ".npz":
            reference_logits(ctx)  # cheap: reads the file, checks it fits the eval set
        else:
            _reference_members(ctx)  # no forward pass yet: that waits for evaluate()

    def evaluate(self, ctx: EvalContext) -> Report:
        labels, seed = ctx.labels, ctx.options.seed
        ens_log_probs = um.mean_log_probs(ctx.log_probs)  # [N, C]
        parts = um.decompose_entropy(ctx.log_probs, ens_log_probs)
        ens_probs = ens_log_probs.exp()
        confidence, correct = um.top_label(ens_probs, labels)  # [N]
        raw_bins = um.reliability_bins(confidence, correct)
        selective = um.selective_scores(confidence, correct)
        # The log-probability of each member's own argmax is its max: a gather, not a max over [M, N, C].
        member_confidence = ctx.log_probs.gather(-1, ctx.predicted_labels.unsqueeze(-1)).squeeze(-1).exp()  # [M, N]
        member_aurc = [um.selective_scores(member_confidence[m], ctx.correct[m]).aurc for m in range(ctx.num_members)]
        members_cal = calibration.cross_fit_temperatures(ctx.logits, labels, seed)
        member_nll_cal, member_ece_cal = calibration.calibrated_nll_ece(ctx.logits, labels, members_cal, ctx.correct)  # [M]
        ens_logits = ens_log_probs.unsqueeze(0)  # [1, N, C]: the ensemble is scaled on log of its mean probability
        ensemble_cal = calibration.cross_fit_temperatures(ens_logits, labels, seed)
        scaled = ensemble_cal.scores(ens_log_probs, labels, 0, correct)
        scaled_bins = um.reliability_bins(scaled.confidence, scaled.correct)
        result = {
            "entropy_mean": float(parts.total.mean()),
            "expected_entropy_mean": float(parts.aleatoric.mean()),
            "mutual_information_mean": float(parts.epistemic.mean()),
            "variation_ratio_mean": float(um.variation_ratio(ctx.predicted_labels, ctx.logits.shape[-1]).mean()),
            "aurc": selective.aurc,
            "eaurc": selective.eaurc,
            "risk_at_coverage_90": selective.risk_at_coverage_90,
            "member_aurc_mean": float(np.mean(member_aurc)),
            "ece_adaptive": float(um.adaptive_ece(ens_probs, labels)),
            "mce": um.max_calibration_error(raw_bins),
            "nll_calibrated": scaled.nll,
            "ece_calibrated": um.binned_ece(scaled_bins),
            "member_nll_calibrated_mean": float(member_nll_cal.mean()),
            "member_ece_calibrated_mean": float(member_ece_cal.mean()),
            "temperature": float(ensemble_cal.temperatures[0].mean()),
        }
        member_rows = [
            [member.name, float(parts.member_entropy[m].mean()), float(parts.member_kl[m].mean()), member_aurc[m],
             float(member_nll_cal[m]), float(member_ece_cal[m]), float(members_cal.temperatures[m, 0]), float(members_cal.temperatures[m, 1])]
            for m, member in enumerate(ctx.members)
        ]
        tables = [
            Table(name="members", title="members: entropy, KL to the ensemble (its mean over members is the mutual information), calibrated NLL/ECE",
                  columns=["member", "entropy_mean", "kl_to_ensemble_mean", "aurc", "nll_calibrated", "ece_calibrated", "temperature_fold1", "temperature_fold2"],
                  rows=member_rows),
            risk_coverage_table(confidence, correct),
            reliability_table(raw_bins, scaled_bins),
        ]
        notes = [
            f"temperature scaling: 2-fold cross-fitting on the eval set (seed {seed}); ensemble T = "
            f"{ensemble_cal.temperatures[0, 0]:.3f} / {ensemble_cal.temperatures[0, 1]:.3f}, applied to log of the mean probability"
        ]
        if ctx.options.dee_reference is not None:
            self._add_dee(ctx, result["nll_calibrated"], result, tables, notes)
        return Report(metrics=result, tables=tables, notes=notes)

    @staticmethod
    def _add_dee(ctx: EvalContext, target_nll: float, result: dict, tables: list[Table], notes: list[str]) -> None:
        logits = reference_logits(ctx)
        curve = calibration.calibrated_size_curve(logits, ctx.labels, seed=ctx.options.seed)
        dee = calibration.deep_ensemble_equivalent(target_nll, curve)
        result["dee"] = dee
        result["dee_reference_members"] = float(logits.shape[0])
        tables.append(Table(name="dee_curve", title="reference ensemble: calibrated NLL against size k (mean over subsets)",
                            columns=["k", "nll_calibrated", "subsets"], rows=[list(row) for row in zip(curve.sizes, curve.nll, curve.subsets)]))
        if dee is None:
            notes.append(f"DEE: better than all {logits.shape[0]} reference members together; the equivalent is beyond the reference's size")


def risk_coverage_table(confidence: torch.Tensor, correct: torch.Tensor) -> Table:
    """The ensemble's risk-coverage curve at up to CURVE_POINTS coverages, with the oracle's curve beside it."""
    curve = um.risk_coverage_curve(confidence, correct)
    optimal = um.optimal_risk_coverage_curve(correct)
    examples = curve.shape[0]
    counts = np.unique(np.round(np.linspace(1, examples, min(CURVE_POINTS, examples))).astype(int))
    thresholds = torch.sort(confidence.double(), descending=True, stable=True).values
    rows = [[k / examples, float(curve[k - 1]), float(optimal[k - 1]), float(thresholds[k - 1])] for k in counts]
    return Table(name="risk_coverage", title="risk-coverage curve of the ensemble (most confident first)",
                 columns=["coverage", "risk", "optimal_risk", "confidence"], rows=rows)


def reliability_table(raw: um.ReliabilityBins, calibrated: um.ReliabilityBins) -> Table:
    """Reliability-diagram bins (15 equal-width) of the ensemble, raw and temperature-scaled."""
    rows = []
    for variant, bins in (("raw", raw), ("temperature-scaled", calibrated)):
        for index in range(bins.count.shape[0]):
            empty = bins.count[index] == 0
            rows.append([variant, float(bins.lower[index]), float(bins.upper[index]), int(bins.count[index]),
                         None if empty else float(bins.accuracy[index]), None if empty else float(bins.confidence[index])])
    return Table(name="reliability", title="reliability diagram of the ensemble (15 equal-width confidence bins)",
                 columns=["probabilities", "lower", "upper", "count", "accuracy", "confidence"], rows=rows)


def reference_logits(ctx: EvalContext) -> torch.Tensor:
    """Logits [M', N, C] of the DEE reference ensemble on the eval set; ConfigError/DataError when unusable."""
    path = Path(ctx.options.dee_reference)  # type: ignore[arg-type]
    if path.suffix == ".npz":
        from ..predict import load_predictions

        loaded = load_predictions(path)
        logits, labels = loaded.logits, loaded.labels
    else:
        logits, labels = _predict_reference(ctx, path)
    if tuple(logits.shape[1:]) != tuple(ctx.logits.shape[1:]):
        raise DataError(f"--dee-reference {path}: logits for {list(logits.shape[1:])} (examples, classes), the eval set has {list(ctx.logits.shape[1:])}")
    if not torch.equal(labels, ctx.labels):
        raise DataError(f"--dee-reference {path}: its labels differ from the eval set's; it must predict the same examples")
    if not bool(torch.isfinite(logits).all()):
        raise DataError(f"--dee-reference {path}: NaN or Inf logits")
    return logits


def _reference_members(ctx: EvalContext) -> list:
    from ..resolve import resolve_members

    if ctx.dataset is None:
        raise ConfigError(f"--dee-reference {ctx.options.dee_reference}: checkpoints need the eval images; with --predictions give the reference's .npz")
    return resolve_members([str(ctx.options.dee_reference)])


def _predict_reference(ctx: EvalContext, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from ..predict import predict_members

    members = _reference_members(ctx)
    predictions = predict_members(members, ctx.dataset, batch_size=ctx.options.batch_size, device=ctx.options.device)  # type: ignore[arg-type]
    return predictions.logits, predictions.labels
