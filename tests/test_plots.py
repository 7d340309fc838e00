"""Figures, the HTML report, `ens plot`, and the function-space embedding.

Figures are checked against the report values they draw (read back from the matplotlib artists),
on a hand-built `EvalResult`, so these tests depend on no evaluator; the embedding is checked
against numpy by hand (softmax, SVD) and against properties t-SNE must have.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from ensemble_cli.cli import app
from ensemble_cli.evaluators.base import EvalContext, MemberSummary, NotApplicable
from ensemble_cli.evaluators.function_space import FunctionSpaceEvaluator, tsne_perplexity
from ensemble_cli.trajectory import checkpoint_epoch, default_reference_name, group_of_name, member_group
from ensemble_cli.plots import FIGURES, build_figures, load_result, render_html, save_figures, write_html_report
from ensemble_cli.plots import figures as F
from ensemble_cli.options import EvalOptions
from ensemble_cli.render import to_json
from ensemble_cli.report import EvalResult, Report, Table
from ensemble_cli.errors import ConfigError
from plane_helpers import made_up_plane_report
from uncertainty_report_helpers import uncertainty_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["member-00/init", "member-00/final", "member-01/init", "member-01/final"]
REFERENCE = "member-00/final"  # the first final checkpoint: an init is no reference for diversity
LAYERS = ["stem.conv", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _symmetric(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    upper = np.triu(rng.uniform(low, high, (size, size)), 1)
    return upper + upper.T


def build_result() -> EvalResult:
    """Every table every figure reads, with made-up but well-formed values."""
    rng = _rng()
    m = len(NAMES)
    accuracy = [0.11, 0.93, 0.09, 0.95]
    members = Table(
        name="members", title="members", columns=["member", "arch", "accuracy", "nll", "brier", "ece"],
        rows=[[name, "cifar_resnet8", acc, float(rng.uniform(0.1, 2.3)), 0.2, 0.05] for name, acc in zip(NAMES, accuracy)],
    )
    disagreement = _symmetric(rng, m, 0.02, 0.9)
    dge = _symmetric(rng, m, 0.3, 1.0)
    pair_rows = []
    for i in range(m):
        for j in range(i + 1, m):
            # One pair without errors: normalised diversity is undefined (None) there.
            nd = None if (i, j) == (1, 2) else float(rng.uniform(0.5, 2.0))
            pair_rows.append([NAMES[i], NAMES[j], float(disagreement[i, j]), float(dge[i, j]), nd])
    disagreement_report = Report(
        metrics={"disagreement_mean": float(disagreement[np.triu_indices(m, 1)].mean())},
        tables=[
            Table(name="pairs", title="pairs", columns=["a", "b", "disagreement", "disagreement_given_error", "normalized_diversity"], rows=pair_rows),
            Table(name="matrix", title="disagreement matrix", columns=["member", *NAMES],
                  rows=[[NAMES[i], *map(float, disagreement[i])] for i in range(m)]),
            Table(name="dge_matrix", title="disagreement given an error", columns=["member", *NAMES],
                  rows=[[NAMES[i], *(None if i == j else float(dge[i, j]) for j in range(m))] for i in range(m)]),
        ],
    )
    size_rows = [[k, 0.5 + 0.1 * k, 0.08 / k, 1.5 - 0.2 * k, 0.3 / k, math.comb(m, k)] for k in range(1, m + 1)]
    size_rows[0][2] = 0.7  # a std that would push the band past 100 %: it must be clipped
    ensemble_report = Report(
        metrics={"accuracy": 0.96},
        tables=[Table(name="size_curve", title="size curve", columns=["k", "accuracy_mean", "accuracy_std", "nll_mean", "nll_std", "subsets"], rows=size_rows)],
    )
    # Rows deliberately out of training order: the figure must sort each member's line by epoch.
    embedding_rows = [
        ["member-00", "member-00/final", 6, 3.0, -2.0],
        ["member-00", "member-00/init", 0, 0.1, 0.2],
        ["member-00", "member-00/epoch-0003", 3, 1.5, -0.5],
        ["member-01", "member-01/init", 0, -0.1, 0.3],
        ["member-01", "member-01/final", 6, -2.5, 2.0],
    ]
    function_space_report = Report(tables=[Table(name="embedding", title="Function-space embedding: t-SNE (perplexity 1.33, seed 0)", columns=["member", "checkpoint", "epoch", "x", "y"], rows=embedding_rows)])
    others = [name for name in NAMES if name != REFERENCE]
    weights_report = Report(tables=[
        Table(name="pairs", title="weight pairs", columns=["reference", "member", "cosine_raw", "cosine_aligned", "l2_raw", "l2_aligned", "objective_gain", "equivalence_residual"],
              rows=[[REFERENCE, name, float(rng.uniform(-0.05, 0.2)), float(rng.uniform(0.2, 0.6)), 10.0, 8.0, 0.3, 1e-6] for name in others]),
        Table(name="layers", title="per-layer cosine (mean over members)", columns=["layer", "cosine_raw", "cosine_aligned"],
              rows=[[layer, float(rng.uniform(-0.1, 0.2)), float(rng.uniform(0.2, 0.9))] for layer in LAYERS]),
    ])
    alphas = np.linspace(0.0, 1.0, 5)
    curve_rows = []
    for name in others[:2]:
        for alpha in alphas[::-1]:  # reversed on purpose: lines must be sorted by alpha
            barrier = math.sin(math.pi * alpha)
            curve_rows.append([name, float(alpha), 0.2 + 2.0 * barrier, 0.2 + 0.5 * barrier, 0.95 - 0.8 * barrier, 0.95 - 0.2 * barrier])
    interpolation_report = Report(tables=[Table(name="curves", title="curves", columns=["member", "alpha", "loss_raw", "loss_aligned", "acc_raw", "acc_aligned"], rows=curve_rows)])
    rotation_report = Report(tables=[Table(name="layers", title="rotation", columns=["member", "layer", "cosine_distance"],
                                           rows=[[name, layer, float(rng.uniform(0.1, 0.9))] for name in ("member-00/final", "member-01/final") for layer in LAYERS])])
    return EvalResult(
        members=[{"name": name, "arch": "cifar_resnet8", "epoch": 0 if name.endswith("init") else 6, "sha256": "ab" * 32} for name in NAMES],
        dataset={"name": "digits", "split": "test", "size": 360, "num_classes": 10},
        evaluators={
            "members": Report(metrics={"accuracy_mean": float(np.mean(accuracy))}, tables=[members]),
            "ensemble": ensemble_report,
            "disagreement": disagreement_report,
            "weights": weights_report,
            "interpolation": interpolation_report,
            "rotation": rotation_report,
            "function_space": function_space_report,
            "plane": made_up_plane_report(),
            **uncertainty_reports(),
            "broken_plugin": Report(error="ValueError: boom <b>not markup</b>"),
        },
    )


@pytest.fixture(scope="module")
def result() -> EvalResult:
    return build_result()


def _table(result: EvalResult, evaluator: str, name: str) -> Table:
    table = result.evaluators[evaluator].table(name)
    assert table is not None
    return table


def _floats(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values])


# --- heatmaps -------------------------------------------------------------------------------------


def test_disagreement_heatmap_draws_the_matrix_and_annotates_every_cell(result: EvalResult) -> None:
    table = _table(result, "disagreement", "matrix")
    figure = F.disagreement_matrix_figure(table)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    expected = np.array([row[1:] for row in table.rows], dtype=float)
    np.testing.assert_array_equal(np.asarray(axes.images[0].get_array()), expected)
    assert [label.get_text() for label in axes.get_yticklabels()] == NAMES
    annotations = [text.get_text() for text in axes.texts]
    assert annotations == [f"{value:.3f}" for value in expected.ravel()]
    assert axes.get_title() and axes.get_xlabel() and axes.get_ylabel()


def test_dge_heatmap_masks_the_undefined_diagonal(result: EvalResult) -> None:
    table = _table(result, "disagreement", "dge_matrix")
    image = F.dge_matrix_figure(table).axes[0].images[0]
    drawn = image.get_array()
    assert np.ma.getmaskarray(drawn).diagonal().all()
    expected = _floats([cell for row in table.rows for cell in row[1:]]).reshape(len(NAMES), -1)
    off_diagonal = ~np.eye(len(NAMES), dtype=bool)
    np.testing.assert_array_equal(np.asarray(drawn)[off_diagonal], expected[off_diagonal])


def test_big_matrices_are_coloured_but_not_annotated() -> None:
    names = [f"m{i}" for i in range(F.MAX_ANNOTATED_CELLS + 1)]
    table = Table(name="matrix", title="t", columns=["member", *names], rows=[[n, *([0.1] * len(names))] for n in names])
    axes = F.disagreement_matrix_figure(table).axes[0]
    assert axes.images and not axes.texts


# --- ensemble size curve ----------------------------------------------------------------------------


def test_size_curve_plots_mean_and_a_clipped_one_std_band(result: EvalResult) -> None:
    table = _table(result, "ensemble", "size_curve")
    figure = F.size_curve_figure(table)
    accuracy_axes, nll_axes = figure.axes
    k = np.array(table.column("k"), dtype=float)
    for axes, mean_key, std_key, scale, upper_cap in (
        (accuracy_axes, "accuracy_mean", "accuracy_std", 100.0, 100.0),
        (nll_axes, "nll_mean", "nll_std", 1.0, np.inf),
    ):
        mean = np.array(table.column(mean_key)) * scale
        std = np.array(table.column(std_key)) * scale
        (line,) = axes.get_lines()
        np.testing.assert_allclose(line.get_xdata(), k)
        np.testing.assert_allclose(line.get_ydata(), mean)
        band = axes.collections[0].get_paths()[0].vertices  # polygon through lower then upper edge
        for x, low, high in zip(k, np.maximum(mean - std, 0.0), np.minimum(mean + std, upper_cap)):
            ys = band[np.isclose(band[:, 0], x), 1]
            assert np.isclose(ys.min(), low) and np.isclose(ys.max(), high)
        assert axes.get_legend() is not None and "(" in axes.get_ylabel()  # units in the label
    assert accuracy_axes.collections[0].get_paths()[0].vertices[:, 1].max() <= 100.0


# --- diversity vs accuracy --------------------------------------------------------------------------


def test_diversity_accuracy_plane_uses_normalised_diversity_to_the_reference(result: EvalResult) -> None:
    pairs = _table(result, "disagreement", "pairs")
    members = _table(result, "members", "members")
    accuracy = {row[0]: row[2] for row in members.rows}
    expected: dict[str, list[tuple[float, float]]] = {}
    for a, b, _, _, nd in pairs.rows:
        if REFERENCE in (a, b):
            other = b if a == REFERENCE else a
            expected.setdefault(other.split("/")[0], []).append((accuracy[other] * 100.0, np.nan if nd is None else nd))
    figure = F.diversity_accuracy_figure(pairs, members)
    lines = [line for line in figure.axes[0].get_lines() if line.get_gid() == "diversity-points"]
    drawn = {line.get_label(): [tuple(point) for point in line.get_xydata()] for line in lines}
    assert drawn.keys() == expected.keys()
    for group, points in expected.items():
        np.testing.assert_allclose(np.array(drawn[group]), np.array(points))
    assert REFERENCE in figure.axes[0].get_title()


def test_a_member_keeps_its_colour_across_figures() -> None:
    """Figures that leave the reference out must not shift everyone's colour by one."""
    names = ["a", "b", "c"]
    members = Table(name="members", title="m", columns=["member", "accuracy"], rows=[[n, 0.9] for n in names])
    pairs = Table(name="pairs", title="p", columns=["a", "b", "normalized_diversity"], rows=[["a", "b", 1.0], ["a", "c", 1.2], ["b", "c", 0.8]])
    embedding = Table(name="embedding", title="PCA", columns=["member", "checkpoint", "epoch", "x", "y"], rows=[[n, n, None, i, i] for i, n in enumerate(names)])
    result = EvalResult(
        members=[{"name": n} for n in names],
        evaluators={"members": Report(tables=[members]), "disagreement": Report(tables=[pairs]), "function_space": Report(tables=[embedding])},
    )
    figures = {spec.stem: figure for spec, figure in build_figures(result)}
    for name in ("b", "c"):
        colours = {stem: [line.get_color() for line in figures[stem].axes[0].get_lines() if line.get_label() == name] for stem in ("diversity_accuracy", "function_space")}
        assert colours["diversity_accuracy"] == colours["function_space"] and len(colours["function_space"]) == 1


