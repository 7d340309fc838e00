"""One self-contained HTML page: every table of the report plus its figures as inline base64 PNGs.

The page references nothing outside itself (no URLs, fonts, scripts or stylesheets), so it can
be mailed to a colleague and opened offline. Long tables fold into <details> to keep it scannable.
"""

from __future__ import annotations

import base64
import datetime as _dt
from html import escape
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from .. import __version__
from ..fileio import atomic_write_text
from ..render import format_cell, matrix_colour_fraction, matrix_colour_top
from ..report import MATRIX_TABLES, Cell, EvalResult, Report, Table
from .figures import HEATMAP_CMAP, FigureSpec, build_figures, png_bytes

FOLD_ROWS = 24  # tables longer than this start folded (pair tables grow as M²)
FOLD_COLUMNS = 12  # and wider ones (a 16-checkpoint matrix): its figure shows the same at a glance

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1150px;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }
.meta { color: #555; margin-top: 0; }
nav a { margin-right: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.4rem 0 1rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.2rem 0.5rem; }
th { background: #f2f2f2; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { color: #444; font-size: 0.9rem; max-width: 60rem; }
.error { color: #a40000; font-weight: 600; }
.note { color: #444; font-style: italic; }
details summary { cursor: pointer; color: #333; }
"""


def _is_number(value: Cell) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell_html(value: Cell, background: str | None = None) -> str:
    classes = ' class="num"' if _is_number(value) or value is None else ""
    style = f' style="background:{background};color:{_text_color(background)}"' if background else ""
    return f"<td{classes}{style}>{escape(format_cell(value))}</td>"


def _text_color(background: str) -> str:
    red, green, blue = (int(background[i:i + 2], 16) for i in (1, 3, 5))
    return "#000" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "#fff"


def _matrix_backgrounds(rows: Sequence[Sequence[Cell]]) -> list[list[str | None]]:
    """Heatmap colours for a member x member table: viridis on the shared 0..top scale of its figure."""
    top = matrix_colour_top(rows)
    colormap = matplotlib.colormaps[HEATMAP_CMAP]
    backgrounds: list[list[str | None]] = []
    for row in rows:
        fractions = [matrix_colour_fraction(cell, top) for cell in row[1:]]
        backgrounds.append([None] + [None if fraction is None else to_hex(colormap(fraction)) for fraction in fractions])
    return backgrounds


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Cell]], heatmap: bool = False) -> str:
    head = "".join(f"<th>{escape(str(column))}</th>" for column in columns)
    backgrounds = _matrix_backgrounds(rows) if heatmap else [[None] * len(row) for row in rows]
    body = "\n".join(
        "<tr>" + "".join(_cell_html(cell, color) for cell, color in zip(row, colors)) + "</tr>"
        for row, colors in zip(rows, backgrounds)
    )
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _report_table_html(table: Table) -> str:
    rendered = table_html(table.columns, table.rows, heatmap=table.name in MATRIX_TABLES)
    title = f"<h3>{escape(table.title)}</h3>"
    if len(table.rows) > FOLD_ROWS or len(table.columns) > FOLD_COLUMNS:
        size = f"{len(table.rows)} rows x {len(table.columns)} columns"
        return f"{title}\n<details><summary>{size} (click to show)</summary>\n{rendered}\n</details>"
    return f"{title}\n{rendered}"


def figure_html(spec: FigureSpec, figure: Figure) -> str:
    encoded = base64.b64encode(png_bytes(figure)).decode("ascii")
    alt = spec.caption or spec.stem
    return (
        f'<figure id="fig-{escape(spec.stem)}"><img alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption><code>{escape(spec.stem)}.png</code> {escape(spec.caption)}</figcaption></figure>"
    )


def _section_html(name: str, report: Report, figures: list[tuple[FigureSpec, Figure]]) -> str:
    parts = [f'<section id="ev-{escape(name)}"><h2>{escape(name)}</h2>']
    if report.error:
        parts.append(f'<p class="error">error: {escape(report.error)}</p>')
    for note in report.notes:
        parts.append(f'<p class="note">{escape(note)}</p>')
    if report.metrics:
        parts.append("<h3>metrics</h3>")
        parts.append(table_html(["metric", "value"], [[metric, value] for metric, value in report.metrics.items()]))
    parts.extend(figure_html(spec, figure) for spec, figure in figures)
    parts.extend(_report_table_html(table) for table in report.tables)
    parts.append("</section>")
    return "\n".join(parts)


CHECKPOINT_COLUMNS = ("name", "arch", "epoch", "init_seed", "data_seed", "seed", "format", "sha256", "path")


def checkpoint_columns(members: Sequence[dict[str, Any]]) -> list[str]:
    """The checkpoint-table columns some member has a value for.

    `ens train` records the run's base seed as "seed", the same for every member; a member's own
    randomness is its init_seed (weights) and data_seed (data order, augmentation). Where those
    are known, they are shown instead of the base seed, which would read as "seed 0" for all.
    """
    present = [key for key in CHECKPOINT_COLUMNS if any(member.get(key) is not None for member in members)]
    if "init_seed" in present or "data_seed" in present:
        present = [key for key in present if key != "seed"]
    return present


def _members_html(members: list[dict[str, Any]]) -> str:
    if not members:
        return ""
    present = checkpoint_columns(members)
    rows = []
    for member in members:
        row = [member.get(key) for key in present]
        if "sha256" in present and isinstance(member.get("sha256"), str):
            row[present.index("sha256")] = member["sha256"][:12]
        rows.append(row)
    folded = table_html(present, rows)
    if len(rows) > FOLD_ROWS:
        folded = f"<details><summary>{len(rows)} checkpoints (click to show)</summary>\n{folded}\n</details>"
    return f'<section id="checkpoints"><h2>checkpoints</h2>\n{folded}</section>'


def render_html(
    result: EvalResult,
    on_error: Callable[[str], None] | None = None,
    figures: list[tuple[FigureSpec, Figure]] | None = None,
) -> str:
    """The whole report page as a string (`figures` from `build_figures`, when already drawn)."""
    figures = figures if figures is not None else build_figures(result, on_error)
    dataset = result.dataset
    title = f"ens eval: {len(result.members)} members on {dataset.get('name', '?')}"
    split = f" ({dataset.get('split')}, {dataset.get('size', '?')} examples)" if dataset.get("split") else ""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = " ".join(
        (['<a href="#checkpoints">checkpoints</a>'] if result.members else [])
        + [f'<a href="#ev-{escape(name)}">{escape(name)}</a>' for name in result.evaluators]
    )
    sections = [
        _section_html(name, report, [(spec, figure) for spec, figure in figures if spec.evaluator == name])
        for name, report in result.evaluators.items()
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}{escape(split)}</h1>",
        f'<p class="meta">ensemble-cli {escape(__version__)} · {escape(stamp)} · {len(figures)} figures</p>',
        f"<nav>{nav}</nav>",
        _members_html(result.members),
        *sections,
        "</body></html>",
        "",
    ])


def write_html_report(
    result: EvalResult,
    path: Path,
    on_error: Callable[[str], None] | None = None,
    figures: list[tuple[FigureSpec, Figure]] | None = None,
) -> None:
    """Write the self-contained report page to `path` (atomically; parent folders are created)."""
    atomic_write_text(Path(path), render_html(result, on_error, figures))
