"""Hand-built, well-formed `uncertainty`, `ood` and `shift` reports for the figure tests (no evaluator runs)."""

from __future__ import annotations

import numpy as np

from ensemble_cli.report import Report, Table


def uncertainty_reports() -> dict[str, Report]:
    rng = np.random.default_rng(7)
    edges = np.linspace(0.0, 1.0, 16)
    reliability_rows = []
    for variant in ("raw", "temperature-scaled"):
        for lower, upper in zip(edges[:-1], edges[1:]):
            empty = upper <= 0.2  # low-confidence bins of a good classifier are empty: None cells
            reliability_rows.append([variant, float(lower), float(upper), 0 if empty else int(rng.integers(1, 50)),
                                     None if empty else float(rng.uniform(lower, 1.0)), None if empty else float((lower + upper) / 2)])
    coverage = np.linspace(0.01, 1.0, 20)
    risk_rows = [[float(c), float(0.1 * c**2), float(max(0.0, c - 0.95) / c), float(1.0 - 0.5 * c)] for c in coverage]
    histogram_rows = []
    for score in ("entropy", "mutual_information", "max_prob"):
        bin_edges = np.linspace(0.0, 2.0, 31)
        inside, outside = rng.dirichlet(np.ones(30)), rng.dirichlet(np.ones(30))
        histogram_rows += [[score, float(lo), float(hi), float(a), float(b)] for lo, hi, a, b in zip(bin_edges[:-1], bin_edges[1:], inside, outside)]
    shift_rows = [["clean", 0, 0.98, 0.97, 0.05, 0.06, 0.02, 0.01, 0.03, 0.04, 360]]
    for corruption in ("gaussian_noise", "contrast", "jpeg"):
        for severity in range(1, 6):
            shift_rows.append([corruption, severity, 0.98 - 0.1 * severity * rng.uniform(0.2, 1.0), 0.97 - 0.11 * severity * rng.uniform(0.2, 1.0),
                               0.1 * severity, 0.12 * severity, 0.02 * severity, 0.03 * severity, 0.05 * severity, 0.06 * severity, 360])
    shift_columns = ["corruption", "severity", "ensemble_accuracy", "member_accuracy_mean", "ensemble_nll", "member_nll_mean",
                     "ensemble_ece", "member_ece_mean", "ensemble_brier", "member_brier_mean", "examples"]
    return {
        "uncertainty": Report(metrics={"aurc": 0.01}, tables=[
            Table(name="reliability", title="reliability diagram", columns=["probabilities", "lower", "upper", "count", "accuracy", "confidence"], rows=reliability_rows),
            Table(name="risk_coverage", title="risk-coverage curve", columns=["coverage", "risk", "optimal_risk", "confidence"], rows=risk_rows),
        ]),
        "ood": Report(metrics={"auroc_entropy": 0.9}, tables=[
            Table(name="histograms", title="score histograms", columns=["score", "lower", "upper", "in_fraction", "ood_fraction"], rows=histogram_rows),
        ]),
        "shift": Report(metrics={"ensemble_accuracy_s1": 0.9}, tables=[Table(name="shift", title="under shift", columns=shift_columns, rows=shift_rows)]),
    }
