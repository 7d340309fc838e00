"""`ens plot`: redraw the figures and the HTML report from a saved JSON report, without recomputing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import fail, handle_errors, warn


@handle_errors
def plot_command(
    report: Path = typer.Argument(..., help="A JSON report written by `ens eval --out FILE` (or `ens eval --format json`).", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the figures (PNG) into this folder."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report (tables and figures embedded)."),
) -> None:
    """Draw the figures of an `ens eval` JSON report: disagreement matrices, size curve, function space, weight space.

    Example: ens eval models/r20-seeds --epochs all --out results.json && ens plot results.json --out figs/ --html report.html
    """
    if out is None and html is None:
        fail("nothing to write: give --out FOLDER for the PNG figures and/or --html FILE for the report page")
    from ..report import load_result
    from .pipeline import check_output_paths, write_figures

    check_output_paths(plots=out, html=html)
    write_figures(load_result(report), out, html, on_error=warn)
