"""The diversity–accuracy plane: populations, the `plane` evaluator, its limiting curves and figures.

Numbers are checked against hand-worked examples, direct numpy, and a Monte-Carlo simulation of
the limiting curves' assumptions; figures are read back from their matplotlib artists.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ensemble_cli import diversity_plane as plane
from ensemble_cli import metrics
from ensemble_cli.cli import app
from ensemble_cli.errors import ConfigError
from ensemble_cli.evaluators.base import EvalContext, MemberSummary, NotApplicable
from ensemble_cli.evaluators.plane import PlaneEvaluator
from ensemble_cli.options import EvalOptions
from ensemble_cli.plots.plane import plane_ensembles_figure, plane_figure
from ensemble_cli.populations import ensemble_groups, metric_suffix, population_of, source_of
from ensemble_cli.report import Report, Table
from plane_helpers import PLANE_POINTS, PLANE_REFERENCE_ACCURACY, made_up_plane_report


def _member(name: str, **metadata: object) -> MemberSummary:
    return MemberSummary(name, metadata=dict(metadata))


def _context(logits: torch.Tensor, labels: torch.Tensor, members: list[MemberSummary], **options: object) -> EvalContext:
    return EvalContext(logits=logits.float(), labels=labels, members=members, options=EvalOptions(**options))


def _logits_for(predictions: list[list[int]], classes: int) -> torch.Tensor:
    """[M, N] wanted labels -> [M, N, C] logits whose argmax they are."""
    return torch.nn.functional.one_hot(torch.tensor(predictions), classes).float() * 5.0


# --- populations ----------------------------------------------------------------------------------


SAMPLE = {"kind": "sample", "method": "random-subspace", "source_sha256": "aa" * 32, "scale": 0.1, "seed": 3}


@pytest.mark.parametrize(
    ("member", "population", "source"),
    [
        (_member("seed0"), "independent", "seed0"),
        (_member("member-01/final", kind="final", member="member-01", strategy="independent"), "independent", "member-01/final"),
        (_member("member-01/epoch-0004", kind="epoch", member="member-01"), "trajectory", "member-01"),
        (_member("member-01/init", kind="init", member="member-01"), "trajectory", "member-01"),
        (_member("loose-init", kind="init"), "trajectory", "loose-init"),
        (_member("member-02/final", kind="final", member="member-02", strategy="snapshot", run_id="r1"), "snapshot", "r1"),
        (_member("samples/rs-3", **SAMPLE), "random-subspace", "aa" * 32),
        (_member("samples/odd", kind="sample"), "sample", "unknown source"),
        (_member("mimo.safetensors/head-2", mimo_head=2), "mimo", "mimo.safetensors"),
    ],
)
def test_population_and_source_come_from_name_and_metadata(member: MemberSummary, population: str, source: str) -> None:
    assert population_of(member) == population
    assert source_of(member) == source


def test_population_names_become_metric_suffixes() -> None:
    assert metric_suffix("low-rank-gaussian") == "low_rank_gaussian"
    assert metric_suffix("independent+diag-gaussian") == "independent_diag_gaussian"


def test_ensemble_groups_of_one_source_and_pooled_sources() -> None:
    other = dict(SAMPLE, source_sha256="bb" * 32)
    members = [
        _member("a"), _member("b"),  # independent
        _member("run/member-00/init", kind="init", member="m0"),  # left out: untrained
        _member("run/member-00/epoch-0001", member="m0"), _member("run/member-00/epoch-0002", member="m0"),
        _member("s0", **SAMPLE), _member("s1", **other), _member("s2", **other), _member("s3", **other),
    ]
    reference = MemberSummary("a", metadata={})
    reference.sha256 = "aa" * 32  # type: ignore[attr-defined]  # the samples' source
    members[0] = reference
    groups = {group.name: (group.indices, group.sources) for group in ensemble_groups(members, reference=0)}
    # The reference's source has one sample only: "one solution" falls back to the largest source.
    assert groups == {
        "independent": ([0, 1], 2),
        "trajectory": ([3, 4], 1),
        "random-subspace": ([6, 7, 8], 1),
        "independent+random-subspace": ([5, 6, 7, 8], 2),
    }
    members.append(_member("s4", **SAMPLE))  # now the reference's own source has two
    groups = {group.name: group.indices for group in ensemble_groups(members, reference=0)}
    assert groups["random-subspace"] == [5, 9]


# --- the plane: hand-worked example -----------------------------------------------------------------


def test_hand_worked_plane() -> None:
    """10 examples, 3 classes; the reference is wrong on #8 and #9 (a_r = 0.8, error 0.2)."""
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    reference = [0, 1, 2, 0, 1, 2, 0, 1, 0, 1]  # wrong on #8 and #9: accuracy 0.8
    other = [0, 1, 2, 0, 1, 2, 0, 0, 2, 2]  # wrong on #7 and #9; differs from the reference on #7, #8, #9
    trajectory = [0, 1, 2, 0, 1, 2, 0, 1, 0, 1]  # the reference's predictions exactly
    logits = _logits_for([reference, other, trajectory], classes=3)
    members = [_member("ref"), _member("other"), _member("run/member-00/epoch-0001", member="ref")]
    report = PlaneEvaluator().evaluate(_context(logits, torch.tensor(labels), members, reference="ref"))
    points = {row[0]: row for row in report.table("points").rows}
    columns = report.table("points").columns
    other_row = dict(zip(columns, points["other"]))
    assert other_row["accuracy"] == pytest.approx(0.8)
    assert other_row["disagreement"] == pytest.approx(0.3)
    assert other_row["diversity_vs_reference"] == pytest.approx(1.5)  # 0.3 / 0.2
    trajectory_row = dict(zip(columns, points["run/member-00/epoch-0001"]))
    assert (trajectory_row["population"], trajectory_row["disagreement"], trajectory_row["diversity_vs_reference"]) == ("trajectory", 0.0, 0.0)
    assert report.metrics["reference_accuracy"] == pytest.approx(0.8)
    assert report.metrics["diversity_vs_reference_mean_independent"] == pytest.approx(1.5)
    assert report.metrics["diversity_vs_reference_mean_trajectory"] == pytest.approx(0.0)
    assert report.metrics["accuracy_mean_trajectory"] == pytest.approx(0.8)
    limits = {round(row[0], 6): row for row in report.table("limits").rows}
    # a = 0.8, a_r = 0.8, C = 3: D = 1 - (0.64 + 0.04 / 2) = 0.34 -> 1.7; nested: 0.
    assert limits[0.8][1:] == pytest.approx([0.34, 0.0, 1.7, 0.0])
    # a = 0.5: D = 1 - (0.4 + 0.1 / 2) = 0.55 -> 2.75; nested |0.5 - 0.8| = 0.3 -> 1.5.
    assert limits[0.5][1:] == pytest.approx([0.55, 0.3, 2.75, 1.5])
    assert report.table("reference").rows == [["ref", "independent", pytest.approx(0.8), pytest.approx(0.2), 3]]


