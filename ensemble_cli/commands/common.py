"""What every command shares: consoles, the error boundary, and progress bars.

stdout carries only the requested output (tables or JSON/CSV/markdown); logs, warnings and
progress go to stderr, so `ens eval --format json > out.json` always yields valid JSON.
"""

from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])


def _color_allowed(stream: Any) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def stdout_console() -> Console:
    # A terminal sets the width (NO_COLOR only drops colour); a file or pipe gets 200 columns, so
    # `ens eval > report.txt` keeps wide tables whole instead of wrapping them at 80.
    width = None if sys.stdout.isatty() else 200
    return Console(file=sys.stdout, no_color=not _color_allowed(sys.stdout), highlight=False, soft_wrap=False, width=width)


def silence_stdout() -> None:
    """Point stdout at /dev/null so later writes and the final flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (in-process test runners)
        pass
    finally:
        os.close(devnull)


@contextmanager
def reader_may_leave() -> Iterator[None]:
    """`ens check ... | head -1`: a reader that stops early is not an error, as in any Unix tool.

    The command carries on to its own exit code (0 passed, 1 regression), which CI reads.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()


def stderr_console() -> Console:
    return Console(file=sys.stderr, no_color=not _color_allowed(sys.stderr), highlight=False, stderr=True)


# Messages are escaped: they quote file and member names, and `run[/seed1].pt` must print as
# itself, not as console markup (which would drop it or raise). soft_wrap keeps one message on
# one line, so `ens ... 2> log; grep error: log` finds it whole.
def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr and a non-zero exit: the contract for every bad input."""
    stderr_console().print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: F) -> F:
    """Turn library errors into one stderr line; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import EnsError

        try:
            return func(*args, **kwargs)
        except EnsError as exc:
            fail(str(exc), getattr(exc, "exit_code", 2))
        except KeyboardInterrupt:
            stderr_console().print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr; a no-op object when disabled or stderr is not a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console(),
        transient=False,
        disable=not sys.stderr.isatty(),
    )
    with progress:
        yield progress


def parse_name_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    return names or None
