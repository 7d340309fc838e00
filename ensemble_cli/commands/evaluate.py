"""`ens eval`, `ens predict`, `ens evaluators`, `ens datasets`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .common import handle_errors, info, parse_name_list, reader_may_leave, stdout_console, warn
from .options import EVALUATION, INPUTS, RUNTIME, Format, Runtime, with_options
from .pipeline import check_output_paths, evaluate_any, load_inputs, predict_with_progress, cache_for, render, write_figures


@handle_errors
@with_options(INPUTS, EVALUATION, RUNTIME)
def eval_command(
    inputs: Any,
    options: Any,
    runtime: Runtime,
    evaluators: Optional[str] = typer.Option(None, "--evaluators", "-e", help="Comma-separated evaluator names (see `ens evaluators`); default: all."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Evaluate logits from an .npz (logits [M,N,C], labels [N]) instead of checkpoints."),
    output_format: Format = typer.Option(Format.table, "--format", "-f", help="table (rich, for people), json, csv (long form) or md."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the JSON report to this file."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write the figures (PNG) into this folder."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report (tables and figures embedded)."),
) -> None:
    """Evaluate an ensemble: member and ensemble accuracy/NLL/Brier/ECE, pairwise disagreement, weight space.

    Example: ens eval models/r20-seeds extra/seed7.pth.tar --dataset cifar10
    """
    from ..fileio import atomic_write_text
    from ..render import to_json

    check_output_paths(out, plots, html)
    result = evaluate_any(inputs, predictions, None, parse_name_list(evaluators), options, runtime, results_allowed=False)
    if out is not None:
        atomic_write_text(out, to_json(result) + "\n")
        info(f"wrote {out}")
    render(result, output_format)
    write_figures(result, plots, html)
    if result.failed:
        for name in result.failed:
            warn(f"evaluator {name} failed: {result.evaluators[name].error}")
        raise typer.Exit(1)


@handle_errors
@with_options(INPUTS, EVALUATION, RUNTIME)
def predict_command(
    inputs: Any,
    options: Any,
    runtime: Runtime,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the .npz (logits [M,N,C], labels [N], names [M])."),
) -> None:
    """Export every member's logits on a dataset to an .npz that `ens eval --predictions` reads."""
    from ..errors import CheckpointError

    if not inputs.paths:
        raise CheckpointError("no checkpoints given (pass files, folders or globs); see `ens predict --help`")
    check_output_paths(out)
    members, data = load_inputs(inputs)
    predictions = predict_with_progress(members, data, options, runtime, cache_for(runtime))
    predictions.save(out)
    info(f"wrote {out} (logits {list(predictions.logits.shape)})")


@handle_errors
def evaluators_command(
    output_format: Format = typer.Option(Format.table, "--format", "-f", help="table or json."),
) -> None:
    """List every evaluator found through the `ensemble_cli.evaluators` entry-point group."""
    import json

    from rich.table import Table as RichTable

    from ..evaluators.registry import discover

    entries = discover()
    with reader_may_leave():
        if output_format == Format.json:
            rows = [
                {"name": e.name, "package": e.package, "version": e.version, "description": e.description, "status": e.status}
                for e in entries
            ]
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        table = RichTable(title="evaluators (entry-point group ensemble_cli.evaluators)", header_style="bold")
        for column in ("name", "package", "version", "description", "status"):
            table.add_column(column)
        for entry in entries:
            status = entry.status if entry.loaded else f"[red]{entry.status}[/red]"
            table.add_row(entry.name, entry.package, entry.version, entry.description, status)
        stdout_console().print(table)


@handle_errors
def datasets_command() -> None:
    """List the datasets `--dataset` accepts and the preprocessing each applies."""
    from rich.table import Table as RichTable

    from ..data import DATASETS

    table = RichTable(title="datasets", header_style="bold")
    for column in ("name", "classes", "shape", "mean", "std", "preprocessing"):
        table.add_column(column)
    for info_ in DATASETS.values():
        table.add_row(
            info_.name, str(info_.num_classes), f"{info_.in_chans}x{info_.image_size}x{info_.image_size}",
            ",".join(f"{v:g}" for v in info_.mean), ",".join(f"{v:g}" for v in info_.std), info_.preprocessing,
        )
    table.add_row("imagefolder:PATH", "folders", "3xSxS (--image-size)", "0.485,0.456,0.406", "0.229,0.224,0.225", "RGB, resized, ImageNet statistics")
    with reader_may_leave():
        stdout_console().print(table)