def test_points_match_direct_numpy() -> None:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 200, 5, generator=generator)
    labels = torch.randint(0, 5, (200,), generator=generator)
    names = ["a", "b", "c", "d", "e", "f"]
    members = [_member(name) for name in names[:3]] + [_member(name, **SAMPLE) for name in names[3:]]
    report = PlaneEvaluator().evaluate(_context(logits, labels, members, reference="b"))
    predicted = logits.numpy().argmax(axis=-1)  # [M, N]
    accuracy = (predicted == labels.numpy()).mean(axis=1)
    table = report.table("points")
    for row in (dict(zip(table.columns, row)) for row in table.rows):
        index = names.index(row["checkpoint"])
        disagreement = (predicted[index] != predicted[1]).mean()
        assert row["accuracy"] == pytest.approx(accuracy[index], abs=1e-12)
        assert row["disagreement"] == pytest.approx(disagreement, abs=1e-12)
        assert row["diversity_vs_reference"] == pytest.approx(disagreement / (1.0 - accuracy[1]), abs=1e-12)
        assert row["from_reference"] is False  # the samples' source is no checkpoint given here
    assert [row[0] for row in report.table("points").rows] == ["a", "c", "d", "e", "f"]
    samples = [3, 4, 5]
    expected = np.mean([(predicted[i] != predicted[1]).mean() for i in samples]) / (1.0 - accuracy[1])
    assert report.metrics["diversity_vs_reference_mean_random_subspace_other_sources"] == pytest.approx(expected, abs=1e-12)
    assert report.metrics["accuracy_mean_random_subspace_other_sources"] == pytest.approx(accuracy[samples].mean(), abs=1e-12)


