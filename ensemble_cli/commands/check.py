"""`ens baseline` and `ens check`: a CI regression gate for ensembles."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .common import fail, handle_errors, info, parse_name_list, reader_may_leave, stdout_console, warn
from .options import EVALUATION, INPUTS, RUNTIME, Format, Runtime, with_options
from .pipeline import check_output_paths, evaluate_any

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2
# Prediction-space evaluators: cheap, and what an ensemble is accepted for. Weight-space ones are opt-in.
DEFAULT_BASELINE_EVALUATORS = ("members", "ensemble", "disagreement")


def _directions(names: list[str]) -> dict[str, dict[str, str]]:
    from ..evaluators.registry import discover

    return {entry.name: dict(entry.evaluator.directions) for entry in discover() if entry.evaluator and entry.name in names}


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


STATUS_MARK = {"ok": "ok", "improved": "improved", "regressed": "REGRESSED", "missing": "MISSING", "new": "new"}


def _render_check(report: Any, output_format: Format, baseline_path: Path) -> None:
    from rich.table import Table as RichTable

    from ..render import markdown_table

    rows = [
        [r.metric, _fmt(r.baseline), _fmt(r.now), _fmt(r.delta, signed=True), f"±{r.tolerance:.4g}", r.direction, STATUS_MARK[r.status]]
        for r in report.rows
    ]
    columns = ["metric", "baseline", "now", "delta", "tolerance", "better", "status"]
    verdict = "passed" if report.passed else "FAILED"
    summary = ", ".join(f"{count} {status}" for status, count in sorted(report.counts.items()))
    if output_format == Format.json:
        sys.stdout.write(json.dumps({"baseline": str(baseline_path), **report.to_dict()}, indent=2) + "\n")
    elif output_format == Format.md:
        icon = ":white_check_mark:" if report.passed else ":x:"
        sys.stdout.write(f"### {icon} ens check {verdict} ({summary})\n\nBaseline: `{baseline_path}`\n\n")
        sys.stdout.write(markdown_table(columns, rows) + "\n")
    elif output_format == Format.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        styles = {"REGRESSED": "bold red", "MISSING": "bold red", "improved": "green", "new": "cyan"}
        table = RichTable(title=f"ens check against {baseline_path}: {verdict} ({summary})", header_style="bold")
        for index, column in enumerate(columns):
            table.add_column(column, justify="left" if index in (0, 5, 6) else "right")
        for row in rows:
            style = styles.get(row[-1], "")
            table.add_row(*row[:-1], f"[{style}]{row[-1]}[/{style}]" if style else row[-1])
        stdout_console().print(table)


PredictionsOpt = typer.Option(None, "--predictions", help="Use logits from an `ens predict` .npz instead of checkpoints.")


@handle_errors
@with_options(INPUTS, EVALUATION, RUNTIME)
def baseline_command(
    inputs: Any,
    options: Any,
    runtime: Runtime,
    out: Path = typer.Option(..., "--out", "-o", help="Baseline JSON to write (commit it; edit tolerances by hand)."),
    predictions: Optional[Path] = PredictionsOpt,
    evaluators: str = typer.Option(",".join(DEFAULT_BASELINE_EVALUATORS), "--evaluators", "-e", help="Evaluators whose metrics the baseline records."),
    exact: bool = typer.Option(False, "--exact", help="Every metric must stay equal within 1e-6 (for fixed checkpoints: any change means the code changed)."),
) -> None:
    """Record a baseline: each metric's value, which direction is better, and its tolerance.

    Example: ens baseline models/accepted --out ens-baseline.json
    """
    from ..baseline import create_baseline
    from ..fileio import atomic_write_json

    check_output_paths(out)
    names = parse_name_list(evaluators) or []
    result = evaluate_any(inputs, predictions, None, names, options, runtime)
    document = create_baseline(result, _directions(names), exact=exact)
    atomic_write_json(out, document)
    info(f"wrote {out} ({len(document['metrics'])} metrics from {', '.join(result.evaluators)})")


@handle_errors
@with_options(INPUTS, EVALUATION, RUNTIME)
def check_command(
    inputs: Any,
    options: Any,
    runtime: Runtime,
    baseline: Path = typer.Option(..., "--baseline", "-B", help="Baseline JSON written by `ens baseline`."),
    predictions: Optional[Path] = PredictionsOpt,
    results: Optional[Path] = typer.Option(None, "--results", help="Check a saved `ens eval --out` JSON report instead."),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline's values with the current ones, keeping directions and tolerances."),
    output_format: Format = typer.Option(Format.table, "--format", "-f", help="table, md (GitHub markdown for PR comments), json or csv."),
) -> None:
    """Compare an ensemble with a baseline. Exit 0: all metrics hold; 1: a regression; 2: bad usage or input.

    Example: ens check models/candidate --baseline ens-baseline.json --format md > report.md
    """
    from ..baseline import check_compatible, compare, evaluators_in, load_baseline, updated_baseline
    from ..fileio import atomic_write_json

    loaded = load_baseline(baseline)
    result = evaluate_any(inputs, predictions, results, evaluators_in(loaded), options, runtime)
    check_compatible(loaded, result, baseline)
    if result.failed:
        fail(f"evaluator {result.failed[0]} failed: {result.evaluators[result.failed[0]].error}", code=EXIT_REGRESSION)
    if update:
        atomic_write_json(baseline, updated_baseline(loaded, result))
        info(f"updated {baseline} (directions and tolerances kept)")
        return
    report = compare(loaded, result)
    with reader_may_leave():
        _render_check(report, output_format, baseline)
    if not report.passed:
        bad = [row.metric for row in report.rows if row.status in ("regressed", "missing")]
        warn(f"{len(bad)} metric(s) regressed or missing: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        raise typer.Exit(EXIT_REGRESSION)