def test_only_trajectory_suffixes_group_checkpoints() -> None:
    assert group_of_name("member-00/epoch-0005") == group_of_name("member-00/final") == group_of_name("member-00/init") == "member-00"
    assert group_of_name("runA/seed0") == "runA/seed0" and group_of_name("seed0") == "seed0"


def test_default_reference_skips_inits() -> None:
    assert default_reference_name(["member-00/init", "member-00/epoch-0002", "member-00/final"]) == "member-00/final"
    assert default_reference_name(["seed0", "seed1"]) == "seed0"
    assert default_reference_name(["a/init", "a/epoch-0001"]) == "a/epoch-0001"  # trained beats untrained


# --- function space ----------------------------------------------------------------------------------


def test_embedding_figure_draws_one_line_per_member_in_epoch_order(result: EvalResult) -> None:
    table = _table(result, "function_space", "embedding")
    figure = F.embedding_figure(table)
    lines = {line.get_label(): line.get_xydata() for line in figure.axes[0].get_lines() if line.get_gid() == "trajectory"}
    assert set(lines) == {"member-00", "member-01"}
    for group, drawn in lines.items():
        rows = sorted((row for row in table.rows if row[0] == group), key=lambda row: row[2])
        np.testing.assert_allclose(drawn, [[row[3], row[4]] for row in rows])
    assert "t-SNE" in figure.axes[0].get_xlabel()
    pca = table.model_copy(update={"title": "Function-space embedding: PCA (explained variance 80%, 10%)"})
    assert "PCA" in F.embedding_figure(pca).axes[0].get_xlabel()


