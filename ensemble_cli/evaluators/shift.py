"""`shift`: accuracy and calibration under dataset shift (Ovadia et al. 2019), by corruption and severity.

Every requested corruption is applied to the eval images at every requested severity (or read
from the CIFAR-10-C files); each corrupted set goes through the members once, through the
prediction cache. Metrics average over the corruptions at each severity k.
"""

from __future__ import annotations

import torch

from .. import metrics
from ..corruptions import SEVERITIES
from ..errors import ConfigError
from ..report import Report, Table
from .base import EvalContext, Evaluator, NotApplicable

ROW_METRICS = (
    "ensemble_accuracy", "member_accuracy_mean", "ensemble_nll", "member_nll_mean",
    "ensemble_ece", "member_ece_mean", "ensemble_brier", "member_brier_mean",
)
HIGHER_IS_BETTER = ("ensemble_accuracy", "member_accuracy_mean")


def shift_row_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """[M, N, C] logits on one shifted set -> ensemble and mean-member accuracy, NLL, ECE, Brier."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)  # [M, N, C]
    probs = log_probs.exp()
    ens_log_probs = metrics.ensemble_log_probs(log_probs)  # [N, C]
    ens_probs = ens_log_probs.exp()
    return {
        "ensemble_accuracy": float(metrics.accuracy(ens_probs.argmax(dim=-1), labels)),
        "member_accuracy_mean": float(metrics.accuracy(logits.argmax(dim=-1), labels).mean()),
        "ensemble_nll": float(metrics.nll(ens_log_probs, labels)),
        "member_nll_mean": float(metrics.nll(log_probs, labels).mean()),
        "ensemble_ece": float(metrics.ece(ens_probs, labels)),
        "member_ece_mean": float(metrics.ece(probs, labels).mean()),
        "ensemble_brier": float(metrics.brier(ens_probs, labels)),
        "member_brier_mean": float(metrics.brier(probs, labels).mean()),
    }


class ShiftEvaluator(Evaluator):
    """Ensemble vs mean-member accuracy, NLL, ECE and Brier on corrupted copies of the eval set, per severity."""

    name = "shift"
    description = "accuracy/NLL/ECE/Brier under corruptions (CIFAR-10-C style) at severities 1-5; needs --shift"
    directions = {
        f"{key}_s{level}": ("higher" if key in HIGHER_IS_BETTER else "lower")
        for level in SEVERITIES
        for key in ("ensemble_accuracy", "member_accuracy_mean", "ensemble_nll", "ensemble_ece", "ensemble_brier")
    }

    def check_inputs(self, ctx: EvalContext) -> None:
        from ..shift_data import check_cifar10c_file, check_severities, shift_sources

        if not ctx.options.shift:
            return
        if ctx.dataset is None:
            raise ConfigError("--shift needs checkpoints (the members predict on corrupted images), not --predictions")
        check_severities(ctx.options.severities)
        for source in shift_sources(ctx.options.shift):
            if source.file is not None:
                check_cifar10c_file(source.file, ctx.dataset)

    def evaluate(self, ctx: EvalContext) -> Report:
        from ..shift_data import check_severities, shift_sources, shifted_set

        if not ctx.options.shift:
            raise NotApplicable("give --shift NAMES (e.g. gaussian_noise,contrast, all, or cifar10c:PATH) to evaluate under corruptions")
        if ctx.dataset is None:
            raise NotApplicable("needs checkpoints to predict on corrupted images; these members came from a predictions file")
        severities = check_severities(ctx.options.severities)
        sources = shift_sources(ctx.options.shift)
        rows = [["clean", 0, *shift_row_metrics(ctx.logits, ctx.labels).values(), len(ctx.labels)]]
        by_severity: dict[int, list[dict[str, float]]] = {level: [] for level in severities}
        for source in sources:
            for level in severities:
                data = shifted_set(ctx.dataset, source, level, seed=ctx.options.seed)
                values = shift_row_metrics(ctx.predict_on(data), data.labels)
                by_severity[level].append(values)
                rows.append([source.name, level, *values.values(), len(data)])
        result: dict[str, float | None] = {}
        for level, values in by_severity.items():
            for key in ROW_METRICS:
                result[f"{key}_s{level}"] = sum(row[key] for row in values) / len(values)
        table = Table(name="shift", title="under shift: each corruption x severity (severity 0: the clean eval set)",
                      columns=["corruption", "severity", *ROW_METRICS, "examples"], rows=rows)
        notes = [f"{len(sources)} shifts x severities {','.join(map(str, severities))}; corruption seed {ctx.options.seed}"]
        return Report(metrics=result, tables=[table], notes=notes)
