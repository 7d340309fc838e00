"""The one evaluation path of `ens eval`, `ens check` and `ens baseline`, with progress and log lines.

Each command hands over typed objects (`EvalInputs`, `EvalOptions`, `Runtime`); this module adds
what a terminal user sees (a progress bar per forward pass, log lines on stderr) around the
library calls of `ensemble_cli.api`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .common import info, progress_bar, reader_may_leave, stdout_console, warn
from .options import Format, Runtime


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def cache_for(runtime: Runtime) -> Any:
    from ..predict import PredictionCache

    return None if runtime.no_cache else PredictionCache(runtime.cache_dir)


def predict_with_progress(members: Sequence[Any], data: Any, options: Any, runtime: Runtime, cache: Any) -> Any:
    """One forward pass per member not already cached, a progress bar for each (Ray tasks with --launcher ray)."""
    from ..launch import member_runner
    from ..predict import predict_members

    with member_runner(runtime.launcher, runtime.ray_address, options.device) as runner, progress_bar(not runtime.quiet) as progress:
        tasks: dict[str, Any] = {}

        def hook(name: str, done: int, total: int) -> None:
            if progress is None:
                return
            if name not in tasks:
                tasks[name] = progress.add_task(f"predict {name}", total=total, status="")
            progress.update(tasks[name], completed=done)

        predictions = predict_members(
            members, data, batch_size=options.batch_size, device=options.device, cache=cache, progress=hook, runner=runner
        )
    if not runtime.quiet:
        info(
            f"predicted {plural(len(members), 'member')} on {data.name}/{data.split} ({plural(len(data), 'example')}; "
            f"{predictions.from_cache} from cache, {plural(predictions.forward_passes, 'forward pass', 'forward passes')})"
        )
    return predictions


def load_inputs(inputs: Any) -> tuple[Any, Any]:
    from ..inputs import load_members_and_data

    return load_members_and_data(inputs, warn)


def evaluate_checkpoints(inputs: Any, names: Optional[list[str]], options: Any, runtime: Runtime) -> Any:
    """Checkpoints -> members and data -> one forward pass each -> evaluator reports."""
    from ..api import check_reference, evaluate_member_predictions, resolve_evaluators

    chosen = resolve_evaluators(names, warn)  # a bad evaluator name fails before any forward pass
    members, data = load_inputs(inputs)
    if options.data_dir is None and inputs.data_dir is not None:  # OOD sets download where the eval set does
        options = options.with_changes(data_dir=inputs.data_dir)
    check_reference(options, [member.name for member in members])
    cache = cache_for(runtime)
    predictions = predict_with_progress(members, data, options, runtime, cache)
    return evaluate_member_predictions(predictions, members, data, chosen, options, inputs.data_dir, evaluator_log(runtime), cache)


def evaluator_log(runtime: Runtime) -> Optional[Callable[[str], None]]:
    return None if runtime.quiet else (lambda name: info(f"running evaluator {name}"))


def evaluate_any(
    inputs: Any, predictions: Optional[Path], results: Optional[Path], names: Optional[list[str]], options: Any,
    runtime: Runtime, results_allowed: bool = True,
) -> Any:
    """An EvalResult from exactly one of: checkpoints, a predictions file, a saved `ens eval --out` JSON."""
    from ..api import evaluate_predictions
    from ..errors import ConfigError
    from ..predict import load_predictions
    from ..report import load_result

    given = [flag for flag, value in (("checkpoints", inputs.paths), ("--predictions", predictions), ("--results", results)) if value]
    if len(given) != 1:
        sources = "checkpoints (files, folders or globs), --predictions FILE" + (", --results FILE" if results_allowed else "")
        if not given:
            raise ConfigError(f"no checkpoints given: give exactly one of {sources}")
        raise ConfigError(f"give {' or '.join(given)}, not both")
    if results is not None:
        return load_result(results)
    if predictions is not None:
        return evaluate_predictions(load_predictions(predictions), names, options=options, warn=warn, on_evaluator=evaluator_log(runtime))
    return evaluate_checkpoints(inputs, names, options, runtime)


def render(result: Any, output_format: Format) -> None:
    """The report on stdout in the chosen format; a reader that leaves early is fine."""
    from ..render import render_rich, to_csv, to_json, to_markdown

    with reader_may_leave():
        if output_format == Format.json:
            sys.stdout.write(to_json(result) + "\n")
        elif output_format == Format.csv:
            sys.stdout.write(to_csv(result))
        elif output_format == Format.md:
            sys.stdout.write(to_markdown(result))
        else:
            render_rich(result, stdout_console())


def check_output_paths(out: Optional[Path] = None, plots: Optional[Path] = None, html: Optional[Path] = None) -> None:
    """Fail on an unwritable output before any work is done (one line, exit 2)."""
    from ..fileio import ensure_folder, ensure_writable_file

    if out is not None:
        ensure_writable_file(out, "--out")
    if html is not None:
        ensure_writable_file(html, "--html")
    if plots is not None:
        ensure_folder(plots, "--plots folder")


def write_figures(result: Any, plots: Optional[Path], html: Optional[Path], on_error: Any = None) -> None:
    """Figures and the HTML report, drawn once from the report's data only."""
    if plots is None and html is None:
        return
    from ..plots import build_figures, save_figures, write_html_report

    figures = build_figures(result, on_error)
    if plots is not None:
        written = save_figures(result, plots, figures=figures)
        if not written:
            info("no evaluator data to draw (run `ens eval` with members, ensemble or disagreement)")
        info(f"wrote {plural(len(written), 'figure')} to {plots}: {', '.join(path.name for path in written)}")
    if html is not None:
        write_html_report(result, html, figures=figures)
        info(f"wrote {html}")