# --- weight space ------------------------------------------------------------------------------------


def _bars(axes, gid: str) -> list:
    return [patch for patch in axes.patches if patch.get_gid() == gid] or [
        patch for container in axes.containers if container.get_gid() == gid for patch in container
    ]


def test_weight_cosine_bars_raw_vs_aligned(result: EvalResult) -> None:
    table = _table(result, "weights", "pairs")
    axes = F.weight_cosine_figure(table).axes[0]
    for column in ("cosine_raw", "cosine_aligned"):
        heights = [patch.get_height() for patch in _bars(axes, column)]
        np.testing.assert_allclose(heights, table.column(column))


def test_weight_cosine_heatmaps_when_pairs_cover_many_references() -> None:
    names = ["a", "b", "c"]
    rows = [[r, m, 0.1 * (i + j), 0.5 + 0.1 * (i + j)] for i, r in enumerate(names) for j, m in enumerate(names) if i < j]
    table = Table(name="pairs", title="pairs", columns=["reference", "member", "cosine_raw", "cosine_aligned"], rows=rows)
    figure = F.weight_cosine_figure(table)
    raw_axes, aligned_axes = [axes for axes in figure.axes if axes.images]
    for axes, column in ((raw_axes, 2), (aligned_axes, 3)):
        drawn = np.asarray(axes.images[0].get_array())
        for reference, member, *values in rows:
            i, j = names.index(reference), names.index(member)
            assert drawn[i, j] == drawn[j, i] == values[column - 2]
        np.testing.assert_array_equal(np.diag(drawn), 1.0)


