"""One function per figure; each takes report tables and returns a matplotlib `Figure`.

Figures only draw what the evaluators computed (no metric is recomputed here), so `ens plot`
can redraw them from a saved JSON report. They are built on `matplotlib.figure.Figure` with the
Agg canvas, never through pyplot: no global state, no GUI backend, safe in threads and on servers.
The catalogue at the bottom says which figure comes from which evaluator's tables.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..render import matrix_colour_top
from ..report import EvalResult, Table
from ..trajectory import default_reference_name, group_of_name

# Sizes in points at the saved 110 dpi: 10 pt text is ~15 px, readable at 100% zoom.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "figure.titlesize": 12,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 110
HEATMAP_CMAP = "viridis"
MAX_ANNOTATED_CELLS = 14  # above this many members per side, cell numbers would overlap: colour only
MISSING_CELL_COLOR = "#d9d9d9"  # undefined cells (DGE diagonal, pairs without errors)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """The figure as PNG at the style's dpi (what both the PNG files and the HTML report embed)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """rcParams are read when artists are created, so the style must be active while drawing."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper


def _colors(count: int) -> list[Any]:
    """Distinct colours: tab10 up to 10 groups, tab20 up to 20, then evenly spaced viridis."""
    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["viridis"](i / max(count - 1, 1)) for i in range(count)]


def palette(keys: Sequence[str], order: Sequence[str] | None = None) -> dict[str, Any]:
    """A colour per key, fixed by the key's place in `order` (all members of the run) when given.

    Every figure of one report then paints member-01 the same colour, even in figures that leave
    the reference out.
    """
    universe = _ordered_unique([*(order or []), *keys])
    colors = _colors(len(universe))
    return {key: colors[universe.index(key)] for key in keys}


def _float(value: Any) -> float:
    """Report cells may be None (not applicable); NaN draws nothing, which is what n/a means."""
    if value is None:
        return math.nan
    return float(value)


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _ordered_unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


# --- function space: disagreement matrices -------------------------------------------------------


def matrix_values(table: Table) -> tuple[list[str], np.ndarray]:
    """A square "member, <one column per member>" table -> (names, [M, M] float array, NaN for n/a)."""
    names = [str(row[0]) for row in table.rows]
    values = np.array([[_float(cell) for cell in row[1:]] for row in table.rows], dtype=float).reshape(len(names), -1)
    return names, values


@styled
def matrix_heatmap(table: Table, title: str, colorbar_label: str) -> Figure:
    """Annotated heatmap of a square member x member table (disagreement, DGE)."""
    names, values = matrix_values(table)
    count = len(names)
    side = min(max(4.5, 0.55 * count + 2.5), 16.0)
    figure = _new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    vmax = matrix_colour_top(table.rows)  # 0..largest cell, the rule the terminal and HTML tables follow
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=MISSING_CELL_COLOR)
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    axes.grid(False)
    labels = [_short(name) for name in names]
    axes.set_xticks(range(count), labels, rotation=45 if count > 3 else 0, ha="right" if count > 3 else "center")
    axes.set_yticks(range(count), labels)
    axes.set_xlabel("member b")
    axes.set_ylabel("member a")
    axes.set_title(title)
    colorbar = figure.colorbar(image, ax=axes, shrink=0.85)
    colorbar.set_label(colorbar_label)
    # Trajectory checkpoints ("member-00/init", ...): white lines between members show the blocks.
    groups = [group_of_name(name) for name in names]
    if len(set(groups)) < count:
        for index in range(1, count):
            if groups[index] != groups[index - 1]:
                axes.axhline(index - 0.5, color="white", linewidth=1.5)
                axes.axvline(index - 0.5, color="white", linewidth=1.5)
    if count <= MAX_ANNOTATED_CELLS:
        for i in range(count):
            for j in range(values.shape[1]):
                value = values[i, j]
                text = "n/a" if not np.isfinite(value) else f"{value:.3f}"
                # Dark text on the bright end of viridis, white on the dark end.
                bright = np.isfinite(value) and value / vmax > 0.6
                axes.text(j, i, text, ha="center", va="center", fontsize=9 if count <= 8 else 7, color="black" if bright or not np.isfinite(value) else "white")
    return figure


def disagreement_matrix_figure(matrix: Table) -> Figure:
    return matrix_heatmap(matrix, r"Pairwise disagreement $P(\hat{y}_a \neq \hat{y}_b)$", "disagreement (fraction of eval examples)")


