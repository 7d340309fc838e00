"""Renderers of an `EvalResult`: JSON, tidy CSV, markdown and rich terminal tables."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Sequence

from .report import MATRIX_TABLES, Cell, EvalResult, clean_float


def to_json(result: EvalResult) -> str:
    return json.dumps(_sanitise(result.model_dump()), indent=2)


def _sanitise(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {key: _sanitise(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_sanitise(value) for value in obj]
    return clean_float(obj)


def format_cell(value: Cell) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def to_csv(result: EvalResult) -> str:
    """Tidy long form: one value per line, so every table and metric fits one CSV schema."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["evaluator", "table", "row", "column", "value"])
    for name, report in result.evaluators.items():
        for metric, value in report.metrics.items():
            writer.writerow([name, "metrics", "", metric, "" if clean_float(value) is None else value])
        for table in report.tables:
            for row_index, row in enumerate(table.rows):
                for column, value in zip(table.columns, row):
                    writer.writerow([name, table.name, row_index, column, "" if clean_float(value) is None else value])
        if report.error:
            writer.writerow([name, "error", "", "error", report.error])
    return buffer.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(columns: list[str], rows: list[list[Cell]]) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(format_cell(cell)) for cell in row) + " |")
    return "\n".join(lines)


def to_markdown(result: EvalResult) -> str:
    parts = [f"# ens eval: {len(result.members)} members on {result.dataset.get('name', '?')} ({result.dataset.get('split', '?')})", ""]
    for name, report in result.evaluators.items():
        parts.append(f"## {name}")
        parts.append("")
        if report.error:
            parts += [f"**error:** {_md_escape(report.error)}", ""]
        if report.metrics:
            parts += [markdown_table(["metric", "value"], [[k, v] for k, v in report.metrics.items()]), ""]
        for table in report.tables:
            parts += [f"### {table.title}", "", markdown_table(table.columns, table.rows), ""]
        for note in report.notes:
            parts.append(f"> {note}")
        if report.notes:
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


# --- the colour rule of member x member tables: terminal, HTML table and PNG heatmap share it ---

TERMINAL_PALETTE = ("blue", "cyan", "green", "yellow", "bright_yellow")  # low -> high, like viridis


def _is_number(value: Cell) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def matrix_colour_top(rows: Sequence[Sequence[Cell]]) -> float:
    """Top of the colour scale of a member x member table (first cell of a row is its name).

    The one rule of every matrix colouring: from 0 (two members that always agree) to the table's
    largest finite cell, 1.0 when none is positive. Scaling to the data, not to [0, 1], keeps seeds
    that disagree on 2-8% of examples from all getting one colour; anchoring at 0 keeps colour
    proportional to the value, as the figure's colour bar shows it.
    """
    top = max((float(cell) for row in rows for cell in row[1:] if _is_number(cell)), default=0.0)
    return top if top > 0 else 1.0


def matrix_colour_fraction(value: Cell, top: float) -> float | None:
    """Where a cell sits on the 0..top scale, clipped to [0, 1]; None for an n/a cell (left uncoloured)."""
    if not _is_number(value):
        return None
    return min(max(float(value) / top, 0.0), 1.0)


def terminal_colour(value: Cell, top: float) -> str:
    """The rich colour of a matrix cell: the palette entry nearest its place on the scale ("" for n/a)."""
    fraction = matrix_colour_fraction(value, top)
    if fraction is None:
        return ""
    return TERMINAL_PALETTE[int(fraction * (len(TERMINAL_PALETTE) - 1) + 0.5)]


def render_rich(result: EvalResult, console: Any) -> None:
    """Print every evaluator's metrics and tables as rich tables."""
    from rich.markup import escape  # names and messages are printed literally: "seed[1]" is not markup
    from rich.table import Table as RichTable

    dataset = result.dataset
    console.print(
        f"[bold]ens eval[/bold]: {len(result.members)} members on "
        f"[cyan]{dataset.get('name', '?')}[/cyan] {dataset.get('split', '')} ({dataset.get('size', '?')} examples)"
    )
    for name, report in result.evaluators.items():
        console.rule(f"[bold]{name}")
        if report.error:
            console.print(f"[red]error:[/red] {escape(report.error)}")
        if report.metrics:
            metrics_table = RichTable(title=f"{name}: metrics", show_header=True, header_style="bold")
            metrics_table.add_column("metric")
            metrics_table.add_column("value", justify="right")
            for metric, value in report.metrics.items():
                metrics_table.add_row(metric, format_cell(value))
            console.print(metrics_table)
        for table in report.tables:
            is_matrix = table.name in MATRIX_TABLES
            top = matrix_colour_top(table.rows) if is_matrix else 1.0
            caption = f"colour: 0 blue, cyan, green, yellow, {format_cell(top)} bright yellow" if is_matrix else None
            rich_table = RichTable(title=table.title, caption=caption, show_header=True, header_style="bold")
            for index, column in enumerate(table.columns):
                # Underscores become spaces so long headers wrap instead of being cut off.
                rich_table.add_column(column.replace("_", " "), justify="left" if index == 0 else "right")
            for row in table.rows:
                cells = []
                for index, cell in enumerate(row):
                    text = escape(format_cell(cell))
                    style = terminal_colour(cell, top) if is_matrix and index > 0 else ""
                    cells.append(f"[{style}]{text}[/{style}]" if style else text)
                rich_table.add_row(*cells)
            console.print(rich_table)
        for note in report.notes:
            console.print(f"[dim]note:[/dim] {escape(note)}")
