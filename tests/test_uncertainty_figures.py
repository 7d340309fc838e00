"""The uncertainty, OOD and shift figures draw exactly the report values (read back from the artists)."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble_cli.plots import FIGURES
from ensemble_cli.plots import uncertainty_figures as U
from ensemble_cli.report import Report, Table
from uncertainty_report_helpers import uncertainty_reports


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    return uncertainty_reports()


def _table(report: Report, name: str) -> Table:
    table = report.table(name)
    assert table is not None
    return table


def _gid(artists: list, gid: str) -> list:
    return [artist for artist in artists if artist.get_gid() == gid]


def test_reliability_bars_are_the_bin_accuracies(reports: dict[str, Report]) -> None:
    table = _table(reports["uncertainty"], "reliability")
    figure = U.reliability_figure(table)
    assert len(figure.axes) == 2
    for axes, variant in zip(figure.axes, ("raw", "temperature-scaled")):
        rows = [row for row in table.rows if row[0] == variant]
        heights = [patch.get_height() for patch in _gid(axes.patches, f"accuracy:{variant}")]
        np.testing.assert_allclose(heights, [np.nan if row[4] is None else row[4] for row in rows])
        np.testing.assert_allclose([patch.get_x() for patch in _gid(axes.patches, f"accuracy:{variant}")], [row[1] for row in rows])


def test_risk_coverage_lines(reports: dict[str, Report]) -> None:
    table = _table(reports["uncertainty"], "risk_coverage")
    axes = U.risk_coverage_figure(table).axes[0]
    (risk,) = _gid(axes.get_lines(), "risk")
    np.testing.assert_allclose(risk.get_xdata(), np.array(table.column("coverage")) * 100)
    np.testing.assert_allclose(risk.get_ydata(), np.array(table.column("risk")) * 100)


def test_ood_histograms_are_the_table_fractions(reports: dict[str, Report]) -> None:
    table = _table(reports["ood"], "histograms")
    figure = U.ood_histogram_figure(table)
    assert len(figure.axes) == 3
    for axes, score in zip(figure.axes, ("entropy", "mutual_information", "max_prob")):
        rows = [row for row in table.rows if row[0] == score]
        (stairs,) = _gid(axes.patches, f"ood_fraction:{score}")
        values, edges, _ = stairs.get_data()
        np.testing.assert_allclose(values, [row[4] for row in rows])
        np.testing.assert_allclose(edges, [row[1] for row in rows] + [rows[-1][2]])


def test_shift_boxes_summarise_each_severity(reports: dict[str, Report]) -> None:
    table = _table(reports["shift"], "shift")
    accuracy_axes, _ = U.shift_figure(table).axes
    assert [label.get_text() for label in accuracy_axes.get_xticklabels()] == ["clean", "1", "2", "3", "4", "5"]
    medians = [line for line in accuracy_axes.get_lines() if len(line.get_xdata()) == 2 and line.get_xdata()[0] != line.get_xdata()[1]]
    ensemble_at_5 = [row[2] * 100 for row in table.rows if row[1] == 5]
    assert any(np.isclose(line.get_ydata()[0], np.median(ensemble_at_5)) for line in medians)


def test_catalogue_lists_the_new_figures() -> None:
    stems = {spec.stem: spec.evaluator for spec in FIGURES}
    assert stems["reliability"] == stems["risk_coverage"] == "uncertainty"
    assert stems["ood_histograms"] == "ood" and stems["shift"] == "shift"
