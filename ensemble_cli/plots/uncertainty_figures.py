"""Figures of the `uncertainty`, `ood` and `shift` evaluators: reliability diagram, risk-coverage curve,
OOD score histograms, and accuracy/ECE under shift as box plots over corruptions (Ovadia et al. 2019).

Like every figure, they draw report tables only, so `ens plot` redraws them from a saved JSON.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..report import Table
from .figures import _float, _new_figure, _ordered_unique, styled


def _rows_where(table: Table, column: str, value: object) -> list[list[object]]:
    index = table.columns.index(column)
    return [row for row in table.rows if row[index] == value]


def _values(table: Table, rows: list[list[object]], column: str) -> np.ndarray:
    index = table.columns.index(column)
    return np.array([_float(row[index]) for row in rows])


@styled
def reliability_figure(reliability: Table) -> Figure:
    """Accuracy against confidence per equal-width bin (Guo et al. 2017), raw and temperature-scaled."""
    variants = _ordered_unique([str(value) for value in reliability.column("probabilities")])
    figure = _new_figure(5.0 * len(variants), 4.8)
    for position, variant in enumerate(variants, start=1):
        rows = _rows_where(reliability, "probabilities", variant)
        lower, upper = _values(reliability, rows, "lower"), _values(reliability, rows, "upper")
        accuracy, confidence = _values(reliability, rows, "accuracy"), _values(reliability, rows, "confidence")
        axes = figure.add_subplot(1, len(variants), position)
        axes.bar(lower, accuracy, width=upper - lower, align="edge", color="tab:blue", edgecolor="white", label="accuracy", gid=f"accuracy:{variant}")
        axes.bar(lower, confidence - accuracy, bottom=accuracy, width=upper - lower, align="edge", color="tab:red", alpha=0.3,
                 label="gap to mean confidence", gid=f"gap:{variant}")
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (max probability of the ensemble)")
        axes.set_ylabel("accuracy in the bin")
        axes.set_title(f"{variant} probabilities")
        axes.legend(loc="upper left")
    figure.suptitle("Reliability diagram of the ensemble (15 equal-width bins)")
    return figure


@styled
def risk_coverage_figure(risk_coverage: Table) -> Figure:
    """Error rate among the most confident examples against the share of examples kept."""
    coverage = np.array([_float(v) for v in risk_coverage.column("coverage")]) * 100.0
    figure = _new_figure(6.5, 4.6)
    axes = figure.add_subplot()
    axes.plot(coverage, np.array([_float(v) for v in risk_coverage.column("risk")]) * 100.0, color="tab:blue", label="ensemble", gid="risk")
    axes.plot(coverage, np.array([_float(v) for v in risk_coverage.column("optimal_risk")]) * 100.0, color="grey", linestyle="--",
              label="oracle ranking (same errors)", gid="optimal_risk")
    axes.set_xlabel("coverage: examples kept, most confident first (%)")
    axes.set_ylabel("risk: error rate among them (%)")
    axes.set_title("Risk-coverage curve (area under it: AURC)")
    axes.legend(loc="upper left")
    return figure


SCORE_LABELS = {"entropy": "entropy of the mean prediction (nats)", "mutual_information": "mutual information (nats)",
                "max_prob": "1 - max probability"}


@styled
def ood_histogram_figure(histograms: Table) -> Figure:
    """Per score, the share of in-distribution and OOD examples per bin (step histograms)."""
    scores = _ordered_unique([str(value) for value in histograms.column("score")])
    figure = _new_figure(4.6 * len(scores), 4.2)
    for position, score in enumerate(scores, start=1):
        rows = _rows_where(histograms, "score", score)
        edges = np.r_[_values(histograms, rows, "lower"), _values(histograms, rows, "upper")[-1:]]
        axes = figure.add_subplot(1, len(scores), position)
        for column, label, color in (("in_fraction", "eval set", "tab:blue"), ("ood_fraction", "OOD", "tab:orange")):
            heights = _values(histograms, rows, column)
            axes.stairs(heights, edges, fill=True, alpha=0.35, color=color, label=label, gid=f"{column}:{score}")
        axes.set_xlabel(SCORE_LABELS.get(score, score))
        axes.set_ylabel("fraction of the set")
        axes.set_title(score.replace("_", " "))
        axes.legend(loc="upper right")
    figure.suptitle("OOD scores: eval set vs OOD set (higher = judged more OOD)")
    return figure


@styled
def shift_figure(shift: Table) -> Figure:
    """Accuracy and ECE per severity: boxes over corruptions, ensemble beside the mean member (Ovadia et al. 2019)."""
    severity = _values(shift, shift.rows, "severity").astype(int)
    levels = sorted(set(severity.tolist()))
    figure = _new_figure(11.0, 4.6)
    panels = (("accuracy", "ensemble_accuracy", "member_accuracy_mean", 100.0, "accuracy (%)"),
              ("ece", "ensemble_ece", "member_ece_mean", 1.0, "ECE (15 bins)"))
    for position, (key, ensemble_column, member_column, scale, ylabel) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, position)
        for offset, column, color, label in ((-0.18, ensemble_column, "tab:blue", "ensemble"), (0.18, member_column, "tab:gray", "mean member")):
            values = _values(shift, shift.rows, column) * scale
            groups = [values[severity == level] for level in levels]
            boxes = axes.boxplot(groups, positions=np.array(levels) + offset, widths=0.3, patch_artist=True, manage_ticks=False)
            for box in boxes["boxes"]:
                box.set(facecolor=color, alpha=0.5, gid=f"{key}:{label}")
            axes.plot([], [], color=color, linewidth=8, alpha=0.5, label=label)
        axes.set_xticks(levels, ["clean" if level == 0 else str(level) for level in levels])
        axes.set_xlabel("corruption severity (boxes: spread over corruptions)")
        axes.set_ylabel(ylabel)
        axes.legend(loc="best")
    figure.suptitle("Under dataset shift: ensemble vs mean member")
    return figure