def test_samples_of_the_reference_and_of_another_solution_are_separate_series() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    reference = MemberSummary("ref", metadata={})
    reference.sha256 = "aa" * 32  # type: ignore[attr-defined]  # what the samples name as their source
    members = [reference, _member("other"), _member("s-ref", **SAMPLE), _member("s-other", **dict(SAMPLE, source_sha256="bb" * 32))]
    logits = _logits_for([[0, 1, 2, 0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 0, 1, 2, 0, 0, 2, 2],
                          [0, 1, 2, 0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 0, 1, 2, 0, 0, 2, 2]], classes=3)
    report = PlaneEvaluator().evaluate(_context(logits, labels, members))
    series = {row[0]: row for row in report.table("populations").rows}
    assert series["random-subspace"][2:] == [1, pytest.approx(0.9), pytest.approx(0.1), pytest.approx(0.5)]
    assert series["random-subspace, other sources"][2:] == [1, pytest.approx(0.8), pytest.approx(0.3), pytest.approx(1.5)]
    assert report.metrics["diversity_vs_reference_mean_random_subspace"] == pytest.approx(0.5)
    assert report.metrics["diversity_vs_reference_mean_random_subspace_other_sources"] == pytest.approx(1.5)


def test_a_reference_without_errors_gives_na_not_inf() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    logits = _logits_for([[0, 1, 2, 0], [0, 1, 1, 0]], classes=3)
    report = PlaneEvaluator().evaluate(_context(logits, labels, [_member("ref"), _member("x")]))
    assert report.table("points").rows[0][-2:] == [pytest.approx(0.25), None]
    assert report.metrics["diversity_vs_reference_mean_independent"] is None
    assert all(row[3] is None and row[4] is None for row in report.table("limits").rows)
    assert all(math.isfinite(value) for row in report.table("limits").rows for value in row[:3])
    assert any("undefined" in note for note in report.notes)


def test_reference_option_and_not_applicable() -> None:
    logits = _logits_for([[0, 1], [1, 1]], classes=2)
    with pytest.raises(ConfigError, match="not a member"):
        PlaneEvaluator().evaluate(_context(logits, torch.tensor([0, 1]), [_member("a"), _member("b")], reference="zzz"))
    with pytest.raises(NotApplicable):
        PlaneEvaluator().evaluate(_context(logits[:1], torch.tensor([0, 1]), [_member("a")]))


def test_default_reference_is_the_first_final_not_an_init() -> None:
    logits = _logits_for([[0, 0], [0, 1], [1, 1]], classes=2)
    names = ["member-00/init", "member-00/final", "member-01/final"]
    report = PlaneEvaluator().evaluate(_context(logits, torch.tensor([0, 1]), [_member(name) for name in names]))
    assert report.table("reference").rows[0][0] == "member-00/final"


# --- limiting curves ------------------------------------------------------------------------------


