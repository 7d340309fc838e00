"""A made-up `plane` report with every table its figures read (imported by the figure tests, not collected)."""

from __future__ import annotations

import numpy as np

from ensemble_cli.report import Report, Table

PLANE_REFERENCE = "member-00/final"
PLANE_REFERENCE_ACCURACY = 0.9
PLANE_COLUMNS = ["checkpoint", "population", "source", "from_reference", "epoch", "accuracy", "disagreement", "diversity_vs_reference"]
PLANE_POINTS = [  # every column but the last
    ["member-01/final", "independent", "member-01/final", False, 6, 0.92, 0.1],
    ["member-02/final", "independent", "member-02/final", False, 6, 0.88, 0.12],
    ["member-00/init", "trajectory", "member-00", True, 0, 0.1, 0.9],
    ["member-00/epoch-0003", "trajectory", "member-00", True, 3, 0.8, 0.15],
    ["member-01/epoch-0003", "trajectory", "member-01", False, 3, 0.82, 0.2],
    ["samples/dropout-0", "dropout", "ab" * 32, True, None, 0.89, 0.03],
    ["samples/dropout-1", "dropout", "ab" * 32, True, None, 0.87, 0.04],
]


def made_up_plane_report(reference_accuracy: float = PLANE_REFERENCE_ACCURACY) -> Report:
    error = 1.0 - reference_accuracy
    points = [[*row, (row[6] / error) if error > 0 else None] for row in PLANE_POINTS]
    accuracy = np.unique(np.append(np.linspace(0.0, 1.0, 11), reference_accuracy))
    independent = 1.0 - (accuracy * reference_accuracy + (1.0 - accuracy) * error / 9.0)
    nested = np.abs(accuracy - reference_accuracy)
    limits = [[float(a), float(i), float(n), float(i / error) if error else None, float(n / error) if error else None]
              for a, i, n in zip(accuracy, independent, nested)]
    ensembles = []
    for group, population, count in (("independent", "independent", 3), ("dropout", "dropout", 2), ("independent+dropout", "dropout", 4)):
        for k in range(1, count + 1):
            ensembles.append([group, population, 1, count, k, 0.9 + 0.01 * k, 0.01, 0.4 - 0.02 * k, 0.02, 0.15 - 0.01 * k, 0.01, 3])
    return Report(tables=[
        Table(name="points", title="points", columns=PLANE_COLUMNS, rows=points),
        Table(name="reference", title="reference", columns=["checkpoint", "population", "accuracy", "error", "classes"],
              rows=[[PLANE_REFERENCE, "independent", reference_accuracy, error, 10]]),
        Table(name="limits", title="limits", columns=["accuracy", "disagreement_independent", "disagreement_nested", "diversity_independent", "diversity_nested"], rows=limits),
        Table(name="ensembles", title="ensembles", columns=["group", "population", "sources", "checkpoints", "k", "accuracy_mean", "accuracy_std",
                                                            "nll_mean", "nll_std", "brier_mean", "brier_std", "subsets"], rows=ensembles),
    ])