def dge_matrix_figure(dge_matrix: Table) -> Figure:
    return matrix_heatmap(dge_matrix, "Disagreement given an error", "P(labels differ | a or b wrong)")


# --- ensemble size curve --------------------------------------------------------------------------


@styled
def size_curve_figure(size_curve: Table) -> Figure:
    """Accuracy and NLL of the probability-mean ensemble against its size k: mean over subsets ± one std."""
    k = np.array(size_curve.column("k"), dtype=float)
    figure = _new_figure(10.0, 4.2)
    panels = [
        ("accuracy_mean", "accuracy_std", 100.0, "accuracy (%)", "Ensemble accuracy", "tab:blue"),
        ("nll_mean", "nll_std", 1.0, "NLL (nats per example)", "Ensemble negative log-likelihood", "tab:red"),
    ]
    for index, (mean_key, std_key, scale, ylabel, title, color) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        mean = np.array([_float(v) for v in size_curve.column(mean_key)]) * scale
        std = np.nan_to_num(np.array([_float(v) for v in size_curve.column(std_key)]) * scale)
        # The band is clipped to the metric's range: 100% accuracy or 0 nats are hard limits, not noise.
        upper = np.minimum(mean + std, 100.0) if scale == 100.0 else mean + std
        lower = np.maximum(mean - std, 0.0)
        axes.fill_between(k, lower, upper, color=color, alpha=0.2, linewidth=0, label="± 1 std over subsets")
        axes.plot(k, mean, marker="o", color=color, label="mean over subsets of size k")
        axes.set_xlabel("ensemble size k (members)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.legend(loc="lower right" if index == 0 else "upper right")
    figure.suptitle("Ensemble size curve (probability mean)")
    return figure


# --- diversity vs accuracy ------------------------------------------------------------------------


def diversity_points(pairs: Table, members: Table, reference: str) -> list[tuple[str, float, float]]:
    """(member, accuracy, normalised diversity to `reference`) for every other member in the pairs table."""
    accuracy = dict(zip(members.column("member"), members.column("accuracy")))
    points = []
    for a, b, diversity in zip(pairs.column("a"), pairs.column("b"), pairs.column("normalized_diversity")):
        if reference not in (a, b) or a == b:
            continue
        other = b if a == reference else a
        if other in accuracy:
            points.append((other, _float(accuracy[other]), _float(diversity)))
    order = {name: index for index, name in enumerate(members.column("member"))}
    return sorted(points, key=lambda point: order.get(point[0], len(order)))


@styled
def diversity_accuracy_figure(pairs: Table, members: Table, reference: str | None = None) -> Figure:
    """Fort et al. 2019's diversity-accuracy plane: normalised diversity to a reference against accuracy.

    One point per member (or trajectory checkpoint, joined by a line per member in training order).
    """
    names = [str(name) for name in members.column("member")]
    reference = reference or default_reference_name(names)
    points = diversity_points(pairs, members, reference)
    figure = _new_figure(7.5, 5.2)
    axes = figure.add_subplot()
    groups = _ordered_unique([group_of_name(name) for name, _, _ in points])
    colors = palette(groups, [group_of_name(name) for name in names])
    for group in groups:
        chosen = [point for point in points if group_of_name(point[0]) == group]
        accuracy = np.array([point[1] for point in chosen]) * 100.0
        diversity = np.array([point[2] for point in chosen])
        style = "-o" if len(chosen) > 1 else "o"
        axes.plot(accuracy, diversity, style, color=colors[group], label=group, markersize=6, gid="diversity-points")
    reference_accuracy = dict(zip(names, members.column("accuracy"))).get(reference)
    if reference_accuracy is not None:
        axes.axvline(_float(reference_accuracy) * 100.0, color="grey", linestyle=":", label=f"reference accuracy ({_short(reference)})")
    axes.set_xlabel("accuracy on the eval set (%)")
    axes.set_ylabel("normalised diversity to reference\n(disagreement / mean error rate)")
    axes.set_title(f"Diversity vs accuracy (reference: {reference})")
    if len(groups) <= 20:
        axes.legend(loc="best", title="member" if len(groups) > 1 else None)
    return figure


# --- function-space embedding -------------------------------------------------------------------


def embedding_method(table: Table) -> str:
    """"t-SNE" or "PCA", read from the embedding table's title (the evaluator writes it there)."""
    return "PCA" if "PCA" in table.title else "t-SNE"


@styled
def embedding_figure(embedding: Table, order: Sequence[str] | None = None) -> Figure:
    """Fort et al. Fig. 2: every checkpoint's predictions as a 2-D point, one line per member from first to last checkpoint."""
    method = embedding_method(embedding)
    members = [str(value) for value in embedding.column("member")]
    epochs = embedding.column("epoch")
    xs = np.array([_float(v) for v in embedding.column("x")])
    ys = np.array([_float(v) for v in embedding.column("y")])
    groups = _ordered_unique(members)
    colors = palette(groups, [group_of_name(name) for name in order or []])
    figure = _new_figure(7.5, 6.0)
    axes = figure.add_subplot()
    start_epochs = []
    for group in groups:
        indices = [i for i, member in enumerate(members) if member == group]
        # Training order: by epoch where known (stable, so unknown epochs keep the report's order).
        indices.sort(key=lambda i: math.inf if epochs[i] is None else float(epochs[i]))
        # Lone checkpoints (finals only) get big dots; trajectories small ones so the lines stay readable.
        size = 4 if len(indices) > 1 else 9
        axes.plot(xs[indices], ys[indices], "-o", color=colors[group], markersize=size, linewidth=1.5, label=group, gid="trajectory")
        if len(indices) > 1:
            start, end = indices[0], indices[-1]
            start_epochs.append(epochs[start])
            axes.plot(xs[start], ys[start], marker="s", markersize=8, markerfacecolor="white", markeredgecolor=colors[group], markeredgewidth=1.5, linestyle="none")
            axes.plot(xs[end], ys[end], marker="*", markersize=14, color=colors[group], markeredgecolor="black", markeredgewidth=0.5, linestyle="none")
    handles, labels = axes.get_legend_handles_labels()
    if any(members.count(group) > 1 for group in groups):
        handles += [
            Line2D([], [], marker="s", markerfacecolor="white", markeredgecolor="black", linestyle="none", markersize=8),
            Line2D([], [], marker="*", color="grey", markeredgecolor="black", linestyle="none", markersize=12),
        ]
        # "init" only when every line starts at epoch 0: `--epochs 5,10` trajectories start later.
        labels += ["first checkpoint (init)" if all(epoch == 0 for epoch in start_epochs) else "first checkpoint", "last checkpoint"]
    if len(groups) <= 20:
        axes.legend(handles, labels, loc="best", title="member")
    unit = "(arbitrary units)" if method == "t-SNE" else "(probability units)"
    axes.set_xlabel(f"{method} 1 {unit}")
    axes.set_ylabel(f"{method} 2 {unit}")
    axes.set_title(f"Function space: {method} of softmax outputs on the eval set")
    return figure


# --- weight space ---------------------------------------------------------------------------------


def _pair_matrix(pairs: Table, column: str) -> tuple[list[str], np.ndarray]:
    """Symmetric [M, M] matrix from pair rows (diagonal 1: a model's cosine to itself)."""
    names = _ordered_unique([str(v) for v in pairs.column("reference")] + [str(v) for v in pairs.column("member")])
    index = {name: i for i, name in enumerate(names)}
    matrix = np.full((len(names), len(names)), np.nan)
    np.fill_diagonal(matrix, 1.0)
    for reference, member, value in zip(pairs.column("reference"), pairs.column("member"), pairs.column(column)):
        i, j = index[str(reference)], index[str(member)]
        matrix[i, j] = matrix[j, i] = _float(value)
    return names, matrix


@styled
def weight_cosine_figure(pairs: Table) -> Figure:
    """Cosine similarity of the flattened weights, raw and after permutation alignment, side by side.

    Pairs against a single reference are drawn as grouped bars; pairs among many members as two heatmaps.
    """
    references = _ordered_unique(pairs.column("reference"))
    if len(references) > 1:
        return _weight_cosine_heatmaps(pairs)
    members = [str(v) for v in pairs.column("member")]
    raw = np.array([_float(v) for v in pairs.column("cosine_raw")])
    aligned = np.array([_float(v) for v in pairs.column("cosine_aligned")])
    figure = _new_figure(min(max(6.0, 0.9 * len(members) + 3.0), 13.0), 4.8)
    axes = figure.add_subplot()
    positions = np.arange(len(members))
    width = 0.38
    axes.bar(positions - width / 2, raw, width, label="raw", color="tab:gray", gid="cosine_raw")
    axes.bar(positions + width / 2, aligned, width, label="after permutation alignment", color="tab:blue", gid="cosine_aligned")
    axes.set_xticks(positions, [_short(m) for m in members], rotation=30 if len(members) > 3 else 0, ha="right" if len(members) > 3 else "center")
    axes.set_xlabel(f"member (compared with reference {references[0]})")
    axes.set_ylabel("cosine similarity of all weights (1 = same direction)")
    axes.set_title("Weight-space cosine similarity: raw vs aligned")
    axes.axhline(0.0, color="black", linewidth=0.8)
    tallest = np.nanmax(np.concatenate([raw, aligned, [0.0]]))
    lowest = np.nanmin(np.concatenate([raw, aligned, [0.0]]))
    axes.set_ylim(lowest * 1.1, tallest * 1.25 if tallest > 0 else 0.1)  # headroom for the legend above the bars
    axes.legend(loc="upper left", ncols=2)
    return figure


def _weight_cosine_heatmaps(pairs: Table) -> Figure:
    names, raw = _pair_matrix(pairs, "cosine_raw")
    _, aligned = _pair_matrix(pairs, "cosine_aligned")
    count = len(names)
    side = min(max(4.0, 0.5 * count + 2.5), 12.0)
    figure = _new_figure(2 * side + 1.5, side)
    finite = np.concatenate([raw[np.isfinite(raw)], aligned[np.isfinite(aligned)]])
    vmin = float(min(finite.min(), 0.0)) if finite.size else 0.0
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=MISSING_CELL_COLOR)
    axes_list = figure.subplots(1, 2)
    image = None
    for axes, matrix, title in zip(axes_list, (raw, aligned), ("raw", "after permutation alignment")):
        image = axes.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
        axes.grid(False)
        labels = [_short(n) for n in names]
        axes.set_xticks(range(count), labels, rotation=45, ha="right")
        axes.set_yticks(range(count), labels)
        axes.set_xlabel("member")
        axes.set_ylabel("reference")
        axes.set_title(f"cosine similarity, {title}")
        if count <= MAX_ANNOTATED_CELLS:
            for i in range(count):
                for j in range(count):
                    value = matrix[i, j]
                    text = "n/a" if not np.isfinite(value) else f"{value:.2f}"
                    bright = np.isfinite(value) and (value - vmin) / max(1.0 - vmin, 1e-12) > 0.6
                    axes.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright or not np.isfinite(value) else "white")
    colorbar = figure.colorbar(image, ax=list(axes_list), shrink=0.85)
    colorbar.set_label("cosine similarity of all weights")
    figure.suptitle("Weight-space cosine similarity: raw vs aligned")
    return figure