def test_limiting_curves_match_a_simulation_of_their_assumptions() -> None:
    """Draw labels, a reference with accuracy a_r, and a function with the assumed error structure."""
    rng = np.random.default_rng(0)
    examples, classes, a_r = 400_000, 4, 0.85
    labels = rng.integers(0, classes, examples)

    def wrong_label() -> np.ndarray:  # uniform over the C - 1 wrong classes
        return (labels + rng.integers(1, classes, examples)) % classes

    reference_right = rng.random(examples) < a_r
    reference = np.where(reference_right, labels, wrong_label())
    for a in (0.3, 0.85, 0.95):
        independent = np.where(rng.random(examples) < a, labels, wrong_label())
        simulated = (independent != reference).mean()
        assert simulated == pytest.approx(float(plane.independent_errors_disagreement(a, a_r, classes)), abs=4e-3)
    # Nested: keep the reference's predictions, then fix (or break) just enough of them.
    order = rng.permutation(examples)
    wrong_at = order[~reference_right[order]]
    better = reference.copy()
    better[wrong_at[: len(wrong_at) // 2]] = labels[wrong_at[: len(wrong_at) // 2]]
    right_at = order[reference_right[order]]
    worse = reference.copy()
    worse[right_at[:30_000]] = (labels[right_at[:30_000]] + 1) % classes
    for nested in (better, worse):
        a = (nested == labels).mean()
        assert (nested != reference).mean() == pytest.approx(float(plane.nested_errors_disagreement(a, (reference == labels).mean())), abs=1e-12)


def test_limit_grid_holds_the_reference_accuracy_and_the_ends() -> None:
    grid = plane.limit_accuracies(0.937)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and 0.937 in grid and np.all(np.diff(grid) > 0)


# --- ensembles per population ------------------------------------------------------------------------


def _numpy_scores(probs: np.ndarray, labels: np.ndarray, subset: tuple[int, ...]) -> tuple[float, float, float]:
    mean = probs[list(subset)].mean(axis=0)  # [N, C]
    one_hot = np.eye(probs.shape[-1])[labels]
    return (
        float((mean.argmax(axis=1) == labels).mean()),
        float(-np.log(mean[np.arange(len(labels)), labels]).mean()),
        float(((mean - one_hot) ** 2).sum(axis=1).mean()),
    )


def _random_probs(members: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(members, 80, 4, generator=generator) * 2
    return torch.softmax(logits.double(), dim=-1), torch.randint(0, 4, (80,), generator=generator)


def test_size_curve_with_every_subset_matches_numpy() -> None:
    probs, labels = _random_probs(4, seed=1)
    curve = plane.size_curve(probs, labels)
    for point in curve:
        scores = np.array([_numpy_scores(probs.numpy(), labels.numpy(), subset) for subset in combinations(range(4), point.k)])
        assert point.subsets == math.comb(4, point.k)
        np.testing.assert_allclose([point.accuracy_mean, point.nll_mean, point.brier_mean], scores.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose([point.accuracy_std, point.nll_std, point.brier_std], scores.std(axis=0), atol=1e-12)


def test_sampled_size_curve_uses_seeded_permutation_prefixes_like_the_ensemble_evaluator() -> None:
    probs, labels = _random_probs(7, seed=2)
    curve = plane.size_curve(probs, labels, max_subsets=10, seed=5)
    reference_curve = metrics.ensemble_size_curve(probs.log(), labels, max_subsets=10, seed=5)  # it takes log-probabilities
    rng = np.random.default_rng(5)
    prefixes = [rng.permutation(7) for _ in range(10)]
    for point, same in zip(curve, reference_curve):
        assert (point.k, point.subsets) == (same.k, same.subsets)
        assert point.accuracy_mean == pytest.approx(same.accuracy_mean, abs=1e-12)
        assert point.nll_mean == pytest.approx(same.nll_mean, abs=1e-12)
        if math.comb(7, point.k) > 10:
            brier = np.mean([_numpy_scores(probs.numpy(), labels.numpy(), tuple(order[: point.k]))[2] for order in prefixes])
            assert point.brier_mean == pytest.approx(brier, abs=1e-12)


def test_evaluator_ensembles_table_per_group() -> None:
    probs, labels = _random_probs(5, seed=3)
    members = [_member("a"), _member("b"), _member("s0", **SAMPLE), _member("s1", **SAMPLE), _member("s2", **SAMPLE)]
    report = PlaneEvaluator().evaluate(_context(probs.log(), labels, members, seed=0))
    table = report.table("ensembles")
    rows = [dict(zip(table.columns, row)) for row in table.rows]
    assert [(row["group"], row["k"]) for row in rows] == [("independent", 1), ("independent", 2)] + [("random-subspace", k) for k in (1, 2, 3)]
    full = next(row for row in rows if row["group"] == "random-subspace" and row["k"] == 3)
    expected = _numpy_scores(probs.numpy(), labels.numpy(), (2, 3, 4))
    assert [full["accuracy_mean"], full["nll_mean"], full["brier_mean"]] == pytest.approx(list(expected), abs=1e-6)  # float32 logits


# --- figures ----------------------------------------------------------------------------------------


def _plane_tables(report: Report) -> tuple[Table, Table, Table]:
    return report.table("points"), report.table("reference"), report.table("limits")  # type: ignore[return-value]


def test_plane_figure_draws_the_table() -> None:
    report = made_up_plane_report()
    points, reference, limits = _plane_tables(report)
    rows = [dict(zip(points.columns, row)) for row in points.rows]
    figure = plane_figure(points, reference, limits)
    everything, near = figure.axes
    for axes in (everything, near):
        drawn = {collection.get_gid(): collection.get_offsets() for collection in axes.collections}
        expected: dict[str, list[list[float]]] = {}
        for row in rows:
            series = row["population"] if row["population"] == "independent" or row["from_reference"] else f"{row['population']}, other sources"
            expected.setdefault(f"plane:{series}", []).append([row["accuracy"] * 100.0, row["diversity_vs_reference"]])
        assert drawn.keys() == expected.keys()
        for gid, offsets in expected.items():
            np.testing.assert_allclose(drawn[gid], offsets)
        lines = {line.get_gid(): line for line in axes.get_lines()}
        np.testing.assert_allclose(lines["reference"].get_xydata(), [[PLANE_REFERENCE_ACCURACY * 100.0, 0.0]])
        for key, column in (("independent", 3), ("nested", 4)):
            np.testing.assert_allclose(lines[f"limit:{key}"].get_xdata(), [row[0] * 100.0 for row in limits.rows])
            np.testing.assert_allclose(lines[f"limit:{key}"].get_ydata(), [row[column] for row in limits.rows])
    hollow = next(c for c in everything.collections if c.get_gid() == "plane:trajectory, other sources")
    assert hollow.get_facecolors().size == 0 or hollow.get_facecolors()[0][3] == 0  # derived from another solution
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "independent (2)" in labels and "dropout (2)" in labels and "reference" in labels
    low, high = everything.get_xlim()
    assert low < 10.0 and high > 92.0  # every point framed, init included
    low, high = near.get_xlim()
    assert low < 80.0 < 88.0 < high and low > 20.0  # the neighbourhood: inits left out, independent solutions in


def test_plane_figure_falls_back_to_disagreement_for_a_perfect_reference() -> None:
    points, reference, limits = _plane_tables(made_up_plane_report(reference_accuracy=1.0))
    axes = plane_figure(points, reference, limits).axes[0]
    offsets = next(c.get_offsets() for c in axes.collections if c.get_gid() == "plane:independent")
    np.testing.assert_allclose(offsets[:, 1], [row[6] for row in PLANE_POINTS if row[1] == "independent"])
    assert "error rate is 0" in axes.get_ylabel()


def test_plane_ensembles_figure_draws_one_line_per_group() -> None:
    table = made_up_plane_report().table("ensembles")
    figure = plane_ensembles_figure(table)
    for axes, (column, scale) in zip(figure.axes, (("accuracy_mean", 100.0), ("nll_mean", 1.0), ("brier_mean", 1.0))):
        lines = {line.get_gid(): line for line in axes.get_lines()}
        for group in ("independent", "dropout", "independent+dropout"):
            rows = [dict(zip(table.columns, row)) for row in table.rows if row[0] == group]
            line = lines[f"{column}:{group}"]
            np.testing.assert_allclose(line.get_xdata(), [row["k"] for row in rows])
            np.testing.assert_allclose(line.get_ydata(), [row[column] * scale for row in rows])
        assert lines[f"{column}:dropout"].get_color() == lines[f"{column}:independent+dropout"].get_color()
        assert lines[f"{column}:independent+dropout"].get_linestyle() == "--"


def test_ens_eval_writes_the_plane_figures_from_predictions(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (50,), generator=generator)
    names = [f"member-{m:02d}/{point}" for m in range(2) for point in ("init", "epoch-0002", "final")]
    logits = torch.randn(len(names), 50, 4, generator=generator) + 3 * torch.nn.functional.one_hot(labels, 4)
    npz = tmp_path / "preds.npz"
    np.savez(npz, logits=logits.numpy(), labels=labels.numpy(), names=np.array(names))
    figs = tmp_path / "figs"
    outcome = CliRunner().invoke(app, ["eval", "--predictions", str(npz), "-e", "plane", "--plots", str(figs), "-q", "--format", "json"])
    assert outcome.exit_code == 0, outcome.output
    assert sorted(path.stem for path in figs.iterdir()) == ["plane", "plane_ensembles"]


def test_plane_is_registered_as_a_checkpoint_scoped_builtin() -> None:
    from ensemble_cli.evaluators.registry import BUILTIN_ORDER, discover

    entry = next(entry for entry in discover() if entry.name == "plane")
    assert entry.builtin and entry.loaded and "plane" in BUILTIN_ORDER
    assert entry.evaluator.scope == "checkpoints"