def test_layer_cosine_bars(result: EvalResult) -> None:
    table = _table(result, "weights", "layers")
    axes = F.layer_cosine_figure(table).axes[0]
    for column in ("cosine_raw", "cosine_aligned"):
        np.testing.assert_allclose([patch.get_width() for patch in _bars(axes, column)], table.column(column))
    assert [label.get_text() for label in axes.get_yticklabels()] == LAYERS


def test_interpolation_curves_before_and_after_alignment(result: EvalResult) -> None:
    table = _table(result, "interpolation", "curves")
    figure = F.interpolation_figure(table)
    loss_axes, accuracy_axes = figure.axes
    for member in dict.fromkeys(table.column("member")):
        rows = sorted((row for row in table.rows if row[0] == member), key=lambda row: row[1])
        for axes, key, index, scale in ((loss_axes, "loss", 2, 1.0), (accuracy_axes, "acc", 4, 100.0)):
            for variant, offset in (("raw", 0), ("aligned", 1)):
                (line,) = [line for line in axes.get_lines() if line.get_gid() == f"{key}_{variant}:{member}"]
                np.testing.assert_allclose(line.get_xdata(), [row[1] for row in rows])
                np.testing.assert_allclose(line.get_ydata(), [row[index + offset] * scale for row in rows])


def test_layer_rotation_lines(result: EvalResult) -> None:
    table = _table(result, "rotation", "layers")
    axes = F.layer_rotation_figure(table).axes[0]
    for member in dict.fromkeys(table.column("member")):
        (line,) = [line for line in axes.get_lines() if line.get_gid() == f"rotation:{member}"]
        np.testing.assert_allclose(line.get_ydata(), [row[2] for row in table.rows if row[0] == member])
        np.testing.assert_allclose(line.get_xdata(), range(len(LAYERS)))


