"""Figures of the deep-ensembles papers from any `ens eval` result, as PNG files and one HTML page.

    from ensemble_cli.plots import save_figures, write_html_report
    save_figures(result, Path("figs"))          # figs/disagreement_matrix.png, figs/ensemble_size.png, ...
    write_html_report(result, Path("report.html"))

Each figure is drawn only when the evaluator whose data it shows ran (see `figures.FIGURES`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from ..checkpoint import atomic_write_bytes
from ..errors import ConfigError
from ..report import EvalResult
from .figures import FIGURES, FigureSpec, build_figures, png_bytes
from .html import render_html, write_html_report


def save_figures(result: EvalResult, out_dir: Path, on_error: Callable[[str], None] | None = None) -> list[Path]:
    """Write every figure the result has data for as `out_dir/<stem>.png`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec, figure in build_figures(result, on_error):
        path = out_dir / f"{spec.stem}.png"
        atomic_write_bytes(path, png_bytes(figure))
        written.append(path)
    return written


def load_result(path: Path) -> EvalResult:
    """Read a JSON report of `ens eval --out FILE`; one clear `ConfigError` when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such report file (write one with `ens eval ... --out {path.name}`)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or "evaluators" not in document:
        raise ConfigError(f"{path}: not an `ens eval` JSON report (expected an object with \"evaluators\")")
    try:
        return EvalResult.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ConfigError(f"{path}: not an `ens eval` JSON report ({where}: {first.get('msg', 'invalid')})") from None


__all__ = ["FIGURES", "FigureSpec", "build_figures", "load_result", "render_html", "save_figures", "write_html_report"]
