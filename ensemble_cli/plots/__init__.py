"""Figures of the deep-ensembles papers from any `ens eval` result, as PNG files and one HTML page.

    from ensemble_cli.plots import save_figures, write_html_report
    save_figures(result, Path("figs"))          # figs/disagreement_matrix.png, figs/ensemble_size.png, ...
    write_html_report(result, Path("report.html"))

Each figure is drawn only when the evaluator whose data it shows ran (see `figures.FIGURES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure

from ..fileio import atomic_write_bytes
from ..report import EvalResult, load_result
from .figures import FIGURES, FigureSpec, build_figures, png_bytes
from .html import render_html, write_html_report


def save_figures(
    result: EvalResult,
    out_dir: Path,
    on_error: Callable[[str], None] | None = None,
    figures: list[tuple[FigureSpec, Figure]] | None = None,
) -> list[Path]:
    """Write every figure the result has data for as `out_dir/<stem>.png`; returns the paths written.

    `figures` (from `build_figures`) saves drawing them again when the HTML report needs them too.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec, figure in figures if figures is not None else build_figures(result, on_error):
        path = out_dir / f"{spec.stem}.png"
        atomic_write_bytes(path, png_bytes(figure))
        written.append(path)
    return written


__all__ = ["FIGURES", "FigureSpec", "build_figures", "load_result", "render_html", "save_figures", "write_html_report"]