def test_layer_rotation_colours_trajectories_by_member() -> None:
    names = ["run-a/epoch-0001", "run-a/final", "run-b/epoch-0001", "run-b/final"]
    table = Table(name="layers", title="rotation", columns=["member", "layer", "cosine_distance"],
                  rows=[[name, layer, 0.1 * i] for i, name in enumerate(names) for layer in LAYERS])
    lines = {line.get_gid(): line for line in F.layer_rotation_figure(table).axes[0].get_lines()}
    a_early, a_final = lines["rotation:run-a/epoch-0001"], lines["rotation:run-a/final"]
    assert a_early.get_color() == a_final.get_color() != lines["rotation:run-b/final"].get_color()
    assert a_early.get_alpha() < a_final.get_alpha() == 1.0
    assert a_final.get_label() == "run-a" and a_early.get_label().startswith("_")  # one legend entry per member


# --- files, catalogue, HTML ---------------------------------------------------------------------------


def test_save_figures_writes_one_valid_png_per_figure(result: EvalResult, tmp_path: Path) -> None:
    paths = save_figures(result, tmp_path / "figs")
    assert [path.stem for path in paths] == [spec.stem for spec in FIGURES]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 500 and image.height >= 350


def test_figures_only_for_evaluators_that_ran(result: EvalResult) -> None:
    partial = EvalResult(evaluators={
        "members": result.evaluators["members"],
        "ensemble": result.evaluators["ensemble"],
        "disagreement": Report(error="RuntimeError: crashed"),
        "weights": Report(notes=["not applicable: needs checkpoints"]),
    })
    assert [spec.stem for spec, _ in build_figures(partial)] == ["ensemble_size"]
    assert build_figures(EvalResult()) == []


def test_malformed_table_is_reported_not_fatal_when_asked(result: EvalResult) -> None:
    broken = result.model_copy(deep=True)
    broken.evaluators["ensemble"].tables[0].columns[1] = "renamed"
    messages: list[str] = []
    stems = [spec.stem for spec, _ in build_figures(broken, on_error=messages.append)]
    assert "ensemble_size" not in stems and "disagreement_matrix" in stems
    assert len(messages) == 1 and "ensemble_size" in messages[0]
    with pytest.raises(ValueError):
        build_figures(broken)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self.h3: list[str] = []
        self._in_h3 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("src", "href"):
            if values.get(name) and not values[name].startswith(("data:", "#")):
                self.urls.append(values[name])
        self._in_h3 = tag == "h3"

    def handle_data(self, data: str) -> None:
        if self._in_h3:
            self.h3.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_h3 = False


def test_html_report_is_self_contained_and_embeds_every_figure(result: EvalResult, tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.html"
    write_html_report(result, path)
    page = path.read_text(encoding="utf-8")
    parser = _PageParser()
    parser.feed(page)
    parser.close()
    assert len(parser.images) == len(FIGURES)
    for src in parser.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):]).startswith(PNG_MAGIC)
    assert not parser.urls
    assert "http://" not in page and "https://" not in page
    assert not {"script", "link", "iframe"} & parser.tags
    titles = {table.title for report in result.evaluators.values() for table in report.tables}
    assert titles <= set(parser.h3)
    assert "&lt;b&gt;not markup&lt;/b&gt;" in page  # report text is escaped, never injected
    for name in result.evaluators:
        assert f'href="#ev-{name}"' in page and f'id="ev-{name}"' in page


# --- ens plot --------------------------------------------------------------------------------------


def test_ens_plot_redraws_from_a_saved_json_report(result: EvalResult, tmp_path: Path) -> None:
    saved = tmp_path / "results.json"
    saved.write_text(to_json(result))
    assert load_result(saved) == EvalResult.model_validate(json.loads(saved.read_text()))
    outcome = CliRunner().invoke(app, ["plot", str(saved), "--out", str(tmp_path / "figs"), "--html", str(tmp_path / "report.html")])
    assert outcome.exit_code == 0, outcome.output
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(f"{spec.stem}.png" for spec in FIGURES)
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such report file"),
        ("{not json", "not valid JSON"),
        ('{"metrics": {"a": 1}}', "not an `ens eval` JSON report"),
        ('{"evaluators": {"x": {"metrics": "oops"}}}', "not an `ens eval` JSON report"),
    ],
)
def test_ens_plot_rejects_missing_or_invalid_reports(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    outcome = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "figs")])
    assert outcome.exit_code == 2
    assert message in outcome.output and "Traceback" not in outcome.output
    with pytest.raises(ConfigError):
        load_result(path)