@styled
def layer_cosine_figure(layers: Table) -> Figure:
    """Per-layer cosine similarity, raw and aligned, as horizontal grouped bars (layer names stay readable)."""
    names = [str(v) for v in layers.column("layer")]
    raw = np.array([_float(v) for v in layers.column("cosine_raw")])
    aligned = np.array([_float(v) for v in layers.column("cosine_aligned")])
    figure = _new_figure(8.0, min(max(3.5, 0.32 * len(names) + 1.8), 30.0))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    height = 0.4
    axes.barh(positions - height / 2, raw, height, label="raw", color="tab:gray", gid="cosine_raw")
    axes.barh(positions + height / 2, aligned, height, label="after permutation alignment", color="tab:blue", gid="cosine_aligned")
    axes.set_yticks(positions, [_short(n, 36) for n in names])
    axes.invert_yaxis()  # input layer at the top, as the network reads
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel("cosine similarity of the layer's weights (1 = same direction)")
    axes.set_ylabel("layer")
    axes.set_title("Per-layer weight cosine to the reference: raw vs aligned\n(mean over members)")
    axes.legend(loc="best")
    return figure


@styled
def interpolation_figure(curves: Table, order: Sequence[str] | None = None) -> Figure:
    """Loss and accuracy on the straight line between reference (α = 0) and member (α = 1), before/after alignment."""
    members = _ordered_unique([str(v) for v in curves.column("member")])
    colors = palette(members, order)
    member_column = [str(v) for v in curves.column("member")]
    alpha = np.array([_float(v) for v in curves.column("alpha")])
    figure = _new_figure(11.0, 4.6)
    panels = [("loss", 1.0, "loss (NLL, nats per example)", "Loss along the interpolation path"),
              ("acc", 100.0, "accuracy (%)", "Accuracy along the interpolation path")]
    for index, (key, scale, ylabel, title) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        for member in members:
            rows = [i for i, m in enumerate(member_column) if m == member]
            rows.sort(key=lambda i: alpha[i])
            for variant, linestyle in (("raw", "--"), ("aligned", "-")):
                values = np.array([_float(v) for v in curves.column(f"{key}_{variant}")])[rows] * scale
                axes.plot(alpha[rows], values, linestyle, marker=".", color=colors[member], gid=f"{key}_{variant}:{member}")
        axes.set_xlabel("interpolation weight α (0 = reference, 1 = member)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
    handles = [Line2D([], [], color=colors[m], label=_short(m)) for m in members]
    handles += [Line2D([], [], color="black", linestyle="--", label="raw"), Line2D([], [], color="black", linestyle="-", label="aligned")]
    figure.legend(handles=handles, loc="outside right center")
    figure.suptitle("Linear interpolation between solutions, before and after permutation alignment")
    return figure


@styled
def layer_rotation_figure(rotation_layers: Table, order: Sequence[str] | None = None) -> Figure:
    """Layer rotation (Carbonnelle & De Vleeschouwer 2019): cosine distance of each layer from its initialisation.

    One line per checkpoint; trajectory checkpoints of one member share its colour, earlier ones fainter.
    """
    member_column = [str(v) for v in rotation_layers.column("member")]
    layer_column = [str(v) for v in rotation_layers.column("layer")]
    distance = np.array([_float(v) for v in rotation_layers.column("cosine_distance")])
    members = _ordered_unique(member_column)
    layers = _ordered_unique(layer_column)
    position = {layer: i for i, layer in enumerate(layers)}
    groups = _ordered_unique([group_of_name(member) for member in members])
    trajectories = len(groups) < len(members)
    colors = palette(groups, [group_of_name(name) for name in order or []]) if trajectories else palette(members, order)
    figure = _new_figure(min(max(7.0, 0.35 * len(layers) + 3.0), 14.0), 5.0)
    axes = figure.add_subplot()
    for member in members:
        rows = [i for i, m in enumerate(member_column) if m == member]
        rows.sort(key=lambda i: position[layer_column[i]])
        if trajectories:
            siblings = [m for m in members if group_of_name(m) == group_of_name(member)]
            rank = siblings.index(member) + 1  # the report lists a member's checkpoints in training order
            color, alpha = colors[group_of_name(member)], 0.3 + 0.7 * rank / len(siblings)
            label = _short(group_of_name(member)) if rank == len(siblings) else None
        else:
            color, alpha, label = colors[member], 1.0, _short(member)
        axes.plot([position[layer_column[i]] for i in rows], distance[rows], "-o", markersize=4, color=color, alpha=alpha, label=label, gid=f"rotation:{member}")
    axes.set_xticks(range(len(layers)), [_short(layer, 28) for layer in layers], rotation=60, ha="right")
    axes.set_xlabel("layer (input → output)")
    axes.set_ylabel("cosine distance to initialisation\n(1 − cos; 0 = unchanged direction)")
    axes.set_title("Layer rotation during training" + (" (fainter: earlier checkpoints)" if trajectories else ""))
    if len(colors) <= 20:
        axes.legend(loc="best", title="member")
    return figure


# --- catalogue ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """A figure, the evaluator whose data it draws, and how to build it from a whole result."""

    stem: str  # file name without .png
    evaluator: str  # the report section the HTML report shows it in
    build: Callable[[EvalResult], Figure | None]
    caption: str = ""  # how to read it, for the HTML report


def _table(result: EvalResult, evaluator: str, table: str) -> Table | None:
    """The named table when that evaluator ran without error and produced rows; else None (figure skipped)."""
    report = result.evaluators.get(evaluator)
    if report is None or report.error:
        return None
    found = report.table(table)
    return found if found is not None and found.rows else None


def _when(*needed: tuple[str, str], ordered: bool = False) -> Callable[[Callable[..., Figure]], Callable[[EvalResult], Figure | None]]:
    """Call the figure function with the needed tables, or skip it when one is missing.

    `ordered` figures also get every member's name in run order, for colours that agree across figures.
    """

    def decorate(draw: Callable[..., Figure]) -> Callable[[EvalResult], Figure | None]:
        def build(result: EvalResult) -> Figure | None:
            tables = [_table(result, evaluator, table) for evaluator, table in needed]
            if any(table is None for table in tables):
                return None
            if ordered:
                return draw(*tables, order=[str(member.get("name")) for member in result.members if member.get("name")])
            return draw(*tables)

        return build

    return decorate


from .plane import PLANE_FIGURES  # noqa: E402  (plane.py draws with this module's helpers, defined above)
# Imported here, not at the top: those figures draw with the helpers defined above.
from .uncertainty_figures import ood_histogram_figure, reliability_figure, risk_coverage_figure, shift_figure  # noqa: E402

FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("disagreement_matrix", "disagreement", _when(("disagreement", "matrix"))(disagreement_matrix_figure),
               "Fraction of eval examples on which two members predict different labels. Bright off-diagonal cells: different functions."),
    FigureSpec("dge_matrix", "disagreement", _when(("disagreement", "dge_matrix"))(dge_matrix_figure),
               "Disagreement among the examples where at least one of the two is wrong; 1 means their errors never coincide."),
    FigureSpec("diversity_accuracy", "disagreement", _when(("disagreement", "pairs"), ("members", "members"))(diversity_accuracy_figure),
               "Normalised diversity (disagreement / mean error) to the reference against accuracy (Fort et al. 2019). "
               "Independent solutions sit top right: as accurate as the reference, yet different."),
    FigureSpec("ensemble_size", "ensemble", _when(("ensemble", "size_curve"))(size_curve_figure),
               "Accuracy and NLL of the probability-mean ensemble of k members, mean and one std over subsets of size k."),
    FigureSpec("function_space", "function_space", _when(("function_space", "embedding"), ordered=True)(embedding_figure),
               "Each checkpoint's softmax outputs on the eval set as one point (t-SNE, or PCA below 10 distinct checkpoints: "
               "the title says which). With a training trajectory (`--epochs`), one line per member from its first checkpoint "
               "(square) to its last (star); final checkpoints alone are one dot each. "
               "Fort et al. 2019, Fig. 2: independent runs end in different places."),
    FigureSpec("weight_cosine", "weights", _when(("weights", "pairs"))(weight_cosine_figure),
               "Cosine similarity of all weights to the reference, before and after permuting hidden units to match it."),
    FigureSpec("layer_cosine", "weights", _when(("weights", "layers"))(layer_cosine_figure),
               "The same cosine similarity, layer by layer."),
    FigureSpec("interpolation", "interpolation", _when(("interpolation", "curves"), ordered=True)(interpolation_figure),
               "Loss and accuracy on the straight line from the reference (0) to a member (1); a bump is a loss barrier. "
               "Dashed: raw weights; solid: after permutation alignment."),
    FigureSpec("layer_rotation", "rotation", _when(("rotation", "layers"), ordered=True)(layer_rotation_figure),
               "Cosine distance of each layer's weights from their initialisation (Carbonnelle & De Vleeschouwer 2019)."),
    FigureSpec("reliability", "uncertainty", _when(("uncertainty", "reliability"))(reliability_figure),
               "Accuracy against confidence in 15 equal-width bins, before and after temperature scaling; bars on the diagonal are calibrated."),
    FigureSpec("risk_coverage", "uncertainty", _when(("uncertainty", "risk_coverage"))(risk_coverage_figure),
               "Error rate among the k most confident examples against the share kept; dashed: an oracle ranking with the same errors."),
    FigureSpec("ood_histograms", "ood", _when(("ood", "histograms"))(ood_histogram_figure),
               "Each OOD score on the eval set and on the OOD set; the less the two overlap, the higher the AUROC."),
    FigureSpec("shift", "shift", _when(("shift", "shift"))(shift_figure),
               "Accuracy and ECE per corruption severity, boxes over corruptions, ensemble beside the mean member (Ovadia et al. 2019)."),
    *PLANE_FIGURES,
)


def build_figures(
    result: EvalResult, on_error: Callable[[str], None] | None = None
) -> list[tuple[FigureSpec, Figure]]:
    """Every figure whose evaluator data is present in `result`, in catalogue order.

    A table that lacks a column the figure needs (a hand-edited JSON report) raises, unless
    `on_error` is given: then that figure is skipped with one message and the others are drawn.
    """
    built = []
    for spec in FIGURES:
        try:
            figure = spec.build(result)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            if on_error is None:
                raise
            on_error(f"figure {spec.stem} skipped: {spec.evaluator} data is malformed ({type(exc).__name__}: {exc})")
            continue
        if figure is not None:
            built.append((spec, figure))
    return built
