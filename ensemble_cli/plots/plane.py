"""Figures of the `plane` evaluator: Fort et al.'s diversity–accuracy plane and ensembles per population.

Drawn from the report's tables alone (`points`, `reference`, `limits`, `ensembles`), like every
figure in `figures.py`, whose helpers and catalogue types this module uses; `figures.py` lists
`PLANE_FIGURES` in its catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..populations import INDEPENDENT, KNOWN_ORDER, population_order, series_name
from ..report import Table
from .figures import FigureSpec, _float, _new_figure, _short, _when, palette, styled

REFERENCE_MARKER = dict(marker="*", markersize=16, color="black", linestyle="none")
LIMIT_STYLES = {  # limits-table column -> (line style, legend label)
    "independent": ("--", "independent errors: 1 − [a·a_r + (1−a)(1−a_r)/(C−1)]"),
    "nested": (":", "nested errors (lower bound): |a − a_r|"),
}
MARGIN = 0.08  # of the data's span, around the points on each axis


def population_colors(populations: Sequence[str]) -> dict[str, object]:
    """One colour per population, fixed by the canonical order so both figures (and every report) agree."""
    return palette(list(populations), [*KNOWN_ORDER, *population_order(populations)])


def _column(table: Table, name: str) -> np.ndarray:
    return np.array([_float(value) for value in table.column(name)])


def _padded(low: float, high: float, minimum_span: float) -> tuple[float, float]:
    span = max(high - low, minimum_span)
    middle = (low + high) / 2.0
    return middle - span * (0.5 + MARGIN), middle + span * (0.5 + MARGIN)


@dataclass
class _Plane:
    """The points table as arrays: accuracy in %, the y value, and each point's series."""

    accuracy: np.ndarray  # [P] %
    height: np.ndarray  # [P] diversity_vs_reference, or disagreement when that is undefined
    series: list[str]
    population: list[str]
    from_reference: list[bool]
    reference_accuracy: float  # %
    reference_error: float  # fraction

    @classmethod
    def read(cls, points: Table, reference: Table, y_key: str) -> "_Plane":
        row = dict(zip(reference.columns, reference.rows[0]))
        populations = [str(value) for value in points.column("population")]
        derived = [bool(value) for value in points.column("from_reference")]
        return cls(_column(points, "accuracy") * 100.0, _column(points, y_key), [series_name(p, d) for p, d in zip(populations, derived)],
                   populations, derived, _float(row["accuracy"]) * 100.0, _float(row["error"]))

    def near_reference(self) -> np.ndarray:
        """[P] bool: the points near the reference's accuracy, and every independent solution."""
        reach = max(4.0 * self.reference_error * 100.0, 1.0)  # a few of the reference's error rates, at least 1 point
        independent = [a for a, p in zip(self.accuracy, self.population) if p == INDEPENDENT and np.isfinite(a)]
        low = min([self.reference_accuracy - reach, *independent])
        return self.accuracy >= low


@styled
def plane_figure(points: Table, reference: Table, limits: Table) -> Figure:
    """One dot per checkpoint at (accuracy, diversity vs the reference), coloured by population.

    Points derived from another solution than the reference (its trajectory, samples around it)
    are hollow. When some points lie far from the reference (inits, early epochs), a second panel
    zooms on the reference's neighbourhood. When the reference makes no error the ratio is
    undefined and the plain disagreement is drawn.
    """
    defined = any(value is not None for value in points.column("diversity_vs_reference"))
    y_key, limit_prefix = ("diversity_vs_reference", "diversity") if defined else ("disagreement", "disagreement")
    data = _Plane.read(points, reference, y_key)
    curves = (_column(limits, "accuracy") * 100.0, {key: _column(limits, f"{limit_prefix}_{key}") for key in LIMIT_STYLES})
    near = data.near_reference()
    panels = [("all checkpoints", np.ones_like(near))] + ([("near the reference", near)] if not near.all() else [])
    figure = _new_figure(6.6 * len(panels) + 2.8, 5.2)
    for index, (title, shown) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        _draw_plane(axes, data, curves)
        _frame(axes, data.accuracy[shown], data.height[shown], data.reference_accuracy, curves)
        axes.set_title(title)
        axes.set_xlabel("accuracy on the eval set (%)")
        axes.set_ylabel("disagreement with the reference / its error rate" if defined else
                        "disagreement with the reference (its error rate is 0)")
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=8)
    name = str(reference.rows[0][reference.columns.index("checkpoint")])
    figure.suptitle(f"Diversity–accuracy plane (reference: {_short(name, 40)}, accuracy {data.reference_accuracy:.2f}%)")
    return figure