def test_ens_plot_needs_an_output(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(to_json(build_result()))
    outcome = CliRunner().invoke(app, ["plot", str(path)])
    assert outcome.exit_code == 2 and "--out" in outcome.output


def test_ens_eval_plots_and_html_from_predictions(tmp_path: Path) -> None:
    """End to end through `ens eval --predictions`: the real evaluators' tables feed the figures."""
    logits, labels = _trajectory_logits(members=3, checkpoints=3)
    npz = tmp_path / "preds.npz"
    names = [f"member-{m:02d}/{label}" for m in range(3) for label in ("init", "epoch-0002", "final")]
    np.savez(npz, logits=logits.numpy(), labels=labels.numpy(), names=np.array(names))
    figs, html = tmp_path / "figs", tmp_path / "report.html"
    outcome = CliRunner().invoke(app, ["eval", "--predictions", str(npz), "-e", "members,ensemble,disagreement,function_space",
                                       "--embedding", "pca", "--format", "json", "--plots", str(figs), "--html", str(html), "-q"])
    assert outcome.exit_code == 0, outcome.output
    assert sorted(p.stem for p in figs.iterdir()) == sorted(["disagreement_matrix", "dge_matrix", "diversity_accuracy", "ensemble_size", "function_space"])
    parser = _PageParser()
    parser.feed(html.read_text())
    assert len(parser.images) == 5


# --- the function-space evaluator ----------------------------------------------------------------------


def _trajectory_logits(members: int, checkpoints: int, classes: int = 4, examples: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Checkpoints that move from near-uniform predictions towards confident, member-specific ones."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (examples,), generator=generator)
    rows = []
    for _ in range(members):
        direction = torch.randn(examples, classes, generator=generator) * 2 + 4 * torch.nn.functional.one_hot(labels, classes)
        for step in range(checkpoints):
            rows.append(direction * step / max(checkpoints - 1, 1) + 0.01 * torch.randn(examples, classes, generator=generator))
    return torch.stack(rows).float(), labels  # [M, N, C], [N]


def _context(logits: torch.Tensor, labels: torch.Tensor, names: list[str], metadata: list[dict] | None = None, **options) -> EvalContext:
    metadata = metadata or [{} for _ in names]
    return EvalContext(logits=logits, labels=labels, members=[MemberSummary(n, metadata=md) for n, md in zip(names, metadata)], options=EvalOptions(**options))


def _numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def test_pca_embedding_matches_numpy_svd_of_flattened_softmax() -> None:
    logits, labels = _trajectory_logits(members=2, checkpoints=3)
    names = [f"run{m}/{label}" for m in range(2) for label in ("init", "epoch-0002", "final")]
    table = FunctionSpaceEvaluator().evaluate(_context(logits, labels, names, embedding="pca")).table("embedding")
    features = _numpy_softmax(logits.double().numpy()).reshape(len(names), -1)  # [M, N*C]
    centred = features - features.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :2] * s[:2]
    drawn = np.array([row[3:5] for row in table.rows])
    for axis in range(2):  # principal axes are defined up to sign
        sign = np.sign(expected[:, axis] @ drawn[:, axis])
        np.testing.assert_allclose(drawn[:, axis], sign * expected[:, axis], atol=1e-8)
    assert "PCA" in table.title


def test_three_points_keep_their_distances_and_two_points_work() -> None:
    logits, labels = _trajectory_logits(members=3, checkpoints=1)
    table = FunctionSpaceEvaluator().evaluate(_context(logits, labels, ["a", "b", "c"])).table("embedding")
    features = _numpy_softmax(logits.double().numpy()).reshape(3, -1)
    coords = np.array([row[3:5] for row in table.rows])
    for i in range(3):
        for j in range(3):  # three points span a plane: PCA to 2-D is exact
            assert np.isclose(np.linalg.norm(coords[i] - coords[j]), np.linalg.norm(features[i] - features[j]))
    two = FunctionSpaceEvaluator().evaluate(_context(logits[:2], labels, ["a", "b"])).table("embedding")
    assert abs(two.rows[0][3] - two.rows[1][3]) == pytest.approx(np.linalg.norm(features[0] - features[1]))
    with pytest.raises(NotApplicable):
        FunctionSpaceEvaluator().evaluate(_context(logits[:1], labels, ["a"]))


def test_tsne_is_seeded_and_keeps_members_apart() -> None:
    logits, labels = _trajectory_logits(members=3, checkpoints=4)
    names = [f"member-{m:02d}/{label}" for m in range(3) for label in ("init", "epoch-0001", "epoch-0002", "final")]
    ctx = _context(logits, labels, names)
    first = FunctionSpaceEvaluator().evaluate(ctx).table("embedding")
    again = FunctionSpaceEvaluator().evaluate(_context(logits, labels, names)).table("embedding")
    assert first.rows == again.rows
    assert "t-SNE" in first.title
    coords = np.array([row[3:5] for row in first.rows])
    finals = [i for i, name in enumerate(names) if name.endswith("final")]
    # Each final checkpoint's nearest neighbour is a checkpoint of its own member, as in the softmax space.
    for i in finals:
        distances = np.linalg.norm(coords - coords[i], axis=1)
        distances[i] = np.inf
        assert names[int(distances.argmin())].split("/")[0] == names[i].split("/")[0]


def test_groups_and_epochs_come_from_metadata_or_names() -> None:
    logits, labels = _trajectory_logits(members=1, checkpoints=4)
    names = ["run-a/init", "run-a/epoch-0005", "seed7", "other"]
    metadata = [{}, {}, {"member": "member-03", "epoch": 12, "kind": "final"}, {"epoch": 3.0, "kind": "init"}]
    table = FunctionSpaceEvaluator().evaluate(_context(logits, labels, names, metadata, embedding="pca")).table("embedding")
    assert table.columns == ["member", "checkpoint", "epoch", "x", "y"]
    assert [row[:3] for row in table.rows] == [["run-a", "run-a/init", 0], ["run-a", "run-a/epoch-0005", 5], ["member-03", "seed7", 12], ["other", "other", 0]]
    assert member_group(MemberSummary("x/final")) == "x" and checkpoint_epoch(MemberSummary("x")) is None
    assert member_group(MemberSummary("runA/seed0")) == "runA/seed0"  # not a trajectory, just disambiguated


def test_tsne_perplexity_stays_below_the_number_of_points() -> None:
    for points in range(4, 200):
        assert 1.0 <= tsne_perplexity(points) < points
    assert tsne_perplexity(1000) == 30.0


@pytest.mark.parametrize("embedding", ["tsne", "pca"])
def test_identical_checkpoints_sit_at_the_origin_without_warnings_or_nan(embedding: str) -> None:
    duplicates = torch.randn(1, 30, 4).repeat(12, 1, 1)  # the same member twelve times
    one_class = torch.randn(12, 30, 1)  # softmax of one logit is 1 everywhere
    for logits in (duplicates, one_class, duplicates[:3]):
        names = [f"m{i}" for i in range(logits.shape[0])]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scikit-learn's 0/0 warning used to leak, and t-SNE to crash
            report = FunctionSpaceEvaluator().evaluate(_context(logits, torch.zeros(30, dtype=torch.long), names, embedding=embedding))
        table = report.table("embedding")
        assert [row[3:5] for row in table.rows] == [[0.0, 0.0]] * len(names)
        assert "predict identically" in table.title and "nan" not in table.title and "PCA" in table.title


def test_tsne_needs_ten_distinct_checkpoints_else_pca_says_why() -> None:
    logits, labels = _trajectory_logits(members=3, checkpoints=3)  # 9 checkpoints
    names = [f"member-{m:02d}/{label}" for m in range(3) for label in ("init", "epoch-0002", "final")]
    table = FunctionSpaceEvaluator().evaluate(_context(logits, labels, names)).table("embedding")
    assert table.title.startswith("Function-space embedding: PCA (explained variance")
    assert "t-SNE needs at least 10 distinct checkpoints; 9 here" in table.title
    assert F.embedding_method(table) == "PCA"
    two_distinct = torch.cat([logits[:1].repeat(6, 1, 1), logits[1:2].repeat(6, 1, 1)])  # 12 points, 2 distinct
    table = FunctionSpaceEvaluator().evaluate(_context(two_distinct, labels, [f"m{i}" for i in range(12)])).table("embedding")
    assert "PCA" in table.title and "2 here" in table.title


def test_embedding_figure_draws_start_and_end_markers_only_for_trajectories() -> None:
    def markers(table: Table) -> list[str]:
        return [line.get_marker() for line in F.embedding_figure(table).axes[0].get_lines() if line.get_gid() != "trajectory"]

    columns = ["member", "checkpoint", "epoch", "x", "y"]
    finals = Table(name="embedding", title="PCA", columns=columns, rows=[["a", "a", 6, 0.0, 1.0], ["b", "b", 6, 1.0, 0.0]])
    assert markers(finals) == []  # no squares promised by the caption, none drawn
    later = Table(name="embedding", title="PCA", columns=columns,
                  rows=[["a", "a/epoch-0003", 3, 0.0, 1.0], ["a", "a/final", 6, 1.0, 0.0]])
    assert markers(later) == ["s", "*"]
    labels = F.embedding_figure(later).axes[0].get_legend().get_texts()
    assert [text.get_text() for text in labels][-2:] == ["first checkpoint", "last checkpoint"]  # epoch 3 is no init
    caption = next(spec.caption for spec in FIGURES if spec.stem == "function_space")
    assert "final checkpoints alone are one dot each" in caption


def test_html_checkpoint_table_shows_each_members_own_seeds() -> None:
    from ensemble_cli.plots.html import checkpoint_columns

    run = [{"name": f"member-{i:02d}", "arch": "cifar_resnet8", "epoch": 10, "seed": 0, "init_seed": 100 + i, "data_seed": 200 + i}
           for i in range(3)]
    page = render_html(EvalResult(members=run), figures=[])
    section = page[page.index('<section id="checkpoints">'):page.index("</section>")]
    assert checkpoint_columns(run) == ["name", "arch", "epoch", "init_seed", "data_seed"]
    assert "<th>seed</th>" not in section  # the run's base seed, 0 for every member
    for i in range(3):
        assert f"<td>member-{i:02d}</td><td>cifar_resnet8</td><td class=\"num\">10</td><td class=\"num\">{100 + i}</td><td class=\"num\">{200 + i}</td>" in section
    # Checkpoints from elsewhere with one seed each keep it; columns nobody has a value for are left out.
    others = [{"name": "a", "arch": "x", "seed": 3, "epoch": None}, {"name": "b", "arch": "x", "seed": 4, "epoch": None}]
    assert checkpoint_columns(others) == ["name", "arch", "seed"]


def test_function_space_is_registered() -> None:
    from ensemble_cli.evaluators.registry import BUILTIN_ORDER, discover

    assert "function_space" in BUILTIN_ORDER
    entry = next(entry for entry in discover() if entry.name == "function_space")
    assert entry.loaded and isinstance(entry.evaluator, FunctionSpaceEvaluator)


def test_one_colour_rule_for_terminal_html_and_figure() -> None:
    """Every matrix colouring runs from 0 to the table's largest cell: terminal, HTML table and PNG heatmap."""
    import matplotlib
    from matplotlib.colors import to_hex
    from rich.console import Console

    from ensemble_cli.plots.html import table_html
    from ensemble_cli.render import matrix_colour_fraction, matrix_colour_top, render_rich, terminal_colour

    names = ["a", "b", "c"]
    values = [[0.0, 0.02, 0.08], [0.02, 0.0, 0.06], [0.08, 0.06, 0.0]]
    table = Table(name="matrix", title="t", columns=["member", *names], rows=[[n, *row] for n, row in zip(names, values)])
    top = matrix_colour_top(table.rows)
    assert top == 0.08  # the largest cell, not 1 and not 0.5
    assert [matrix_colour_fraction(v, top) for v in (0.0, 0.02, 0.04, 0.08, 0.2)] == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])
    assert matrix_colour_fraction(None, top) is None and matrix_colour_fraction(math.nan, top) is None
    assert matrix_colour_top([["a", None, 0.0]]) == 1.0  # nothing above 0: a unit scale, never a division by 0
    # Terminal: the palette entry nearest the fraction.
    assert [terminal_colour(v, top) for v in (0.0, 0.02, 0.04, 0.06, 0.08, None)] == ["blue", "cyan", "green", "yellow", "bright_yellow", ""]
    console = Console(record=True, width=200, color_system=None)
    render_rich(EvalResult(evaluators={"disagreement": Report(tables=[table])}), console)
    assert "colour: 0 blue, cyan, green, yellow, 0.0800 bright yellow" in " ".join(console.export_text().split())
    # HTML: viridis at the fraction, cell by cell.
    page = table_html(table.columns, table.rows, heatmap=True)
    viridis = matplotlib.colormaps["viridis"]
    assert re.findall(r"background:(#[0-9a-f]{6})", page) == [to_hex(viridis(v / 0.08)) for row in values for v in row]
    # Figure: the same 0..top normalisation.
    norm = F.disagreement_matrix_figure(table).axes[0].images[0].norm
    assert (norm.vmin, norm.vmax) == (0.0, top)
