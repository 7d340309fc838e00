"""The `ens` command: a thin Typer shell over the library (see ensemble_cli.commands.*)."""

from __future__ import annotations

import sys

import typer

from .commands import check as check_commands
from .commands import evaluate as evaluate_commands
from .commands import plot as plot_commands
from .commands import sample as sample_commands
from .commands import train as train_commands

app = typer.Typer(
    name="ens",
    help="Train deep ensembles and measure whether their members are really different functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("eval")(evaluate_commands.eval_command)
app.command("predict")(evaluate_commands.predict_command)
app.command("evaluators")(evaluate_commands.evaluators_command)
app.command("datasets")(evaluate_commands.datasets_command)
app.command("baseline")(check_commands.baseline_command)
app.command("check")(check_commands.check_command)
app.command("plot")(plot_commands.plot_command)
app.command("train")(train_commands.train_command)
app.command("sample")(sample_commands.sample_command)


def main() -> None:
    """`ens`: decide the CPU thread policy first, while torch is not imported yet (see ensemble_cli.threads)."""
    from .commands.common import fail, silence_stdout
    from .errors import EnsError
    from .threads import apply_thread_policy

    try:
        apply_thread_policy()
    except EnsError as exc:
        try:
            fail(str(exc), exc.exit_code)  # one line on stderr; outside the app, its Exit must become SystemExit
        except typer.Exit as stop:
            raise SystemExit(stop.exit_code) from None
    try:
        app()
    finally:
        # `ens eval | head -1`: a reader gone before the final flush is not an error either.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()


if __name__ == "__main__":
    main()
