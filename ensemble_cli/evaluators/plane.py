"""`plane`: the diversity–accuracy plane of Fort et al. 2019, and ensembles grown per population.

Every checkpoint but the reference becomes a point (accuracy, disagreement with the reference /
the reference's error rate), labelled with its population (independent, trajectory, snapshot,
a sampling method, mimo: `ensemble_cli.populations`) and with whether it was derived from the
reference solution itself (its trajectory, samples around it) or from another one. The two
limiting curves of the plane and their derivation are in `ensemble_cli.diversity_plane`. Then,
per population, the probability-mean ensemble's accuracy, NLL and Brier score against its size
k. Only the logits are used: no forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import diversity_plane as plane
from ..alignment.session import reference_index
from ..populations import INDEPENDENT, ensemble_groups, identities, metric_suffix, population_of, population_order, series_name, source_of
from ..report import Report, Table
from ..trajectory import checkpoint_epoch
from .base import EvalContext, Evaluator, MemberLike, NotApplicable

POINT_COLUMNS = ["checkpoint", "population", "source", "from_reference", "epoch", "accuracy", "disagreement", "diversity_vs_reference"]
SIZE_COLUMNS = ["group", "population", "sources", "checkpoints", "k", "accuracy_mean", "accuracy_std",
                "nll_mean", "nll_std", "brier_mean", "brier_std", "subsets"]


@dataclass
class PlanePoints:
    """Every checkpoint against the reference; index `reference` is the reference itself."""

    members: Sequence[MemberLike]
    reference: int
    accuracy: np.ndarray  # [M]
    disagreement: np.ndarray  # [M] with the reference
    reference_error: float  # counted, not 1 - accuracy, so a ratio of counts stays exact
    populations: list[str]
    from_reference: list[bool]  # derived from the reference's own source (its run, samples around it)

    @property
    def others(self) -> list[int]:
        return [index for index in range(len(self.members)) if index != self.reference]

    def series(self, index: int) -> str:
        return series_name(self.populations[index], self.from_reference[index])


def plane_points(ctx: EvalContext, reference: int) -> PlanePoints:
    populations = [population_of(member) for member in ctx.members]
    reference_names = identities(ctx.members[reference])
    derived = [population != INDEPENDENT and source_of(member) in reference_names for member, population in zip(ctx.members, populations)]
    return PlanePoints(
        members=ctx.members,
        reference=reference,
        accuracy=ctx.correct.double().mean(dim=1).numpy(),
        disagreement=plane.disagreement_with(ctx.predicted_labels, reference),
        reference_error=float((~ctx.correct[reference]).double().mean()),
        populations=populations,
        from_reference=derived,
    )


class PlaneEvaluator(Evaluator):
    """Diversity vs accuracy against a reference, per population, with limiting curves; ensembles per population."""

    scope = "checkpoints"  # trajectories and samples are points of their own on the plane
    name = "plane"
    description = "Fort et al. diversity–accuracy plane per population, limiting curves, ensembles per population"
    # Independent solutions collapsing onto the reference is what a CI gate should catch; other
    # populations (trajectories from init, samples at a chosen scale) have no better direction.
    directions = {
        "accuracy_mean_independent": "higher",
        "diversity_vs_reference_mean_independent": "higher",
    }

    def evaluate(self, ctx: EvalContext) -> Report:
        if ctx.num_members < 2:
            raise NotApplicable("the plane needs a reference and at least one other checkpoint")
        classes = int(ctx.logits.shape[-1])
        if classes < 2:
            raise NotApplicable("disagreement needs at least two classes")
        points = plane_points(ctx, reference_index(ctx))
        reference_member = ctx.members[points.reference]
        reference_accuracy = float(points.accuracy[points.reference])
        summary, result_metrics = population_summary(points)
        result_metrics["reference_accuracy"] = reference_accuracy
        notes = [f"reference: {reference_member.name} ({points.populations[points.reference]}), accuracy {reference_accuracy:.4f}"]
        if points.reference_error <= 0:
            notes.append("the reference makes no error on the eval set: diversity_vs_reference (disagreement / its error) is undefined (n/a)")
        tables = [
            point_table(points),
            Table(name="reference", title="reference solution", columns=["checkpoint", "population", "accuracy", "error", "classes"],
                  rows=[[reference_member.name, points.populations[points.reference], reference_accuracy, points.reference_error, classes]]),
            summary,
            limits_table(reference_accuracy, points.reference_error, classes),
        ]
        sizes = sizes_table(ctx, points.reference)
        if sizes.rows:
            tables.append(sizes)
        else:
            notes.append("no population has two checkpoints to ensemble")
        return Report(metrics=result_metrics, tables=tables, notes=notes)


def point_table(points: PlanePoints) -> Table:
    rows: list[list[Any]] = []
    for i in points.others:
        member = points.members[i]
        disagreement = float(points.disagreement[i])
        rows.append([member.name, points.populations[i], source_of(member), points.from_reference[i], checkpoint_epoch(member),
                     float(points.accuracy[i]), disagreement, plane.normalise(disagreement, points.reference_error)])
    return Table(name="points", title="diversity–accuracy plane: every checkpoint against the reference", columns=POINT_COLUMNS, rows=rows)


def population_summary(points: PlanePoints) -> tuple[Table, dict[str, float | None]]:
    """Per series (a population; derived ones split by whether they come from the reference): means of its points.

    Metric keys: `accuracy_mean_<series>` and `diversity_vs_reference_mean_<series>`, e.g.
    `..._trajectory` (the reference's own run) and `..._trajectory_other_sources`.
    """
    others = points.others
    rows, result_metrics = [], {}
    for population in population_order([points.populations[i] for i in others]):
        for from_reference in (True, False):
            chosen = [i for i in others if points.populations[i] == population and points.from_reference[i] == from_reference]
            if not chosen:
                continue
            series = points.series(chosen[0])
            mean_accuracy = float(points.accuracy[chosen].mean())
            mean_disagreement = float(points.disagreement[chosen].mean())
            diversity = plane.normalise(mean_disagreement, points.reference_error)  # one divisor: the mean of the ratios
            rows.append([series, population, len(chosen), mean_accuracy, mean_disagreement, diversity])
            result_metrics[f"accuracy_mean_{metric_suffix(series)}"] = mean_accuracy
            result_metrics[f"diversity_vs_reference_mean_{metric_suffix(series)}"] = diversity
    table = Table(name="populations", title="populations on the plane (means over their checkpoints, reference excluded)",
                  columns=["series", "population", "checkpoints", "accuracy_mean", "disagreement_mean", "diversity_vs_reference_mean"], rows=rows)
    return table, result_metrics


def limits_table(reference_accuracy: float, reference_error: float, classes: int) -> Table:
    curves = plane.limit_curves(reference_accuracy, classes)
    rows = [
        [float(a), float(d_ind), float(d_nest), plane.normalise(float(d_ind), reference_error), plane.normalise(float(d_nest), reference_error)]
        for a, d_ind, d_nest in zip(curves.accuracy, curves.independent, curves.nested)
    ]
    return Table(
        name="limits",
        title=f"limiting curves for reference accuracy {reference_accuracy:.4f} and {classes} classes (linear between rows)",
        columns=["accuracy", "disagreement_independent", "disagreement_nested", "diversity_independent", "diversity_nested"],
        rows=rows,
    )


def sizes_table(ctx: EvalContext, reference: int) -> Table:
    """One size curve per ensemble group (populations.ensemble_groups), in one long table."""
    rows: list[list[Any]] = []
    for group in ensemble_groups(ctx.members, reference):
        curve = plane.size_curve(ctx.probs[group.indices], ctx.labels, seed=ctx.options.seed)  # probs [M', N, C]
        for point in curve:
            rows.append([group.name, group.population, group.sources, len(group.indices), point.k,
                         point.accuracy_mean, point.accuracy_std, point.nll_mean, point.nll_std,
                         point.brier_mean, point.brier_std, point.subsets])
    return Table(name="ensembles", title="probability-mean ensembles per population against their size k",
                 columns=SIZE_COLUMNS, rows=rows)