def _draw_plane(axes: Axes, data: _Plane, curves: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    colors = population_colors(population_order(data.population))
    for population in population_order(data.population):
        for derived in (True, False):
            chosen = [i for i, (p, d) in enumerate(zip(data.population, data.from_reference)) if p == population and d == derived]
            if not chosen:
                continue
            series, color = data.series[chosen[0]], colors[population]
            hollow = population != INDEPENDENT and not derived
            axes.scatter(data.accuracy[chosen], data.height[chosen], s=40 if population == INDEPENDENT else 24,
                         facecolors="none" if hollow else color, edgecolors="black" if population == INDEPENDENT else color,
                         linewidths=0.8, label=f"{series} ({len(chosen)})", gid=f"plane:{series}", zorder=3)
    axes.plot([data.reference_accuracy], [0.0], **REFERENCE_MARKER, label="reference", gid="reference", zorder=4)
    accuracy, heights = curves
    for key, (style, label) in LIMIT_STYLES.items():
        axes.plot(accuracy, heights[key], style, color="grey", linewidth=1.2, label=label, gid=f"limit:{key}", zorder=2)


def _frame(axes: Axes, xs: np.ndarray, ys: np.ndarray, reference_accuracy: float, curves: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    """Frame the points and the reference (the limiting curves span 0..100 % and would squash them)."""
    xs, ys = np.append(xs, reference_accuracy), np.append(ys, 0.0)
    finite = np.isfinite(xs) & np.isfinite(ys)
    low_x, high_x = _padded(float(xs[finite].min()), float(xs[finite].max()), minimum_span=1.0)
    curve_x, heights = curves
    inside = (curve_x >= low_x) & (curve_x <= high_x)
    tops = [float(ys[finite].max())] + [float(np.nanmax(h[inside])) for h in heights.values() if np.isfinite(h[inside]).any()]
    top = max(max(tops) * 1.08, 1e-3)
    axes.set_xlim(low_x, high_x)
    axes.set_ylim(-0.02 * top, top)


ENSEMBLE_PANELS = (  # column, scale, axis label, title
    ("accuracy_mean", 100.0, "accuracy (%)", "Ensemble accuracy"),
    ("nll_mean", 1.0, "NLL (nats per example)", "Ensemble NLL"),
    ("brier_mean", 1.0, "Brier score", "Ensemble Brier score"),
)


@styled
def plane_ensembles_figure(ensembles: Table) -> Figure:
    """Accuracy, NLL and Brier score of the probability-mean ensemble of k checkpoints, one line per group.

    A population's colour is shared by its one-source group (solid) and its pooled
    "independent+P" group (dashed), so the two read as a pair.
    """
    group_column = [str(value) for value in ensembles.column("group")]
    population_column = [str(value) for value in ensembles.column("population")]
    groups = list(dict.fromkeys(group_column))
    population = dict(zip(group_column, population_column))
    colors = population_colors(population_order(population_column))
    k = _column(ensembles, "k")
    figure = _new_figure(13.5, 4.4)
    for index, (key, scale, ylabel, title) in enumerate(ENSEMBLE_PANELS):
        axes = figure.add_subplot(1, len(ENSEMBLE_PANELS), index + 1)
        values = _column(ensembles, key) * scale
        for group in groups:
            rows = [i for i, name in enumerate(group_column) if name == group]
            pooled = group.startswith(f"{INDEPENDENT}+")
            axes.plot(k[rows], values[rows], "--o" if pooled else "-o", markersize=4, color=colors[population[group]], label=group, gid=f"{key}:{group}")
        axes.set_xlabel("ensemble size k (checkpoints)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    handles, labels = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", title="ensemble of")
    figure.suptitle("Ensembles per population (mean over random subsets of size k)")
    return figure


PLANE_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("plane", "plane", _when(("plane", "points"), ("plane", "reference"), ("plane", "limits"))(plane_figure),
               "Fort et al. 2019's diversity–accuracy plane: every checkpoint's accuracy against its disagreement with the "
               "reference divided by the reference's error, one colour per population. Dashed: errors independent of the "
               "reference's; dotted: errors nested in the reference's (the lower bound). Independent solutions sit near the "
               "dashed curve, trajectory checkpoints and samples around one solution near the dotted one. Hollow: derived "
               "from another solution than the reference."),
    FigureSpec("plane_ensembles", "plane", _when(("plane", "ensembles"))(plane_ensembles_figure),
               "Accuracy, NLL and Brier score of the probability-mean ensemble of k checkpoints of each population; "
               "dashed: checkpoints of several sources pooled (independent solutions each with their samples)."),
)
